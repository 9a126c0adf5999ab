"""A multi-label CSV (``ImageID,Labels,Caption``, labels space-separated) beside an image folder, whose
messy real-world quoting is parsed without losing or merging a row."""
from __future__ import annotations

import codecs
import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from ..errors import DataError
from ._records import FALLBACK_ENCODINGS, DataSet, Record, decode_text


@dataclass(frozen=True)
class CsvFormat:
    """How to read a multi-label CSV: the image folder, column names and the label set."""

    images: Path  # folder holding the images named by the id column
    id_col: str = "ImageID"  # image file name (an id without extension gets .jpg)
    labels_col: str = "Labels"  # label names or numbers; a file without this column is unlabelled
    text_col: str = "Caption"  # the free text: may hold commas, quotes, line breaks
    label_sep: str = " "  # between labels in a cell (" ": any run of whitespace)
    label_names: tuple[str, ...] | None = None  # fixed label set and column order; None: the labels seen,
    #                                             sorted (numerically when all are numbers)


def parse_label_names(value: str | Path | None) -> tuple[str, ...] | None:
    """``--label-names``: a comma list (``1,2,3``) or a file with one name per line (or a comma list)."""
    if value is None or value == "":
        return None
    path = Path(str(value))
    text = path.read_text(encoding="utf-8-sig") if path.is_file() else str(value)
    names = tuple(n.strip() for n in re.split(r"[,\n]", text) if n.strip())
    dup = sorted({n for n in names if names.count(n) > 1})
    if not names or dup:
        raise DataError(f"--label-names {value}: " + (f"duplicate names {dup}" if dup else "no names"))
    return names


_SIMPLE = r'(?:[ \t]*"[^"\n]*"[ \t]*|[^,"\n]*)'  # a field without quotes inside (unambiguous: no backtracking)


def _cell_pattern(columns: int, text_at: int) -> re.Pattern:
    """A regex matching one whole record of ``columns`` fields whose field ``text_at`` is free text.

    The other fields are simple (no quote inside; commas only inside quotes). The free text is either
    unquoted (one line; a comma in it is kept when it is the last column) or quoted: from the opening
    quote to the last quote that is followed by exactly the remaining simple fields. So commas, line
    breaks and *unescaped* quotes inside it (``"reads "oh no, not beef!""``) are all kept; ``""`` is
    read as one quote. Empty trailing columns (``...,caption,``) are allowed."""
    parts = []
    for k in range(columns):
        if k == text_at:
            parts.append(r'(?:[ \t]*"(?P<quoted>.*)"[ \t]*|(?P<plain>(?![ \t]*")[^\n]*?))')
        else:
            parts.append(f"(?P<f{k}>{_SIMPLE})")
    return re.compile(",".join(parts) + r"(?:,[ \t]*)*", re.DOTALL)


def _simple(cell: str) -> str:
    cell = cell.strip()
    return cell[1:-1].strip() if len(cell) >= 2 and cell[0] == cell[-1] == '"' else cell


def _other_separator(line: str, columns: int) -> str | None:
    """';' or tab where a line's first ','-field holds it and it splits the line into ``columns`` fields."""
    return next((s for s in (";", "\t") if s in line.split(",")[0] and len(line.split(s)) >= columns), None)


def csv_records(path: Path, text_col: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = (),
                plausible_id=None) -> tuple[list[tuple[int, dict, str | None, str]], list[str]]:
    """Parse a CSV whose column ``text_col`` is free text, line by line, without ever merging rows.

    Returns ([(line, {column: value}, error or None, encoding)], header names); the first of
    ``required`` is the id column. Each physical line is decoded on its own (UTF-8, else the
    fallbacks); CRLF, lone CR, a BOM and blank lines between records are accepted.

    Record boundaries follow the quoting, never the shape of an id (``plausible_id`` is accepted for
    old callers and ignored). A record is *closed* once its lines parse into the columns with an even
    number of quotes (unescaped quotes inside a quoted text, ``"reads "oh no!""``, come in pairs).
    A line that begins like a record (simple fields up to the text column) starts a new one unless the
    current record is still open and this line closes it; any other line continues the current one.
    The record is the longest run of its lines that parses (all quotes closed if possible). An open
    record that nothing closes is an error naming its first line (the reader would have to guess
    where it ends), and the next record-like line starts a record: it never takes a record with it.
    An error row keeps the fields it could read (its id, to name it).
    """
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    lines, encs = [], []
    for line in re.split(rb"\r?\n" if b"\n" in raw else rb"\r", raw):  # lone CR: a classic-Mac file
        text, enc = decode_text(line)
        lines.append(text)
        encs.append(enc)
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError(f"{path} is empty")
    try:
        header = [_simple(c) for c in next(csv.reader([lines[0]]))]
    except csv.Error as e:
        raise DataError(f"{path}: cannot read the header line: {e}") from None
    while header and header[-1] == "":
        header.pop()  # an empty trailing column
    lower = [h.lower() for h in header]
    for name in (*required, text_col):
        if name.lower() not in lower:
            option = "--text-col" if name == text_col else "--id-col / --labels-col"
            sep = next((s for s in (";", "\t") if name.lower() in [_simple(c).lower() for c in lines[0].split(s)]),
                       None)
            hint = f"; it is split by {sep!r}: is the separator ','? Save the file comma-separated" if sep else \
                f" (name it with {option})"
            raise DataError(f"{path} line 1: no column {name!r} in the header {header}{hint}")
    text_at = lower.index(text_col.lower())
    pattern = _cell_pattern(len(header), text_at)
    prefix = re.compile("".join(f"(?P<f{k}>{_SIMPLE})," for k in range(text_at)))
    wanted = {name: lower.index(name.lower()) for name in (*required, *optional) if name.lower() in lower}

    def parse(chunk: str) -> dict | None:
        m = pattern.fullmatch(chunk)
        if m is None:
            return None
        text = m.group("quoted").replace('""', '"') if m.group("quoted") is not None else m.group("plain")
        out = {name: _simple(m.group(f"f{k}")) for name, k in wanted.items()}
        out[text_col] = text.strip()
        return out

    def closes(first: int, last: int) -> bool:  # lines first..last are a record with every quote closed
        chunk = "\n".join(lines[first:last + 1])
        return chunk.count('"') % 2 == 0 and parse(chunk) is not None

    def goes_on(first: int, at: int) -> bool:
        """Whether the open record from ``first`` goes on over line ``at``, which begins like a record but does
        not close it: only if ``at`` and the lines up to one that closes it (within 4 lines) are a caption's
        middle lines (no quote, or paired quotes that do not parse) or do not begin like a record."""
        for j in range(at, min(at + 4, len(lines))):
            if lines[j].strip() and prefix.match(lines[j]):
                if '"' in lines[j] and (lines[j].count('"') % 2 or parse(lines[j]) is not None):
                    return False  # a record of its own, or a guess
            elif closes(first, j):
                return True
        return False

    rows, i = [], 1
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        sep = _other_separator(lines[i], len(header))
        begins = None if sep else prefix.match(lines[i])  # a ';' row is an error, whatever its commas
        last, end = i, i + 1  # its last non-blank line so far; one past the lines it owns
        while begins and end < len(lines):
            if (lines[end].strip() and prefix.match(lines[end])
                    and (closes(i, last) or not (closes(i, end) or goes_on(i, end)))):
                break  # a new record (where this one is still open, the reader would have to guess)
            last = end if lines[end].strip() else last
            end += 1
        best = None  # the longest run that parses, preferring one whose quotes all close
        for k in range(last, i - 1, -1) if begins else ():
            if k > i and '"' not in lines[k]:
                continue  # a run over several lines ends with the closing quote
            chunk = "\n".join(lines[i:k + 1])
            fields = parse(chunk)
            if fields is not None and (best is None or chunk.count('"') % 2 == 0):
                best = (k, fields)
                if chunk.count('"') % 2 == 0:
                    break
        if best is not None:
            k, fields = best
            used = {e for e in encs[i:k + 1] if e != "utf-8"}
            rows.append((i + 1, fields, None, min(used) if used else "utf-8"))
            i = k + 1
            continue
        # an error row: the fields before the text are simple, keep them to name it
        fields = {name: _simple(begins.group(f"f{k}")) for name, k in wanted.items() if k < text_at} if begins else {}
        why = "unbalanced quotes or a wrong number of fields"
        if sep:
            why = f"it splits into {len(lines[i].split(sep))} fields at {sep!r}: is the separator ','?"
        elif "\n".join(lines[i:end]).count('"') % 2:
            why = ("a quote opened here is never closed before the next record; close it (a quote inside "
                   "quoted text is doubled: \"\")")
        rows.append((i + 1, fields, f"cannot parse line {i + 1} into the {len(header)} columns {header}: {why}",
                     encs[i]))
        i = end  # its continuation lines (none begins like a record) go with it
    return rows, header


def _image_path(images: Path, image_id: str) -> tuple[Path, str | None]:
    """The image file of an id: a plain file name inside ``images`` (no folder, ``.``, ``..`` or absolute
    path, which could point outside it); an id without extension gets ``.jpg`` unless it names a file."""
    if (image_id in ("", ".", "..") or "/" in image_id or "\\" in image_id or Path(image_id).is_absolute()
            or PureWindowsPath(image_id).drive  # C:x.jpg: relative to a drive's own folder on Windows
            or any(ord(c) < 32 for c in image_id)):  # a NUL even makes is_file() raise
        return images / "invalid", (f"image id {image_id!r} is not a file name inside {images} "
                                    "(no '/', '\\', '.', '..', absolute paths or control characters)")
    path = images / image_id
    if not path.suffix and not path.is_file():
        path = path.with_suffix(".jpg")
    return path, None


def split_labels(cell: str, sep: str = " ") -> list[str]:
    """The labels of one cell: split on ``sep`` (" ": any run of whitespace), empty pieces dropped."""
    return cell.split() if sep == " " else [x.strip() for x in cell.split(sep) if x.strip()]


def _sort_labels(names) -> tuple[str, ...]:
    names = sorted(set(names))
    return tuple(sorted(names, key=int) if all(re.fullmatch(r"-?\d+", n) for n in names) else names)


def read_csv(path: str | Path, fmt: CsvFormat, fallbacks: tuple[str, ...] = FALLBACK_ENCODINGS) -> DataSet:
    """Read a multi-label CSV (``ImageID,Labels,Caption``; without the labels column: unlabelled).

    Bad rows (unparseable line, missing image, unknown label with fixed label names, duplicate id)
    are returned with ``error`` set, naming the line and the image; an empty label cell is an
    all-negative row."""
    path, images = Path(path), Path(fmt.images)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    if not images.is_dir():
        raise DataError(f"image folder not found: {images} (pass it with --images)")

    rows, header = csv_records(path, fmt.text_col, (fmt.id_col,), (fmt.labels_col,))
    labelled = fmt.labels_col.lower() in [h.lower() for h in header]
    cells = [split_labels(fields[fmt.labels_col], fmt.label_sep) if labelled and not error else []
             for _, fields, error, _ in rows]
    names = fmt.label_names or _sort_labels(x for c in cells for x in c)
    unparsed = [(line, error) for line, _, error, _ in rows if error and error.startswith("cannot parse")]
    if unparsed and (len(unparsed) == len(rows) or (labelled and len(names) < 2)):
        # the label set (or the whole file) is wrong because rows cannot be read: say which and where
        line, error = unparsed[0]
        raise DataError(f"{path} line {line}: {error} ({len(unparsed)} of {len(rows)} rows cannot be parsed)")
    if labelled and not names:
        raise DataError(f"{path}: no row carries a label: pass --label-names to fix the label set")
    if len(names) == 1:
        raise DataError(f"{path}: a multi-label data set needs at least 2 labels, got {names[0]!r} only")
    known = set(names)
    records, seen, encodings = [], {}, Counter()
    for (line, fields, error, enc), labels in zip(rows, cells):
        source = f"{path.name}:{line}"
        if error:
            guid = fields.get(fmt.id_col) or f"<line {line}>"
            records.append(Record(guid, "", images / "invalid", (), source, enc, error))
            continue
        image_id, text = fields[fmt.id_col], fields[fmt.text_col].replace("\x00", "")
        image, error = _image_path(images, image_id)
        image_id = image_id or f"<line {line}>"  # an empty id still names its row
        unknown = [x for x in labels if x not in known]
        if unknown:
            error = error or (f"unknown label(s) {unknown} (the label names are {', '.join(names)})")
        if image_id in seen:
            error = error or f"duplicate {fmt.id_col} {image_id!r} (first at line {seen[image_id]})"
        seen.setdefault(image_id, line)
        if error is None and not image.is_file():
            error = f"image file missing: {image}"
        encodings[enc] += 1
        records.append(Record(image_id, text, image, tuple(dict.fromkeys(labels)), source, enc, error))
    if not records:
        raise DataError(f"{path} lists no rows")
    return DataSet(path.parent, path.stem, path, records, tuple(names), True, encodings, labelled, "csv")

