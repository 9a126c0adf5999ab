"""Features out: a finished cache exported as ``.npy`` parts + Parquet metadata, or as Parquet parts, for
tools that do not read HDF5 (retrieval indexes, clustering, other trainers; embedding-reader's layouts).

``to="npy"`` writes, per part of ``rows_per_part`` rows, one ``{feature}/{part}.npy`` per feature (the
feature's name with ``/`` as ``_``: ``text_cls/0000.npy``, the cache's dtype, bit for bit) and
``metadata/{part}.parquet`` (the same rows in the same order); ``to="parquet"`` writes ``{part}.parquet``
with the metadata columns and one fixed-size float32 list column per feature. Every row of the cache in
its order, skipped rows included (``skipped`` true, their ``reason``, zero vectors: the cache leaves their
space unwritten), unless ``drop_skipped``. ``_manifest.json`` traces the export back to its cache.

Safety: the export is built in a hidden sibling folder and renamed into place when complete
(:func:`mmfuse.outputs.new_folder`); an existing folder is replaced only with ``overwrite`` and only if it
is an export (its manifest says so). The cache is read ``BLOCK_ROWS`` rows at a time, whatever the part size.
docs/export.md shows the layout and how to read it back.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .cache import CHUNK_ROWS, FeatureCache
from .errors import CacheError, MmfuseError
from .identity import describe
from .outputs import new_folder

FORMAT = "mmfuse-export"
VERSION = 1
MANIFEST = "_manifest.json"  # "_": Parquet dataset readers (pyarrow, pandas, Spark) skip it when reading DIR
FORMATS = ("npy", "parquet")
ROWS_PER_PART = 100_000
BLOCK_ROWS = 16 * CHUNK_ROWS  # rows read from the cache at a time (4096): memory stays flat for any part size
META_COLUMNS = ("row", "guid", "label", "label_index", "skipped", "reason")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MmfuseError("exporting features needs pyarrow: pip install 'mmfuse[formats]'") from None
    return pa, pq


def column_name(feature: str) -> str:
    """A feature's folder (npy) or column (parquet) name: ``text/cls`` -> ``text_cls``."""
    return feature.replace("/", "_")


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds an export written by :func:`export_cache` (its manifest says so)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _only_an_export(target: Path, kind: str, overwrite: bool, option: str) -> None:
    """new_folder's check: an absent or empty target, or (with ``overwrite``) an earlier export; never
    a folder of the user's."""
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_dir():
        raise MmfuseError(f"{target} exists and is not a folder: it is not replaced; choose another {option}")
    if not any(target.iterdir()):
        return
    if not is_export(target):
        raise MmfuseError(f"{target} holds files that mmfuse export did not make (no export {MANIFEST}): it is never "
                          f"replaced; choose another {option}")
    if not overwrite:
        raise MmfuseError(f"{target} already holds an export: pass --overwrite to replace it (it is kept until the "
                          f"new one is complete), or choose another {option}")


def _meta_schema(pa, multilabel: bool):
    label, index = (pa.list_(pa.string()), pa.list_(pa.int64())) if multilabel else (pa.string(), pa.int64())
    return pa.schema([("row", pa.int64()), ("guid", pa.string()), ("label", label), ("label_index", index),
                      ("skipped", pa.bool_()), ("reason", pa.string())])


class _Reader:
    """Blocks of rows of one open cache: metadata columns and feature arrays, skipped rows' vectors zeroed."""

    def __init__(self, f: h5py.File, path: Path, names: tuple[str, ...], multilabel: bool):
        self.f, self.path, self.names, self.multilabel = f, path, names, multilabel
        self.skipped = f["skipped"][:]
        # a shard's rows are numbered in the whole data set (the merged cache's numbering), not within the shard
        self.data_rows = f["shard_rows"][:] if "shard_rows" in f else None
        width = f["label"].shape[1] if f["label"].ndim == 2 else 0
        if multilabel and width and width != len(names):
            raise CacheError(f"{path} has {width} label columns but names {len(names)} labels: extract it again")

    def _read(self, name: str, lo: int, hi: int, sel: np.ndarray | None) -> np.ndarray:
        try:
            ds = self.f[name]
            x = ds.asstr()[lo:hi] if h5py.check_string_dtype(ds.dtype) else ds[lo:hi]
        except (OSError, KeyError) as e:
            raise CacheError(f"cannot read {name} rows {lo}-{hi - 1} of {self.path}: {str(e).splitlines()[0][:160]}; "
                             "the cache is damaged: extract it again with --overwrite") from None
        return x if sel is None else x[sel]

    def blocks(self, rows: np.ndarray):
        """(cache rows, slice args) per block of ``rows`` (ascending), each within BLOCK_ROWS cache rows."""
        pos = 0
        while pos < len(rows):
            lo = int(rows[pos])
            end = pos + int(np.searchsorted(rows[pos:], lo + BLOCK_ROWS))
            hi = int(rows[end - 1]) + 1
            sel = None if hi - lo == end - pos else rows[pos:end] - lo
            yield rows[pos:end], (lo, hi, sel)
            pos = end

    def metadata(self, pa, schema, rows: np.ndarray, lo: int, hi: int, sel):
        guids, labels = self._read("guid", lo, hi, sel), self._read("label", lo, hi, sel)
        skipped, reasons = self.skipped[rows], self._read("skip_reason", lo, hi, sel)
        names = self.names
        if self.multilabel:
            width = labels.shape[1] if labels.ndim == 2 else 0
            index = [np.flatnonzero(y).tolist() if width and (y >= 0).all() else None for y in labels]
            label = [None if i is None else [names[j] for j in i] for i in index]
        else:
            bad = np.flatnonzero(labels >= len(names))
            if len(bad):
                raise CacheError(f"{self.path}: row {int(rows[bad[0]])} (guid {guids[bad[0]]}) has label "
                                 f"{int(labels[bad[0]])} but the cache names {len(names)} labels: extract it again")
            index, label = labels, [names[i] if i >= 0 else None for i in labels]
        numbers = rows if self.data_rows is None else self.data_rows[rows]
        return pa.table([numbers, guids, label, index, skipped, [r if s else None for r, s in zip(reasons, skipped)]],
                        schema=schema)

    def features(self, name: str, rows: np.ndarray, lo: int, hi: int, sel) -> np.ndarray:
        x = self._read(name, lo, hi, sel)
        x[self.skipped[rows]] = 0  # no valid vector in the cache: unwritten space, or a text vector computed before
        # the row was skipped (its image failed)
        return np.ascontiguousarray(x)


def _npy_header(fh, rows: int, dim: int, dtype: np.dtype) -> None:
    """A ``.npy`` header for a C-order (rows, dim) array, whose bytes are then written block by block."""
    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype),
                                              "fortran_order": False, "shape": (rows, dim)})


def _write_part(tmp: Path, to: str, stem: str, reader: _Reader, rows: np.ndarray, features: dict, pa, pq,
                meta_schema) -> list[str]:
    """One part's files (paths in the export), its rows read block by block."""
    schema, vectors = meta_schema, {}
    if to == "npy":
        meta, vectors = f"metadata/{stem}.parquet", {n: f"{column_name(n)}/{stem}.npy" for n in features}
    else:
        meta = f"{stem}.parquet"
        for n, d in features.items():
            schema = schema.append(pa.field(column_name(n), pa.list_(pa.float32(), d["dim"])))
    for rel in (meta, *vectors.values()):
        (tmp / rel).parent.mkdir(exist_ok=True)
    arrays = {n: open(tmp / rel, "wb") for n, rel in vectors.items()}
    try:
        for n, fh in arrays.items():  # the .npy header, then the rows' bytes as they come
            _npy_header(fh, len(rows), features[n]["dim"], np.dtype(features[n]["dtype"]))
        with pq.ParquetWriter(tmp / meta, schema) as writer:
            for block, (lo, hi, sel) in reader.blocks(rows):
                table = reader.metadata(pa, meta_schema, block, lo, hi, sel)
                for n, d in features.items():
                    x = reader.features(n, block, lo, hi, sel)
                    if to == "npy":
                        arrays[n].write(x.tobytes())
                    else:
                        flat = pa.array(x.astype(np.float32, copy=False).reshape(-1))
                        table = table.append_column(column_name(n), pa.FixedSizeListArray.from_arrays(flat, d["dim"]))
                writer.write_table(table)
    finally:
        for fh in arrays.values():
            fh.close()
    return [meta, *vectors.values()]


def export_cache(cache: str | Path, out: str | Path, to: str = "npy", features: list[str] | None = None,
                 drop_skipped: bool = False, rows_per_part: int = ROWS_PER_PART, overwrite: bool = False,
                 log=None) -> dict:
    """Export the finished cache ``cache`` into the folder ``out`` (see the module's doc); returns the manifest.

    >>> export_cache("features/train.h5", "exports/train", to="npy", features=["text/cls"])
    """
    if to not in FORMATS:
        raise MmfuseError(f"unknown export format {to!r}: choose {', '.join(FORMATS)}")
    if rows_per_part < 1:
        raise MmfuseError(f"--rows-per-part must be at least 1, not {rows_per_part}")
    pa, pq = _pyarrow()
    fc = FeatureCache(cache)  # a missing, damaged or incomplete cache: one line, nothing written
    names = list(dict.fromkeys(features or fc.feature_names))
    unknown = [n for n in names if n not in fc.feature_names]
    if unknown:
        raise CacheError(f"{fc.path} has no features {unknown[0]!r}; it has {', '.join(fc.feature_names)}")
    chosen = {n: {"dim": fc.dims[n], "dtype": fc.dtypes[n] if to == "npy" else "float32", "cache_dtype": fc.dtypes[n],
                  ("folder" if to == "npy" else "column"): column_name(n)} for n in names}
    meta_schema = _meta_schema(pa, fc.multilabel)
    with h5py.File(fc.path, "r") as f:
        reader = _Reader(f, fc.path, fc.label_names, fc.multilabel)
        rows = np.flatnonzero(~reader.skipped) if drop_skipped else np.arange(len(reader.skipped))
        n_parts = max(1, -(-len(rows) // rows_per_part))
        width = max(4, len(str(n_parts - 1)))
        parts = []
        try:
            with new_folder(out, "feature export", overwrite, what="mmfuse export", option="DIR",
                            check=_only_an_export) as tmp:
                for p in range(n_parts):
                    part = rows[p * rows_per_part:(p + 1) * rows_per_part]
                    files = _write_part(tmp, to, f"{p:0{width}d}", reader, part, chosen, pa, pq, meta_schema)
                    parts.append({"rows": len(part), "first_row": p * rows_per_part, "files": files})
                    if log and n_parts > 1:
                        log(f"part {p + 1}/{n_parts}: {len(part)} rows")
                manifest = {
                    "format": FORMAT, "version": VERSION, "to": to, "cache": str(Path(fc.path).resolve()),
                    "cache_identity": fc.identity, "feature_identity": fc.feature_identity,
                    "data_fingerprint": fc.provenance.get("data", {}).get("fingerprint"),
                    "source": describe(fc.provenance), "provenance": fc.provenance,
                    "label_names": list(fc.label_names), "multilabel": fc.multilabel, "features": chosen,
                    "metadata_columns": list(META_COLUMNS), "rows": len(rows), "cache_rows": len(reader.skipped),
                    "skipped_rows": int(reader.skipped[rows].sum()), "drop_skipped": drop_skipped,
                    "skipped_vectors": "zeros", "rows_per_part": rows_per_part, "parts": parts,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "mmfuse": __version__}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            raise MmfuseError(f"cannot write the export {out}: {str(e).splitlines()[0][:200]}; nothing was written "
                              "there (an earlier export is untouched): free some space or fix the folder, then "
                              "re-run the command") from None
    return manifest
