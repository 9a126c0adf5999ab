"""What the WebDataset, Parquet and Hugging Face datasets readers share: the column options, the choice
of input files for a split, the reading of label cells, and the checks that turn raw rows into
:class:`Record` s (missing text or image, duplicate ids, unknown labels)."""
from __future__ import annotations

import importlib
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ._records import DataSet, ImageRef, Record

# looked up (case-insensitively, in this order) where an option does not name the column
ID_NAMES = ("id", "guid", "key", "__key__", "image_id")
TEXT_NAMES = ("text", "caption", "txt", "sentence", "content")
LABEL_NAMES = ("label", "labels", "cls", "class", "tags")
IMAGE_NAMES = ("image", "img", "jpg", "png", "webp", "image_path", "file_name")
SPLIT_WORDS = ("train", "test", "validation", "valid", "val", "dev")


@dataclass(frozen=True)
class Columns:
    """Which columns (Parquet, datasets) or ``.json`` fields (WebDataset) hold what; None: found by name."""

    id_col: str | None = None  # None: id, guid, key, ... if there is one, else the row index (WebDataset: the key)
    text_col: str | None = None  # None: text, caption, txt, ...
    labels_col: str | None = None  # None: label, labels, cls, ...; none of them: unlabelled
    image_col: str | None = None  # None: image, img, jpg, ..., else the one column of image bytes
    label_sep: str | None = None  # splits a text cell into several labels (multi-label); a list cell needs none
    label_names: tuple[str, ...] | None = None  # the label set in column order; None: ClassLabel names, else the
    #                                             labels seen, sorted

    def options(self) -> dict:
        return {**asdict(self), "label_names": list(self.label_names) if self.label_names else None}


def need(module: str, what: str):
    """Import an optional package of the ``formats`` extra, or a one-line error saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"reading {what} needs {module.split('.')[0]}: pip install 'mmfuse[formats]'") from None


def pick(names, given: str | None, candidates: tuple[str, ...], option: str, where) -> str | None:
    """The column ``given`` (an error naming ``where`` when it is not there), else the first candidate present."""
    lower = {str(n).lower(): n for n in names}
    if given is not None:
        if given in names:
            return given
        if given.lower() in lower:
            return lower[given.lower()]
        raise DataError(f"{where}: no column {given!r} ({option}); it has {', '.join(map(str, names))}")
    return next((lower[c] for c in candidates if c in lower), None)


def input_files(source: str | Path, split: str, suffix: str, what: str) -> list[Path]:
    """``source`` itself if it is a file, or the sorted ``*{suffix}`` files of a folder (those of ``split``
    where the names carry splits); ``what`` names them in errors (``"Parquet file"``, ``"tar shard"``)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob(f"*{suffix}"))
        if not files:
            raise DataError(f"{source} holds no {suffix} files")
        return split_files(files, split, source)
    if not source.is_file():
        raise DataError(f"{what} not found: {source}")
    return [source]


def split_files(files: list[Path], split: str, source) -> list[Path]:
    """The files of ``split`` in a folder: those named after it (``train-00000-of-00002.parquet``, ``test.tar``)
    where some files are named after a split, else all of them."""
    def named(p: Path, word: str) -> bool:
        return re.match(rf"{re.escape(word)}(?:[-_.]|$)", p.name.lower()) is not None

    if not any(named(p, w) for p in files for w in SPLIT_WORDS):
        return files
    mine = [p for p in files if named(p, split.lower())]
    if not mine:
        raise DataError(f"{source}: no file of split {split!r} among {', '.join(p.name for p in files[:6])}"
                        f"{' ...' if len(files) > 6 else ''} (choose it with --split)")
    return mine


def _scalar(x):
    """numpy scalars as Python values; an integral float (a pandas int column with gaps) as an int."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, float) and x == x and x.is_integer():
        return int(x)
    return x


def label_of(x, names: tuple[str, ...] | None) -> tuple[str | None, str | None]:
    """(label name or None for no label, error): an index maps into ``names`` where they are fixed."""
    x = _scalar(x)
    if x is None or (isinstance(x, float) and x != x) or (isinstance(x, str) and not x.strip()):
        return None, None
    if isinstance(x, bytes):
        x = x.decode("utf-8", "replace")
    if isinstance(x, str):
        x = x.strip()
        if names is None or x in names:
            return x, None
        if not re.fullmatch(r"-?\d+", x):
            return None, f"unknown label {x!r} (the label names are {', '.join(names)})"
        x = int(x)
    if isinstance(x, bool) or not isinstance(x, int):
        return None, f"label {x!r} is neither a class name nor a class index"
    if names is None:
        return str(x), None
    if x == -1:  # datasets' ClassLabel: no label
        return None, None
    if not 0 <= x < len(names):
        return None, f"label index {x} out of range (the {len(names)} label names are {', '.join(names)})"
    return names[x], None


def resolve_labels(values: list, names: tuple[str, ...] | None, sep: str | None
                   ) -> tuple[list[tuple[str, ...]], list[str | None], tuple[str, ...], bool]:
    """(labels per row, error per row, label names, multilabel) of raw label cells: a class name or index
    (single-label), or a list / a ``sep``-joined text of them (multi-label). An empty cell: no label
    (single-label) or no positive label (multi-label)."""
    multilabel = sep is not None or any(isinstance(_scalar(v), (list, tuple)) for v in values)
    rows, errors = [], []
    for v in values:
        v = _scalar(v)
        if isinstance(v, (list, tuple)):
            items = list(v)
        elif multilabel and isinstance(v, (str, bytes)):
            text = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            items = text.split() if sep in (None, " ") else [x for x in text.split(sep) if x.strip()]
        else:
            items = [v]
        got = [label_of(x, names) for x in items]
        errors.append(next((e for _, e in got if e), None))
        rows.append(tuple(dict.fromkeys(n for n, e in got if n is not None and not e)))
    if names is None:
        seen = sorted({x for r in rows for x in r})
        names = tuple(sorted(seen, key=int) if seen and all(re.fullmatch(r"-?\d+", n) for n in seen) else seen)
    return rows, errors, tuple(names), multilabel


@dataclass
class Row:
    """One raw row of a reader, before the common checks."""

    source: str  # "file:member" or "file row N", for messages
    group: int = 0  # index of its input file
    guid: str | None = None  # None: the row index
    text: str | None = None  # None: no text
    image: Path | ImageRef | None = None  # None: no image
    label: object = None  # the raw label cell
    encoding: str = "utf-8"
    error: str | None = None


def build(rows: list[Row], *, fmt: str, root: Path, split: str, split_file: Path, sources: list[Path], cols: Columns,
          labelled: bool, class_names: tuple[str, ...] | None = None, text_what: str = "text",
          image_what: str = "image", grouped: bool = True) -> DataSet:
    """The :class:`DataSet` of a reader's rows: guids (the row index where there is no id), labels, and an
    ``error`` on each row with no text or image, a missing image file, a bad label or a duplicate id.
    ``cols``: the columns as the reader resolved them (kept in ``DataSet.options`` to read it again)."""
    if not rows:
        raise DataError(f"{split_file} holds no rows")
    fixed = cols.label_names or class_names
    labels, label_errors, names, multilabel = resolve_labels(
        [r.label for r in rows] if labelled else [None] * len(rows), fixed, cols.label_sep)
    if labelled and multilabel and len(names) == 1:
        raise DataError(f"{split_file}: a multi-label data set needs at least 2 labels, got {names[0]!r} only")
    records, seen, encodings = [], {}, Counter()
    for i, (r, tags, label_error) in enumerate(zip(rows, labels, label_errors)):
        guid = str(r.guid) if r.guid is not None and str(r.guid) != "" else str(i)
        error = r.error or label_error
        if guid in seen:
            error = error or f"duplicate id {guid!r} (first at {seen[guid]})"
        seen.setdefault(guid, r.source)
        if r.text is None:
            error = error or f"no {text_what}"
        if r.image is None:
            error = error or f"no {image_what}"
        elif isinstance(r.image, Path) and not r.image.is_file():
            error = error or f"image file missing: {r.image}"
        text = (r.text or "").replace("\x00", "").strip()
        if r.text is not None:
            encodings[r.encoding] += 1
        records.append(Record(guid, text, r.image if r.image is not None else root / "<no image>", tags, r.source,
                              r.encoding, error))
    return DataSet(root, split, split_file, records, names if labelled else tuple(fixed or ()), multilabel, encodings,
                   labelled, fmt, tuple(sources), tuple(r.group for r in rows) if grouped else (), cols.options())
