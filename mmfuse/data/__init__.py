"""Data set readers: one record type, one reader per format.

- the course format (single-label): a folder with ``train.txt`` / ``test_without_label.txt``
  (``guid,tag`` rows, ``null`` for unlabelled) and ``data/{guid}.txt|.jpg`` (:func:`read_course`);
- a multi-label CSV (``ImageID,Labels,Caption``, labels space-separated) beside an image folder
  (:func:`read_csv`), whose messy real-world quoting is parsed without losing or merging a row;
- WebDataset tar shards (:func:`read_webdataset`), Parquet files (:func:`read_parquet`), and Hugging
  Face ``datasets`` folders: ``save_to_disk`` (:func:`read_saved`) or an image folder with
  ``metadata.jsonl|csv`` (:func:`read_imagefolder`); their columns are chosen with :class:`Columns`.
  An image inside a tar, Parquet or Arrow file is an :class:`ImageRef`, which :func:`open_image` opens.

Every row becomes one :class:`Record`, in file order; a row with a problem carries it in
``Record.error`` so that the caller decides whether to raise or to skip it, and nothing is ever
dropped silently. :func:`read_data` picks the reader from the path.

The readers live in ``course.py``, ``csvfile.py``, ``webdataset.py``, ``parquet.py`` and ``hfdatasets.py``;
``_records.py`` holds the record types and the decoding they share, ``_tables.py`` what the last three
share, ``_cells.py`` the reading of Parquet and Arrow image cells. Everything is importable from
``mmfuse.data``; pyarrow and datasets (the ``formats`` extra) are imported only when such data is read.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ._records import (COURSE_TAGS, FALLBACK_ENCODINGS, SPLIT_FILES, UNLABELLED_TAG, DataSet, ImageRef, Record,
                       decode_text, open_image)
from ._tables import Columns
from .course import guid_tag_rows, read_course
from .csvfile import (CsvFormat, _image_path, _sort_labels, csv_records, parse_label_names, read_csv,  # noqa: F401
                      split_labels)
from .hfdatasets import kind_of, read_imagefolder, read_saved
from .parquet import read_parquet
from .webdataset import is_pattern, read_webdataset

READERS = {"webdataset": read_webdataset, "parquet": read_parquet, "hf-datasets": read_saved,
           "imagefolder": read_imagefolder}


def data_kind(source: str | Path, split: str = "train", csv_format: CsvFormat | None = None) -> str:
    """The format of ``source``: course, csv, webdataset (a ``.tar``, a brace pattern, a folder of tars),
    parquet (a ``.parquet`` or a folder of them), hf-datasets (a save_to_disk folder) or imagefolder (a folder
    with metadata.jsonl|csv)."""
    if is_pattern(source):
        return "webdataset"
    source = Path(source)
    suffix = source.suffix.lower()
    if suffix in (".tar", ".parquet"):
        return {".tar": "webdataset", ".parquet": "parquet"}[suffix]
    if suffix == ".csv" or source.is_file():
        return "csv"
    if not source.is_dir() or any((source / f).is_file() for f in SPLIT_FILES.values()):
        return "course"
    found = kind_of(source, split)
    if found:
        return found
    if next(source.glob("*.tar"), None):
        return "webdataset"
    return "parquet" if next(source.glob("*.parquet"), None) else "course"


def read_data(source: str | Path, split: str = "train", csv_format: CsvFormat | None = None,
              columns: Columns | None = None) -> DataSet:
    """Read ``source`` in its format (:func:`data_kind`): a course-format folder's ``split``; a multi-label CSV
    (with ``csv_format``); WebDataset shards, Parquet files or a datasets folder (their columns: ``columns``;
    ``split`` picks the files or the DatasetDict split)."""
    kind = data_kind(source, split, csv_format)
    if kind == "csv":
        if csv_format is None:
            raise DataError(f"{source} is a CSV file: pass --images DIR (the folder of its images)")
        return read_csv(source, csv_format)
    if csv_format is not None:
        raise DataError(f"{source} is {kind} data: --images is for a CSV file (its images are named by the data)")
    if kind == "course":
        return read_course(source, split)
    return READERS[kind](source, split, columns)


def current_fingerprint(data: dict) -> str | None:
    """The fingerprint that the data set a cache was extracted from (its provenance's ``data``) has now;
    None when it can no longer be read (moved, deleted)."""
    root = Path(data.get("root", ""))
    try:
        if data.get("format") == "csv":
            cols = data.get("columns") or {}
            fmt = CsvFormat(Path(data["images"]), cols.get("id", "ImageID"), cols.get("labels", "Labels"),
                            cols.get("text", "Caption"), data.get("label_sep", " "),
                            tuple(data.get("label_names") or ()) or None)
            return read_csv(root, fmt).fingerprint()
        if data.get("format") in READERS:
            opts = dict(data.get("options") or {})
            opts["label_names"] = tuple(opts["label_names"]) if opts.get("label_names") else None
            return READERS[data["format"]](data["root"], data.get("split", "train"), Columns(**opts)).fingerprint()
        return read_course(root, data.get("split", "train")).fingerprint()
    except (DataError, OSError, KeyError, TypeError):
        return None


__all__ = ["COURSE_TAGS", "FALLBACK_ENCODINGS", "SPLIT_FILES", "UNLABELLED_TAG", "Columns", "CsvFormat", "DataSet",
           "ImageRef", "Record", "csv_records", "current_fingerprint", "data_kind", "decode_text", "guid_tag_rows",
           "open_image", "parse_label_names", "read_course", "read_csv", "read_data", "read_imagefolder",
           "read_parquet", "read_saved", "read_webdataset", "split_labels"]
