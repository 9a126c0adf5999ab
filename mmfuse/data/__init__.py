"""Data set readers: one record type, one reader per format.

Two formats:

- the course format (single-label): a folder with ``train.txt`` / ``test_without_label.txt``
  (``guid,tag`` rows, ``null`` for unlabelled) and ``data/{guid}.txt|.jpg`` (:func:`read_course`);
- a multi-label CSV (``ImageID,Labels,Caption``, labels space-separated) beside an image folder
  (:func:`read_csv`), whose messy real-world quoting is parsed without losing or merging a row.

Every row becomes one :class:`Record`, in file order; a row with a problem carries it in
``Record.error`` so that the caller decides whether to raise or to skip it, and nothing is ever
dropped silently. :func:`read_data` picks the reader from the path.

The readers live in ``course.py`` and ``csvfile.py``; ``_records.py`` holds the record types and the
decoding they share. Everything is importable from ``mmfuse.data``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ._records import (COURSE_TAGS, FALLBACK_ENCODINGS, SPLIT_FILES, UNLABELLED_TAG, DataSet, Record, decode_text,
                       open_image)
from .course import guid_tag_rows, read_course
from .csvfile import (CsvFormat, _image_path, _sort_labels, csv_records, parse_label_names, read_csv,  # noqa: F401
                      split_labels)


def read_data(source: str | Path, split: str = "train", csv_format: CsvFormat | None = None) -> DataSet:
    """A course-format folder's ``split``, or (a ``.csv`` file, with ``csv_format``) a multi-label CSV."""
    source = Path(source)
    if source.suffix.lower() == ".csv" or source.is_file():
        if csv_format is None:
            raise DataError(f"{source} is a CSV file: pass --images DIR (the folder of its images)")
        return read_csv(source, csv_format)
    return read_course(source, split)


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
        return read_course(root, data.get("split", "train")).fingerprint()
    except (DataError, OSError, KeyError):
        return None



__all__ = ["COURSE_TAGS", "FALLBACK_ENCODINGS", "SPLIT_FILES", "UNLABELLED_TAG", "CsvFormat", "DataSet", "Record",
           "csv_records", "current_fingerprint", "decode_text", "guid_tag_rows", "open_image", "parse_label_names",
           "read_course", "read_csv", "read_data", "split_labels"]
