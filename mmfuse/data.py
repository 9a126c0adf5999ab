"""Data set readers: one record type, one reader per format.

The course format is a folder with ``train.txt`` / ``test_without_label.txt`` (``guid,tag`` rows,
``null`` for unlabelled) and ``data/{guid}.txt|.jpg``. Every row of the split file becomes one
:class:`Record`, in file order; a row with a problem carries it in ``Record.error`` so that the
caller decides whether to raise or to skip it, and nothing is ever dropped silently.
"""
from __future__ import annotations

import csv
import hashlib
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .errors import DataError

COURSE_TAGS = ("positive", "neutral", "negative")  # the course's tag set, in label-index order
UNLABELLED_TAG = "null"
SPLIT_FILES = {"train": "train.txt", "test": "test_without_label.txt"}
# Tried in order after UTF-8. The course data was saved by GBK tooling: on mvsa all 870 non-UTF-8
# texts decode as GB18030 and read correctly (charset detection guessed cp775/big5/... on most).
# cp1252 catches Western-European files; latin-1 never fails, so decoding never crashes.
FALLBACK_ENCODINGS = ("gb18030", "cp1252", "latin-1")


@dataclass(frozen=True)
class Record:
    guid: str
    text: str  # decoded text ("" when the text file is missing: see error)
    image_path: Path
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

    @property
    def errors(self) -> list[Record]:
        return [r for r in self.records if r.error]

    @property
    def fallback_count(self) -> int:
        """How many texts were not valid UTF-8 and needed a fallback encoding."""
        return sum(n for enc, n in self.encodings.items() if enc != "utf-8")

    def fingerprint(self) -> str:
        """sha256 over the split file and every record's guid, decoded text and image file size."""
        h = hashlib.sha256(self.split_file.read_bytes())
        for r in self.records:
            size = r.image_path.stat().st_size if r.image_path.is_file() else -1
            h.update(f"{r.guid}\t{len(r.text)}\t{size}\n{r.text}\n".encode())
        return h.hexdigest()

    def label_array(self) -> np.ndarray:
        """Labels as indices into ``label_names``: (N,) int64, -1 where unlabelled; multi-label: (N, L)
        uint8 multi-hot."""
        index = {n: i for i, n in enumerate(self.label_names)}
        if self.multilabel:
            y = np.zeros((len(self.records), len(self.label_names)), np.uint8)
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


def open_image(path: Path, draft_size: int | None = None) -> Image.Image:
    """Open any image Pillow reads (also PNG/GIF saved as .jpg, grayscale, CMYK, RGBA) as RGB.

    With ``draft_size``, a JPEG is decoded at the smallest DCT scale whose both sides stay
    >= draft_size, which is the same size the model needs after the resize and 2-4x faster.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)  # transparent pixels become white
        return img.convert("RGB")


def read_course(root: str | Path, split: str = "train",
                fallbacks: tuple[str, ...] = FALLBACK_ENCODINGS) -> DataSet:
    """Read one split of a course-format folder. Bad rows are returned with ``error`` set."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if split not in SPLIT_FILES:
        raise DataError(f"unknown split {split!r}: the course format has {', '.join(SPLIT_FILES)}")
    split_file = root / SPLIT_FILES[split]
    if not split_file.is_file():
        raise DataError(f"split file not found: {split_file}")
    records, seen, encodings = [], {}, Counter()
    for lineno, guid, tag in guid_tag_rows(split_file):
        source = f"{split_file.name}:{lineno}"
        text_path, image_path = root / "data" / f"{guid}.txt", root / "data" / f"{guid}.jpg"
        error, text, enc = None, "", "utf-8"
        if tag == UNLABELLED_TAG:
            labels = ()
        elif tag in COURSE_TAGS:
            labels = (tag,)
        else:
            labels, error = (), f"unknown tag {tag!r} (expected one of {', '.join(COURSE_TAGS)}, null)"
        if guid in seen:
            error = error or f"duplicate guid (first at {seen[guid]})"
        seen.setdefault(guid, source)
        if text_path.is_file():
            text, enc = decode_text(text_path.read_bytes(), fallbacks)
            text = text.strip()
            encodings[enc] += 1
        else:
            error = error or f"text file missing: {text_path}"
        if not image_path.is_file():
            error = error or f"image file missing: {image_path}"
        records.append(Record(guid, text, image_path, labels, source, enc, error))
    if not records:
        raise DataError(f"{split_file} lists no rows")
    return DataSet(root, split, split_file, records, COURSE_TAGS, False, encodings)


def guid_tag_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, guid, lower-case tag) of each row of a ``guid,tag`` file; blank lines skipped."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from None
    if not rows or [c.strip().lower() for c in rows[0]] != ["guid", "tag"]:
        raise DataError(f"{path}: first line must be the header 'guid,tag', got {rows[:1]}")
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue  # a blank line is no record
        if len(row) != 2:
            raise DataError(f"{path} line {lineno}: expected 'guid,tag', got {','.join(row)!r}")
        yield lineno, row[0].strip(), row[1].strip().lower()
