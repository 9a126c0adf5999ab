"""WebDataset tar shards, as img2dataset and clip-retrieval write them: ``KEY.jpg|jpeg|png|webp`` (the
image), ``KEY.txt`` (the caption), ``KEY.json`` (fields: caption, label, ...) and ``KEY.cls`` (a class
index or name), read from ``DIR/{00000..00009}.tar``, a folder of ``.tar`` files or one tar.

Each tar is read once, in order, and never extracted: the member headers are indexed, the small text,
json and cls members read, and each image kept as an :class:`ImageRef` (tar, member, data offset, size)
that extraction reads later with one seek and read.
"""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from ..errors import DataError
from ._records import DataSet, ImageRef, decode_text
from ._tables import LABEL_NAMES, TEXT_NAMES, Columns, Row, build, input_files

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # in the order of preference when a key has several
SMALL_EXTS = ("txt", "json", "cls")  # read while indexing
_KEY = re.compile(r"^((?:.*/|)[^./][^/]*?)\.([^/]*)$")  # webdataset's split: the key ends at the first dot of the
#                                                     base name (``a/b.seg.png``: key ``a/b``, extension ``seg.png``)


def expand_braces(pattern: str) -> list[str]:
    """webdataset's brace patterns: ``{00000..00009}`` (zero padding kept), ``{a,b}``, several groups."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        a, b = r.groups()
        width = max(len(a), len(b)) if (len(a) > 1 and a[0] == "0") or (len(b) > 1 and b[0] == "0") else 0
        step = 1 if int(b) >= int(a) else -1
        items = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        return [head + "{" + body + "}" + p for p in expand_braces(tail)]
    return [head + item + rest for item in items for rest in expand_braces(tail)]


def is_pattern(source) -> bool:
    return re.search(r"\{[^{}]*(?:\.\.|,)[^{}]*\}", str(source)) is not None


def tar_files(source: str | Path, split: str = "train") -> list[Path]:
    """The shards of ``source``: a brace pattern, a folder of ``.tar`` files (those of ``split`` where the
    names carry splits) or one tar."""
    if is_pattern(source):
        files = [Path(p) for p in expand_braces(str(source))]
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise DataError(f"{source}: {len(missing)} of {len(files)} shards not found, e.g. {missing[0]}")
        return files
    return input_files(source, split, ".tar", "tar shard")


def index_tar(path: Path) -> dict[str, dict[str, tuple]]:
    """{key: {extension: (member name, data offset, size, bytes of a small member or None)}} in member order.

    A truncated or corrupt tar is a DataError naming the shard and the last member read whole."""
    samples: dict[str, dict[str, tuple]] = {}
    last, size = "(none)", path.stat().st_size
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                if m.offset_data + m.size > size:
                    raise tarfile.ReadError(f"member {m.name} needs bytes up to {m.offset_data + m.size}")
                key, ext = _KEY.match(m.name).groups() if _KEY.match(m.name) else (m.name, "")
                ext = ext.lower()
                raw = None
                if ext in SMALL_EXTS:
                    f.seek(m.offset_data)
                    raw = f.read(m.size)
                members = samples.setdefault(key, {})
                if ext in members:
                    members.setdefault("!duplicate", (m.name, 0, 0, None))
                members.setdefault(ext, (m.name, m.offset_data, m.size, raw))
                last = m.name
            f.seek(tar.offset)
            end = f.read(tarfile.BLOCKSIZE)
    except tarfile.CompressionError:
        raise DataError(f"{path}: a compressed tar; WebDataset shards are read uncompressed (.tar)") from None
    except (tarfile.TarError, EOFError) as e:
        if last == "(none)":
            raise DataError(f"{path} is not a tar file (or is compressed): {e}") from None
        end = b"x"
    if len(end) < tarfile.BLOCKSIZE or end.strip(b"\0"):
        raise DataError(f"{path.parent.name}/{path.name}:{last}: the tar is truncated or corrupt after this member "
                        f"(the file has {size} bytes): re-download or re-write the shard, or leave it out")
    return samples


def _json_field(data: dict | None, given: str | None, candidates: tuple[str, ...]):
    if not data:
        return None, None
    if given is not None:
        return (given, data[given]) if given in data else (None, None)
    lower = {k.lower(): k for k in data}
    name = next((lower[c] for c in candidates if c in lower), None)
    return (name, data[name]) if name else (None, None)


def read_webdataset(source: str | Path, split: str = "train", cols: Columns | None = None) -> DataSet:
    """Read WebDataset shards: one record per key, in shard and member order; the guid is the key (or the
    ``.json`` field ``cols.id_col``). The text: ``KEY.txt``, else the ``.json`` field ``cols.text_col`` (default
    caption, text, ...); the label: the ``.json`` field ``cols.labels_col`` if named, else ``KEY.cls``, else a
    label field of the ``.json``. Bad samples (no image, no text, a duplicate key, a bad label) carry an error
    naming ``shard.tar:member``."""
    cols = cols or Columns()
    shards = tar_files(source, split)
    rows, labelled, first = [], False, {}
    for g, tar in enumerate(shards):
        for key, members in index_tar(tar).items():
            image_ext = next((e for e in IMAGE_EXTS if e in members), None)
            name = members[image_ext][0] if image_ext else next(iter(members.values()))[0]
            row = Row(f"{tar.name}:{name}", g, key)
            meta = None
            if "json" in members:
                try:
                    meta = json.loads(members["json"][3].decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as e:
                    row.error = f"unreadable {members['json'][0]}: {e}"
                if not isinstance(meta, dict):
                    meta = None
            if image_ext:
                _, offset, size, _ = members[image_ext]
                row.image = ImageRef("tar", tar.resolve(), name, size, offset)
            if "txt" in members:
                row.text, row.encoding = decode_text(members["txt"][3])
            else:
                _, value = _json_field(meta, cols.text_col, TEXT_NAMES)
                row.text = None if value is None else str(value)
            field, value = _json_field(meta, cols.labels_col, () if cols.labels_col else LABEL_NAMES)
            if field is None and cols.labels_col is None and "cls" in members:
                value = decode_text(members["cls"][3])[0].strip()
                field = "cls"
            row.label, labelled = value, labelled or field is not None
            if cols.id_col is not None:
                _, row.guid = _json_field(meta, cols.id_col, ())
                row.error = row.error or (None if row.guid is not None else f"no field {cols.id_col!r} in {key}.json")
            if "!duplicate" in members:
                row.error = row.error or f"key {key!r} has a member twice ({members['!duplicate'][0]})"
            if str(row.guid) in first:
                row.error = row.error or f"duplicate key {row.guid!r} (first in {first[str(row.guid)]})"
            first.setdefault(str(row.guid), f"{tar.parent.name}/{tar.name}")
            rows.append(row)
    text_what = f"text ({'KEY.txt or a ' + repr(cols.text_col) if cols.text_col else 'KEY.txt or a caption'} field " \
                "in KEY.json)"
    split_file = Path(str(source)) if is_pattern(source) or Path(source).is_dir() else shards[0]
    return build(rows, fmt="webdataset", root=Path(str(source)), split=split if len(shards) > 1 else shards[0].stem,
                 split_file=split_file, sources=shards, cols=cols, labelled=labelled, text_what=text_what,
                 image_what=f"image ({'|'.join('KEY.' + e for e in IMAGE_EXTS)})")
