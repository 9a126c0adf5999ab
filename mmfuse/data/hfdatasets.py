"""Hugging Face ``datasets`` folders: a ``save_to_disk`` folder (read with ``datasets.load_from_disk``;
an ``Image()`` column, or bytes or paths; a ``ClassLabel`` column gives the label names), and an image
folder with ``metadata.jsonl`` / ``metadata.csv`` (a ``file_name`` column plus text and label columns,
as the ``imagefolder`` builder defines it), in the folder or in its ``SPLIT/`` subfolder.

The Arrow files of a ``save_to_disk`` folder are memory-mapped, their rows read one batch at a time, and
each embedded image kept as an :class:`ImageRef` (file, row) that extraction slices out of the mapping.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import DataError
from ._cells import arrow_table
from ._records import DataSet
from ._tables import ID_NAMES, IMAGE_NAMES, LABEL_NAMES, TEXT_NAMES, Columns, Row, build, need, pick
from .parquet import image_cells, image_kind, image_of, text_of

SCAN_ROWS = 256
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
METADATA = ("metadata.jsonl", "metadata.csv")


def metadata_file(folder: Path, split: str = "train") -> Path | None:
    """An image folder's metadata file: in the folder, else in its ``split`` subfolder."""
    for where in (folder, folder / split):
        found = next((where / m for m in METADATA if (where / m).is_file()), None)
        if found:
            return found
    return None


def kind_of(folder: Path, split: str = "train") -> str | None:
    """"hf-datasets" (a save_to_disk folder), "imagefolder" (metadata.jsonl|csv) or None."""
    if any((folder / m).is_file() for m in SAVED_MARKERS):
        return "hf-datasets"
    return "imagefolder" if metadata_file(folder, split) else None


def _class_names(feature) -> tuple[str, ...] | None:
    for _ in range(3):  # ClassLabel, or a list of them (Sequence / List of ClassLabel)
        if feature is None:
            return None
        if type(feature).__name__ == "ClassLabel":
            return tuple(map(str, feature.names))
        feature = getattr(feature, "feature", None)
    return None


def read_saved(folder: str | Path, split: str = "train", cols: Columns | None = None) -> DataSet:
    """A ``datasets`` ``save_to_disk`` folder (a Dataset, or a DatasetDict whose ``split`` is read). The
    guid is the id column (``cols.id_col`` or id, key, ...), else the row index; bad rows carry an error
    naming the folder and row."""
    cols, folder = cols or Columns(), Path(folder)
    what = "a Hugging Face datasets folder"
    datasets, pa, pc = need("datasets", what), need("pyarrow", what), need("pyarrow.compute", what)
    try:
        d = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: not a readable datasets folder (save_to_disk): {str(e).splitlines()[0]}") from None
    where = folder
    if isinstance(d, datasets.DatasetDict):
        if split not in d:
            raise DataError(f"{folder}: no split {split!r}; it has {', '.join(d)} (choose it with --split)")
        d, where = d[split], folder / split
    if d._indices is not None:  # save_to_disk writes the rows themselves; a loaded selection has a mapping
        raise DataError(f"{where}: the dataset has an indices mapping: save it with flatten_indices() first")
    names, features = list(d.features), d.features
    image_col = pick(names, cols.image_col, (), "--image-col", where) or next(
        (n for n in names if type(features[n]).__name__ == "Image"), None) or pick(names, None, IMAGE_NAMES, "", where)
    text_col = pick(names, cols.text_col, TEXT_NAMES, "--text-col", where)
    if image_col is None or text_col is None:
        raise DataError(f"{where}: no {'image' if image_col is None else 'text'} column (name it with "
                        f"--{'image' if image_col is None else 'text'}-col); it has {', '.join(names)}")
    resolved = Columns(pick(names, cols.id_col, ID_NAMES, "--id-col", where), text_col,
                       pick(names, cols.labels_col, LABEL_NAMES, "--labels-col", where), image_col, cols.label_sep,
                       cols.label_names)
    files = [Path(f["filename"]) for f in d.cache_files]
    light = [c for c in dict.fromkeys((resolved.id_col, text_col, resolved.labels_col)) if c]
    rows = []
    for g, path in enumerate(files):
        table = arrow_table(path)
        kind = image_kind(table.schema.field(image_col).type, pa)
        if kind is None:
            raise DataError(f"{path}: column {image_col!r} is {table.schema.field(image_col).type}: an image column "
                            "holds bytes, a path or a struct of bytes and path")
        local = 0
        for batch in table.select([*light, image_col]).to_batches(max_chunksize=SCAN_ROWS):
            values = {c: batch.column(c).to_pylist() for c in light}
            sizes, paths = image_cells(batch.column(image_col), kind, pa, pc)
            for j in range(batch.num_rows):
                at = len(rows)
                text, enc, error = text_of(values[text_col][j])
                guid = values[resolved.id_col][j] if resolved.id_col else at
                if guid is None or guid == "":
                    guid, error = f"<row {at}>", error or f"empty id (column {resolved.id_col!r})"
                image = image_of(sizes[j], paths[j], where, "arrow", path.resolve(), f"row {at}", row=local + j,
                                 column=image_col)
                rows.append(Row(f"{where.name} row {at}", g, guid, text, image,
                                values[resolved.labels_col][j] if resolved.labels_col else None, enc, error))
            local += batch.num_rows
    if len(rows) != len(d):
        raise DataError(f"{where}: its Arrow files hold {len(rows)} rows, the dataset {len(d)}")
    return build(rows, fmt="hf-datasets", root=folder, split=split, split_file=where, sources=files, cols=resolved,
                 labelled=resolved.labels_col is not None,
                 class_names=_class_names(features.get(resolved.labels_col)) if resolved.labels_col else None,
                 text_what=f"text (column {text_col!r} is empty)", image_what=f"image (column {image_col!r} is empty)")


def _metadata_rows(path: Path) -> tuple[list[tuple[int, dict, str | None]], list[str]]:
    """([(line, fields, error)], column names) of a metadata.jsonl or metadata.csv."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    out, names = [], {}
    if path.suffix == ".jsonl":
        for line, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                fields = json.loads(raw)
            except ValueError as e:
                out.append((line, {}, f"line {line} is not JSON: {e}"))
                continue
            if not isinstance(fields, dict):
                out.append((line, {}, f"line {line} is not a JSON object"))
                continue
            names.update(dict.fromkeys(fields))
            out.append((line, fields, None))
        return out, list(names)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, [])
        done = 1
        for cells in reader:
            line, done = done + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            error = None if len(cells) == len(header) else f"{len(cells)} fields, the header has {len(header)}"
            out.append((line, dict(zip(header, cells)), error))
    except csv.Error as e:
        raise DataError(f"{path} line {done + 1}: {e}") from None
    return out, header


def read_imagefolder(folder: str | Path, split: str = "train", cols: Columns | None = None) -> DataSet:
    """An image folder with ``metadata.jsonl`` / ``metadata.csv``: the image is ``file_name`` (or
    ``cols.image_col``) relative to the metadata file's folder; the guid is the id column if there is one,
    else the file name. Bad rows carry an error naming the metadata file and line."""
    cols, folder = cols or Columns(), Path(folder)
    meta = metadata_file(folder, split)
    if meta is None:
        raise DataError(f"{folder}: no {' or '.join(METADATA)} (in it or in {split}/)")
    found, names = _metadata_rows(meta)
    where = f"{meta}"
    image_col = pick(names, cols.image_col or "file_name", (), "--image-col", where)
    text_col = pick(names, cols.text_col, TEXT_NAMES, "--text-col", where)
    if text_col is None:
        raise DataError(f"{meta}: no text column (name it with --text-col); it has {', '.join(names)}")
    resolved = Columns(pick(names, cols.id_col, ID_NAMES, "--id-col", where), text_col,
                       pick(names, cols.labels_col, LABEL_NAMES, "--labels-col", where), image_col, cols.label_sep,
                       cols.label_names)
    rows = []
    for line, fields, error in found:
        file_name = str(fields.get(image_col) or "")
        image = meta.parent / file_name if file_name else None
        if file_name and (Path(file_name).is_absolute() or ".." in Path(file_name).parts):
            image = meta.parent / "invalid"
            error = error or f"{image_col} {file_name!r} is not a path inside {meta.parent}"
        guid = fields.get(resolved.id_col) if resolved.id_col else file_name or None
        if resolved.id_col and guid in (None, ""):
            error = error or f"empty id ({resolved.id_col!r})"
        text = fields.get(text_col)
        rows.append(Row(f"{meta.name}:{line}", 0, guid if guid not in (None, "") else f"<line {line}>",
                        None if text is None else str(text), image,
                        fields.get(resolved.labels_col) if resolved.labels_col else None, "utf-8", error))
    return build(rows, fmt="imagefolder", root=folder, split=split, split_file=meta, sources=[meta], cols=resolved,
                 labelled=resolved.labels_col is not None, text_what=f"text ({text_col!r} is empty)",
                 image_what=f"image ({image_col!r} is empty)", grouped=False)
