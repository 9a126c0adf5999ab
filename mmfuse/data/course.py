"""The course format (single-label): a folder with ``train.txt`` / ``test_without_label.txt``
(``guid,tag`` rows, ``null`` for unlabelled) and ``data/{guid}.txt|.jpg``."""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from ._records import COURSE_TAGS, FALLBACK_ENCODINGS, SPLIT_FILES, UNLABELLED_TAG, DataSet, Record, decode_text


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
        plain = bool(guid) and Path(guid).name == guid and guid not in (".", "..") and "\\" not in guid
        if not plain:  # never a path out of data/: such a guid's files are not even looked up
            error = error or f"guid {guid!r} is not a plain file name (no '/', '..' or absolute paths)"
        if guid in seen:
            error = error or f"duplicate guid (first at {seen[guid]})"
        seen.setdefault(guid, source)
        if plain and text_path.is_file():
            text, enc = decode_text(text_path.read_bytes(), fallbacks)
            text = text.replace("\x00", "").strip()  # NUL bytes carry nothing and upset tokenizers
            encodings[enc] += 1
        elif plain:
            error = error or f"text file missing: {text_path}"
        if plain and not image_path.is_file():
            error = error or f"image file missing: {image_path}"
        records.append(Record(guid, text, image_path, labels, source, enc, error))
    if not records:
        raise DataError(f"{split_file} lists no rows")
    return DataSet(root, split, split_file, records, COURSE_TAGS, False, encodings)


def guid_tag_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, guid, lower-case tag) of each row of a ``guid,tag`` file; blank lines skipped.

    Line numbers are physical lines (where the row starts), also after a quoted field over several lines."""
    try:
        reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig")))
        rows, done = [], 0  # done: the physical lines read so far
        for row in reader:
            rows.append((done + 1, row))
            done = reader.line_num
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from None
    except csv.Error as e:
        raise DataError(f"{path} line {done + 1}: {e}") from None
    if not rows or [c.strip().lower() for c in rows[0][1]] != ["guid", "tag"]:
        raise DataError(f"{path}: first line must be the header 'guid,tag', got {[r for _, r in rows[:1]]}")
    for lineno, row in rows[1:]:
        if not row or all(not c.strip() for c in row):
            continue  # a blank line is no record
        if len(row) != 2:
            raise DataError(f"{path} line {lineno}: expected 'guid,tag', got {','.join(row)!r}")
        yield lineno, row[0].strip(), row[1].strip().lower()

