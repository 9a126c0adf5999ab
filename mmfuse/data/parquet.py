"""Parquet files (one, or a folder of them): one record per row, the image column holding encoded bytes,
a struct of ``bytes``/``path`` (as Hugging Face ``datasets`` writes an ``Image()`` column) or a path
relative to the Parquet file's folder.

The files are read one row-group batch at a time (the image bytes only to learn each cell's size); the
images themselves are read again at extraction time through an :class:`ImageRef` (file, row group,
row) by ``_cells``, which streams each row group once per process.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ._records import DataSet, ImageRef, decode_text
from ._tables import ID_NAMES, IMAGE_NAMES, LABEL_NAMES, TEXT_NAMES, Columns, Row, build, input_files, need, pick

SCAN_ROWS = 256  # rows read at a time while indexing


def parquet_files(source: str | Path, split: str = "train") -> list[Path]:
    """A ``.parquet`` file, or the ``.parquet`` files of a folder (those of ``split`` where the names carry
    splits, ``train-00000-of-00002.parquet``), sorted."""
    return input_files(source, split, ".parquet", "Parquet file")


def hf_class_names(schema, column: str | None) -> tuple[str, ...] | None:
    """The ClassLabel names of ``column`` from the schema's ``huggingface`` metadata (datasets writes it)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if column is None or not meta:
        return None
    try:
        feature = json.loads(meta)["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    for _ in range(3):  # ClassLabel, or a list of them (Sequence / List of ClassLabel)
        if not isinstance(feature, dict):
            return None
        if feature.get("_type") == "ClassLabel" and feature.get("names"):
            return tuple(map(str, feature["names"]))
        feature = feature.get("feature")
    return None


def image_kind(type_, pa) -> str | None:
    """How a column of this Arrow type holds images: "bytes", "path", "struct" (bytes and/or path) or None."""
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return "bytes"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "path"
    if pa.types.is_struct(type_) and {"bytes", "path"} & {type_.field(i).name for i in range(type_.num_fields)}:
        return "struct"
    return None


def image_cells(column, kind: str, pa, pc) -> tuple[list, list]:
    """(byte sizes or None, paths or None) of one batch (an Array) of an image column, without copying bytes."""
    n = len(column)
    if kind == "path":
        return [None] * n, column.to_pylist()
    data, paths = column, [None] * n
    if kind == "struct":  # flatten: the children with the struct's offset and nulls applied
        children = dict(zip((column.type.field(i).name for i in range(column.type.num_fields)), column.flatten()))
        data = children.get("bytes", pa.nulls(n, pa.binary()))
        paths = children["path"].to_pylist() if "path" in children else paths
    return pc.binary_length(data).to_pylist(), paths


def image_of(size, path, folder: Path, kind: str, container: Path, member: str, **where):
    """The image of a cell: an :class:`ImageRef` (``where``: its row group, row, column) where the cell holds
    bytes, else the file its path names (a relative path from ``folder``), else None."""
    if size is not None:
        return ImageRef(kind, container, member, size, **where)
    return folder / path if path else None


def text_of(value) -> tuple[str | None, str, str | None]:
    """(text, encoding, error) of a text cell."""
    if value is None:
        return None, "utf-8", None
    if isinstance(value, bytes):
        return (*decode_text(value), None)
    if isinstance(value, str):
        return value, "utf-8", None
    return "", "utf-8", f"the text cell holds {type(value).__name__}, not text"


def read_parquet(source: str | Path, split: str = "train", cols: Columns | None = None) -> DataSet:
    """Read Parquet rows in file and row order. The columns: ``cols`` or found by name (text, caption, ...;
    label, labels, ...; image, img, ...; id, key, ...); without an id column the guid is the row index (over
    all files). A ClassLabel column (datasets' metadata) gives the label names. Bad rows carry an error
    naming the file and row."""
    cols = cols or Columns()
    pa, pc, pq = need("pyarrow", "Parquet"), need("pyarrow.compute", "Parquet"), need("pyarrow.parquet", "Parquet")
    files = parquet_files(source, split)
    rows, resolved, class_names = [], None, None
    for g, path in enumerate(files):
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file: {e}") from None
        schema = pf.schema_arrow
        names = schema.names
        image_col = pick(names, cols.image_col, IMAGE_NAMES, "--image-col", path) or next(
            (n for n in names if image_kind(schema.field(n).type, pa) in ("bytes", "struct")), None)
        if image_col is None:
            raise DataError(f"{path}: no image column (name it with --image-col); it has {', '.join(names)}")
        kind = image_kind(schema.field(image_col).type, pa)
        if kind is None:
            raise DataError(f"{path}: column {image_col!r} is {schema.field(image_col).type}: an image column holds "
                            "bytes, a path or a struct of bytes and path")
        text_col = pick(names, cols.text_col, TEXT_NAMES, "--text-col", path)
        if text_col is None:
            raise DataError(f"{path}: no text column (name it with --text-col); it has {', '.join(names)}")
        now = Columns(pick(names, cols.id_col, ID_NAMES, "--id-col", path), text_col,
                      pick(names, cols.labels_col, LABEL_NAMES, "--labels-col", path), image_col, cols.label_sep,
                      cols.label_names)
        if resolved is not None and now != resolved:
            raise DataError(f"{path}: its columns ({now}) differ from {files[0].name}'s ({resolved}): name them with "
                            "--id-col, --text-col, --labels-col and --image-col")
        resolved = now
        class_names = class_names or hf_class_names(schema, now.labels_col)
        light = [c for c in dict.fromkeys((now.id_col, now.text_col, now.labels_col)) if c]
        start, full = 0, path.resolve()
        for rg in range(pf.num_row_groups):
            local = 0
            for batch in pf.iter_batches(SCAN_ROWS, row_groups=[rg], columns=[*light, image_col]):
                values = {c: batch.column(c).to_pylist() for c in light}
                sizes, paths = image_cells(batch.column(image_col), kind, pa, pc)
                for j in range(batch.num_rows):
                    at = start + local + j
                    text, enc, error = text_of(values[text_col][j])
                    guid = values[now.id_col][j] if now.id_col else len(rows)  # else: the row index over all files
                    if guid is None or guid == "":
                        guid, error = f"<{path.name} row {at}>", error or f"empty id (column {now.id_col!r})"
                    image = image_of(sizes[j], paths[j], path.parent, "parquet", full, f"row {at}", row_group=rg,
                                     row=local + j, column=image_col)
                    rows.append(Row(f"{path.name} row {at}", g, guid, text, image,
                                    values[now.labels_col][j] if now.labels_col else None, enc, error))
                local += batch.num_rows
            start += local
    one = Path(source).is_file()
    return build(rows, fmt="parquet", root=Path(source), split=files[0].stem if one else split,
                 split_file=Path(source), sources=files, cols=resolved, labelled=resolved.labels_col is not None,
                 class_names=class_names, text_what=f"text (column {resolved.text_col!r} is empty)",
                 image_what=f"image (column {resolved.image_col!r} is empty)")
