"""What every reader returns: one :class:`Record` per row in a :class:`DataSet`, and the decoding of
the texts and images they point to."""
from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

COURSE_TAGS = ("positive", "neutral", "negative")  # the course's tag set, in label-index order
UNLABELLED_TAG = "null"
SPLIT_FILES = {"train": "train.txt", "test": "test_without_label.txt"}
# Tried in order after UTF-8. The course data was saved by GBK tooling: on mvsa all 870 non-UTF-8
# texts decode as GB18030 and read correctly (charset detection guessed cp775/big5/... on most).
# cp1252 catches Western-European files; latin-1 never fails, so decoding never crashes.
FALLBACK_ENCODINGS = ("gb18030", "cp1252", "latin-1")


@dataclass(frozen=True)
class ImageRef:
    """An image stored inside a container file: a tar member (read with one seek+read at ``offset``),
    a Parquet cell (row group + row) or a cell of a Hugging Face datasets Arrow file (row)."""

    kind: str  # "tar", "parquet" or "arrow"
    container: Path  # the tar, Parquet or Arrow file
    member: str  # tar: the member name; else "row N" (N: the row in the data set), for messages
    size: int = -1  # bytes (-1: not known before reading)
    offset: int = -1  # tar: where the member's data starts
    row_group: int = 0  # parquet: the row group
    row: int = 0  # parquet: the row within the row group; arrow: the row within the file
    column: str = ""  # parquet, arrow: the image column

    def __str__(self) -> str:
        return f"{self.container}:{self.member}"

    def read_bytes(self) -> bytes:
        """The image's encoded bytes (a tar member: one seek and read; a table cell: see ``_cells``)."""
        if self.kind == "tar":
            with open(self.container, "rb") as f:
                f.seek(self.offset)
                raw = f.read(self.size)
            if len(raw) != self.size:
                raise DataError(f"{self}: truncated ({len(raw)} of {self.size} bytes): the tar changed since it "
                                "was read")
            return raw
        from ._cells import read_cell

        return read_cell(self)


@dataclass(frozen=True)
class Record:
    guid: str
    text: str  # decoded text ("" when the text file is missing: see error)
    image_path: Path | ImageRef  # a file, or an image inside a tar / Parquet / Arrow file
    labels: tuple[str, ...]  # tag names; empty when unlabelled, one tag in single-label sets
    source: str  # "file:line" of the row, for messages
    encoding: str = "utf-8"  # encoding the text was decoded with
    error: str | None = None  # why this record cannot be used (missing file, duplicate, ...)


@dataclass
class DataSet:
    """All rows of one split, in file order, plus what a cache needs to describe them."""

    root: Path
    split: str
    split_file: Path
    records: list[Record]
    label_names: tuple[str, ...]
    multilabel: bool = False
    encodings: Counter = field(default_factory=Counter)  # encoding -> number of texts
    labelled: bool = True  # multi-label: whether the rows carry label sets (an empty set is a label set)
    format: str = "course"  # course, csv, webdataset, parquet, hf-datasets or imagefolder
    sources: tuple[Path, ...] = ()  # webdataset, parquet, hf-datasets, imagefolder: the files read
    groups: tuple[int, ...] = ()  # per record, the index in ``sources`` of its input file (empty: one file)
    options: dict = field(default_factory=dict)  # how to read it again (resolved columns, label set)

    @property
    def errors(self) -> list[Record]:
        return [r for r in self.records if r.error]

    @property
    def fallback_count(self) -> int:
        """How many texts were not valid UTF-8 and needed a fallback encoding."""
        return sum(n for enc, n in self.encodings.items() if enc != "utf-8")

    @property
    def fingerprint_method(self) -> str:
        if self.sources:
            return "sha256: input files' names, sizes and mtimes; rows' guid, text, labels and image size"
        return "sha256: split file bytes; rows' guid, text and image file size"

    def fingerprint(self) -> str:
        """sha256 over the split file and every record's guid, decoded text and image file size; with
        ``sources`` (tar shards, Parquet / Arrow files), over their names, sizes and mtimes instead of a
        split file, plus each record's labels: no image byte is read."""
        if not self.sources:
            h = hashlib.sha256(self.split_file.read_bytes())
        else:
            h = hashlib.sha256(b"files\n")
            for p in self.sources:
                st = p.stat()
                h.update(f"{p.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        for r in self.records:
            image = r.image_path
            size = image.size if isinstance(image, ImageRef) else image.stat().st_size if image.is_file() else -1
            h.update(f"{r.guid}\t{len(r.text)}\t{size}\n{r.text}\n".encode())
            if self.sources:
                h.update(("\t".join(r.labels) + "\n").encode())
        return h.hexdigest()

    def label_array(self) -> np.ndarray:
        """Labels as indices into ``label_names``: (N,) int64, -1 where unlabelled; multi-label: (N, L)
        int8 multi-hot, every entry -1 in an unlabelled set."""
        index = {n: i for i, n in enumerate(self.label_names)}
        if self.multilabel:
            y = np.zeros((len(self.records), len(self.label_names)), np.int8)
            if not self.labelled:
                return y - 1
            for row, r in enumerate(self.records):
                y[row, [index[t] for t in r.labels if t in index]] = 1
            return y
        return np.array([index[r.labels[0]] if r.labels and r.labels[0] in index else -1 for r in self.records],
                        np.int64)

    def check(self, on_error: str) -> list[Record]:
        """Raise on bad records (``on_error="raise"``), else return them to be recorded as skipped."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        bad = self.errors
        if bad and on_error == "raise":
            shown = "; ".join(f"guid {r.guid} ({r.source}): {r.error}" for r in bad[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise DataError(f"{len(bad)} bad record(s) in {self.split_file}: {shown}{more}. "
                            "Fix them or pass --on-error skip to skip and record them.")
        return bad


def decode_text(raw: bytes, fallbacks: tuple[str, ...] = FALLBACK_ENCODINGS) -> tuple[str, str]:
    """Decode bytes as UTF-8, else with the first fallback that decodes strictly. Returns (text, encoding)."""
    for enc in ("utf-8", *fallbacks):
        try:
            return raw.decode(enc), enc
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1"), "latin-1"


def open_image(path: Path | ImageRef, draft_size: int | None = None) -> Image.Image:
    """Open any image Pillow reads (also PNG/GIF saved as .jpg, grayscale, CMYK, RGBA, 16-bit) as RGB, from a
    file or an :class:`ImageRef` (an image inside a tar, Parquet or Arrow file).

    Transparent pixels become white; 16-bit images are scaled to 8 bits; an animated image gives its
    first frame; the EXIF orientation tag is not applied (the stored pixels are used, as torchvision's
    and most training pipelines' loaders do). Pillow's decompression-bomb limit is kept: an image of
    more than twice ``Image.MAX_IMAGE_PIXELS`` pixels is an error.

    With ``draft_size``, a JPEG is decoded at the smallest DCT scale whose both sides stay
    >= draft_size, which is the same size the model needs after the resize and 2-4x faster.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(path.read_bytes()) if isinstance(path, ImageRef) else path)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit / 32-bit grey: Pillow's convert
            a = np.asarray(img, np.float64)  # would clip every value above 255 to white; scale to 8 bits
            peak = float(a.max()) if a.size else 0.0  # I;16: its full range; I and F: the smallest that holds it
            top = 65535.0 if img.mode.startswith("I;16") else next((t for t in (1.0, 255.0, 65535.0) if peak <= t), peak)
            img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)  # transparent pixels become white
        return img.convert("RGB")

