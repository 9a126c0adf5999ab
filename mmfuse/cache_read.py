"""Reading a finished feature cache (:class:`FeatureCache`), and what the reader and the writer
(:mod:`mmfuse.cache`, which holds the file layout) share: the format's name, its modalities, opening a file
with an error naming the extraction writing it.

Memory: :meth:`FeatureCache.features` reads ``READ_ROWS`` file rows at a time straight into one preallocated
array of the kept rows (no copy of the whole dataset, none for the skipped rows, none for the dtype), so
reading N x D features holds N x D x 4 bytes. :meth:`FeatureCache.shared` keeps a float32 copy of one vector
as an ``.npy`` file that processes memory-map: the operating system's page cache then holds one copy per
machine for all of them (a grid's worker processes). ``from mmfuse.cache import FeatureCache`` works as
before.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from .errors import CacheError, write_failed
from .identity import feature_identity
from .outputs import describe_holder, lock_holder

FORMAT = "mmfuse-cache"
MODALITIES = ("text", "image")
EXTRAS = ("zeroshot/text",)  # datasets that are not per row, copied as they are by merges
READ_ROWS = 8192  # file rows read at a time (32 HDF5 chunks of the writer's 256 rows)


def partial_path(path: str | Path) -> Path:
    """Where a cache is written until it is complete: ``{cache}.partial``, renamed to ``{cache}`` at the end."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _open(path: Path, mode: str, locked: bool = False, **kw) -> h5py.File:
    """Open an HDF5 file; an error names the extraction writing it, unless ``locked`` (we are that writer)."""
    try:
        return h5py.File(path, mode, **kw)
    except OSError as e:
        holder = None if locked else lock_holder(_final(path))
        if holder is not None:
            raise CacheError(describe_holder(_final(path), holder, "extraction") + ": wait for it to finish "
                             "(`mmfuse info` shows its progress)") from None
        raise CacheError(f"cannot open feature cache {path}: {str(e).splitlines()[0][:160]}. It is damaged or not "
                         "an HDF5 file: re-run the extract command that made it with --overwrite (the file is "
                         "kept until the new cache is complete).") from None


def _final(path: Path) -> Path:
    """The cache a ``.partial`` file becomes."""
    return path.with_name(path.name[:-len(".partial")]) if path.name.endswith(".partial") else path


def _is_complete(f: h5py.File) -> bool:
    return bool(f["complete"][0]) if "complete" in f else bool(f.attrs.get("complete", False))  # version 2: attr


def _row_blocks(ds: h5py.Dataset, keep: np.ndarray):
    """(file rows lo:hi, their places a:b among ``keep``) of each READ_ROWS block of ``ds`` holding kept rows."""
    n = ds.shape[0]
    for lo in range(0, n, READ_ROWS):
        hi = min(n, lo + READ_ROWS)
        a, b = (int(k) for k in np.searchsorted(keep, (lo, hi)))
        if b > a:
            yield lo, hi, a, b


def _block(ds: h5py.Dataset, keep: np.ndarray, lo: int, hi: int, a: int, b: int) -> np.ndarray:
    """The kept rows among file rows lo:hi, as stored."""
    x = ds[lo:hi]
    return x if b - a == hi - lo else x[keep[a:b] - lo]


def read_rows(ds: h5py.Dataset, keep: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows ``keep`` (ascending) of the 2-D dataset ``ds`` as one (len(keep), D) array of ``dtype``, read
    READ_ROWS file rows at a time into it: a block of kept rows of the same dtype straight from the file
    (``read_direct``), others through one block (the same values as ``ds[:][keep].astype(dtype)``)."""
    out = np.empty((len(keep), ds.shape[1]), dtype)
    for lo, hi, a, b in _row_blocks(ds, keep):
        if b - a == hi - lo and ds.dtype == out.dtype:
            ds.read_direct(out, np.s_[lo:hi], np.s_[a:b])
        else:
            out[a:b] = _block(ds, keep, lo, hi, a, b)
    return out


class FeatureCache:
    """Read API over a finished cache. Skipped rows are left out of everything but ``skipped``.

    >>> cache = FeatureCache("features/train.h5")
    >>> X = cache.features("text/cls")          # (N, D) float32 numpy
    >>> y = cache.labels                          # (N,) int, -1 unlabelled
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            holder, partial = lock_holder(self.path), partial_path(self.path)
            if holder is not None:
                raise CacheError(describe_holder(self.path, holder, "extraction") + ": wait for it to finish "
                                 "(`mmfuse info` shows its progress)")
            if not partial.is_file():
                raise CacheError(f"feature cache not found: {self.path}")
            self.path = partial
        with _open(self.path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise CacheError(f"{self.path} is not an mmfuse feature cache")
            try:
                self._read(f, allow_incomplete)
            except (KeyError, ValueError, TypeError, IndexError) as e:
                part = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0][:160]
                raise CacheError(f"{self.path} is a damaged mmfuse cache ({part}): extract it again with "
                                 "--overwrite") from None

    def _read(self, f: h5py.File, allow_incomplete: bool) -> None:
        self.complete = _is_complete(f)
        if not self.complete and not allow_incomplete:
            done = int(np.sum(f["done/text"][:] & f["done/image"][:] | f["skipped"][:]))
            raise CacheError(f"{_final(self.path)} is incomplete ({done}/{len(f['guid'])} rows): they are kept in "
                             f"{self.path.name}; re-run the same extract command to resume it.")
        self.provenance: dict = json.loads(f.attrs["provenance"])
        self.identity: str = str(f.attrs["identity"])  # features + data + run numerics: resume key
        self.feature_identity = feature_identity(self.provenance)  # what must match to compare features
        self.label_names: tuple[str, ...] = tuple(json.loads(f.attrs["label_names"]))
        self.multilabel = bool(f.attrs["multilabel"])
        all_guids = [g.decode() if isinstance(g, bytes) else g for g in f["guid"][:]]
        skipped = f["skipped"][:]
        if not (len(all_guids) == len(skipped) == len(f["skip_reason"]) == len(f["label"])):
            raise ValueError("its guid, label and skipped datasets differ in length")
        out = np.flatnonzero(skipped)  # the skipped rows' reasons (512 bytes a row): read only where few
        held = f["skip_reason"][out] if 0 < len(out) <= 1024 else f["skip_reason"][:][out] if len(out) else []
        reasons = [r.decode() if isinstance(r, bytes) else r for r in held]
        self._keep = np.flatnonzero(~skipped)
        self.guids: list[str] = [all_guids[i] for i in self._keep]
        self.labels: np.ndarray = f["label"][:][self._keep]
        self.skipped: list[tuple[str, str]] = [(all_guids[i], r) for i, r in zip(out, reasons)]
        self.feature_names: list[str] = []
        f.visititems(lambda name, obj: self.feature_names.append(name)
                     if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and name.split("/")[0] in MODALITIES
                     else None)
        self.dims = {n: f[n].shape[1] for n in self.feature_names}
        self.extras = {n: f[n][:] for n in EXTRAS if n in f}  # not per row: zeroshot/text (C, D)
        self.dtypes = {n: str(f[n].dtype) for n in self.feature_names}
        for n in self.feature_names:
            if f[n].shape[0] != len(all_guids):
                raise ValueError(f"{n} has {f[n].shape[0]} rows for {len(all_guids)} guids")
        for name in ("done/text", "done/image"):
            if name not in f:
                raise KeyError(name)

    def __len__(self) -> int:
        return len(self.guids)

    @staticmethod
    def progress(path: str | Path, holder: dict | None = None) -> dict:
        """Rows done per modality of a cache, also while another process is writing it
        ({"rows", "text", "image", "skipped", "complete", "writer"}). Read without HDF5's file lock, so
        a number may lag the writer by a chunk; nothing here is used as features. ``holder``: the
        writer, when the caller has already asked ``lock_holder``."""
        path = Path(path)
        holder = holder or lock_holder(path)
        if partial_path(path).is_file() and (holder or not path.is_file()):  # the cache being written (an
            path = partial_path(path)  # --overwrite run writes beside the finished one)
        with _open(path, "r", locking=False) if holder else _open(path, "r") as f:
            skipped = f["skipped"][:]
            return {"rows": len(skipped), "skipped": int(skipped.sum()), "complete": _is_complete(f),
                    "writer": holder, **{m: int(f[f"done/{m}"][:].sum()) for m in MODALITIES}}

    def _check_name(self, name: str) -> None:
        if name not in self.feature_names:
            raise CacheError(f"{self.path} has no features {name!r}; it has {', '.join(self.feature_names)}")

    def features(self, name: str, torch: bool = False, dtype=np.float32):
        """The (N, D) features ``name`` (e.g. "text/cls") of the kept rows, as numpy or torch; read in
        blocks into one array (:func:`read_rows`): N x D values of ``dtype`` are all it holds."""
        self._check_name(name)
        with _open(self.path, "r") as f:
            x = read_rows(f[name], self._keep, dtype)
        if torch:
            import torch as _torch
            return _torch.from_numpy(x)
        return x

    def shared_path(self, name: str, folder: str | Path) -> Path:
        """Where :meth:`shared` keeps ``name``: in ``folder``, named by the cache's identity, file size and
        modification time and the vector (a cache re-extracted to the same path gets a new file)."""
        st = self.path.stat()
        key = f"{self.identity}|{st.st_size}|{st.st_mtime_ns}|{name}"
        return Path(folder) / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}-{name.replace('/', '-')}.npy"

    def shared(self, name: str, folder: str | Path) -> np.ndarray:
        """The features ``name`` of the kept rows as a read-only memory map of a float32 ``.npy`` copy in
        ``folder`` (:meth:`shared_path`), written on first use (block by block, to a temporary name renamed
        when whole: a reader never maps half a file) and reused after. Every process that maps it reads the
        same pages of the OS page cache: one copy in memory per machine, however many processes read it.
        The values are :meth:`features`' own."""
        self._check_name(name)
        path = self.shared_path(name, folder)
        x = self._mapped(path, name)
        if x is None:
            self._write_shared(name, path)
            x = self._mapped(path, name)
            if x is None:
                raise CacheError(f"{path}: the copy of {self.path}'s {name} features just written does not read back")
        return x

    def _mapped(self, path: Path, name: str) -> np.ndarray | None:
        """``path`` memory-mapped, or None when it is missing or not this cache's copy (wrong shape or dtype)."""
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        return x if x.dtype == np.float32 and x.shape == (len(self), self.dims[name]) else None

    def _write_shared(self, name: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (len(self), self.dims[name])}
        try:
            with open(tmp, "wb") as out, _open(self.path, "r") as f:
                np.lib.format.write_array_header_2_0(out, header)
                ds = f[name]
                for lo, hi, a, b in _row_blocks(ds, self._keep):
                    np.ascontiguousarray(_block(ds, self._keep, lo, hi, a, b), np.float32).tofile(out)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise write_failed(path, e, "Nothing else was written") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @property
    def labelled(self) -> bool:
        """Whether every kept row has a label (multi-label: an all-zero row is a label set, -1 is none)."""
        if self.multilabel and (self.labels.ndim != 2 or not self.labels.shape[1]):
            return False  # an unlabelled CSV read without label names: no label columns at all
        return bool(np.all(self.labels >= 0))

    def class_counts(self) -> dict[str, int]:
        """Rows per label name (multi-label: rows carrying it), plus 'unlabelled' if any."""
        if self.multilabel:
            labelled = self.labels[(self.labels >= 0).all(1)]
            counts = {n: int(c) for n, c in zip(self.label_names, labelled.sum(0))}
            return {**counts, **({"unlabelled": len(self.labels) - len(labelled)} if len(labelled) < len(self.labels) else {})}
        counts = {n: int(np.sum(self.labels == i)) for i, n in enumerate(self.label_names)}
        unlabelled = int(np.sum(self.labels < 0))
        if unlabelled:
            counts["unlabelled"] = unlabelled
        return counts
