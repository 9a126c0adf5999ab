"""The HDF5 feature cache: one file per data set split.

Layout (N = rows of the split file, in file order, skipped rows included and flagged)::

    guid            (N,)    str
    label           (N,)    int64, -1 when unlabelled      [multi-label: (N, L) int8 multi-hot, -1 unlabelled]
    text/cls        (N, Dt) last layer's [CLS] vector
    text/mean       (N, Dt) attention-masked mean of the last layer
    image/pooled    (N, Di) pooled features before the classifier
    done/text       (N,)    bool, row's text features written
    done/image      (N,)    bool, row's image features written
    skipped         (N,)    bool, row left out (reason in skip_reason)
    skip_reason     (N,)    str, fixed length (REASON_BYTES of UTF-8)
    complete        (1,)    bool, every row done or skipped
    shard_rows      (N,)    int64, a shard only: each row's index in the whole data set
    attrs: format, version, label_names (JSON), multilabel, provenance (JSON), identity,
           feature_identity (JSON), data_fingerprint; a shard also ``shard`` (JSON: rank, world,
           how, rows of the whole, and the identity of the whole extraction)

Two identities: the *feature identity* (:func:`feature_identity`: everything that changes a feature
vector) must match between a head's training cache and any cache it scores; the cache ``identity``
adds the data fingerprint and the numerics of the run (device, optimisation), and must match to
resume a cache.

Features are buffered and written a whole chunk (``CHUNK_ROWS`` rows) at a time, then their ``done``
flags set, so each chunk is written about once (writing length-sorted batches into shared chunks
rewrote each chunk many times: 484 MiB written for 9.4 MiB of text features). An interrupted
extraction resumes from the last written chunk; ``complete`` is set only once every row is done or
skipped.

HDF5 is not crash-consistent: a process killed while the library updates the file's metadata (a
chunk index, a heap, an attribute) can leave a file that no longer opens. So after creation the
writer never changes metadata: every dataset's space is allocated when it is created (HDF5's
``H5D_ALLOC_TIME_EARLY``; features without writing fill values, so nothing is written twice), skip
reasons are fixed-length strings and completeness is a one-element dataset, not an attribute. A
write after creation only overwrites raw bytes in place; a kill in the middle of one leaves rows
whose ``done`` flag is still False, and the rerun computes them again (tests/faults/ kills
extraction at a dozen points, mid-write and mid-finish included). The file is created as
``{cache}.partial`` and renamed once its layout is in place.

One writer at a time: ``{cache}.lock`` (held while writing; the kernel releases it when
the writer dies) and ``{cache}.lock.owner`` (the holder's pid) guard the file.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import h5py
import numpy as np
from filelock import FileLock, Timeout

from .errors import CacheError, MmfuseError, write_failed

FORMAT = "mmfuse-cache"
VERSION = 3  # 3: space allocated at creation, fixed-length skip reasons, ``complete`` a dataset
REASON_BYTES = 512  # a skip reason longer than this is cut (at a character boundary)
MODALITIES = ("text", "image")
CHUNK_ROWS = 256  # rows per HDF5 chunk; also the unit of buffered writes
_str = h5py.string_dtype()


def _minor(version) -> str:
    return ".".join(str(version).split(".")[:2])


def feature_identity(provenance: dict) -> dict[str, str]:
    """The fields of a cache's provenance that determine its feature vectors, flat and comparable.

    Weights are compared by content (sha256) where known, not by path; library versions by
    major.minor. The data (rows, fingerprint) and the run's device are not part of it.
    """
    t, i, v = provenance.get("text", {}), provenance.get("image", {}), provenance.get("versions", {})

    def weights(w):
        if isinstance(w, dict):
            return str(w.get("sha256") or w.get("name") or w.get("file"))
        return str(w)

    return {
        "text weights": str(t.get("weights_sha256") or f"{t.get('model')}@{t.get('revision')}"),
        "text architecture": str(t.get("architecture")),
        "text max_length": str(t.get("max_length")),
        "text pooling": json.dumps(t.get("pooling"), sort_keys=True),
        "image model": str(i.get("model")),
        "image weights": weights(i.get("weights")),
        "image node": str(i.get("node")),
        "image preprocessing": json.dumps(i.get("preprocessing"), sort_keys=True),
        "precision": str(provenance.get("precision")),
        "store dtype": str(provenance.get("store_dtype", "float32")),
        **{f"{lib} version": _minor(v.get(lib)) for lib in ("torch", "torchvision", "transformers")},
    }


def feature_mismatch(a: dict, b: dict) -> list[str]:
    """'field: X vs Y' for each feature-identity field where provenances ``a`` and ``b`` differ."""
    fa, fb = feature_identity(a or {}), feature_identity(b or {})
    return [f"{k}: {fa[k]!r} vs {fb[k]!r}" for k in fa if fa[k] != fb[k]]


# --- one writer at a time --------------------------------------------------------------------------
def _owner_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock.owner")


def lock_holder(path: str | Path) -> dict | None:
    """The writer holding ``path``'s lock ({pid, host, started}), or None when nobody holds it.

    A lock of a killed process is released by the kernel, so it never blocks (nor shows here)."""
    path = Path(path)
    if not Path(str(path) + ".lock").exists():
        return None
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            return json.loads(_owner_path(path).read_text())
        except (OSError, ValueError):
            return {"pid": "unknown"}
    lock.release()
    return None


def _describe_holder(path: Path, holder: dict, what: str = "extraction") -> str:
    return (f"{path} is being written by another {what} (pid {holder.get('pid')} on "
            f"{holder.get('host', '?')}, since {holder.get('started', '?')})")


def acquire_writer_lock(path: Path, what: str = "extraction",
                        advice: str = "wait for it to finish or stop it; `mmfuse info` shows its progress") -> FileLock:
    """Take ``path``'s writer lock (``{path}.lock``, holder in ``{path}.lock.owner``) or raise CacheError
    naming the process that holds it. Waits up to 2 s, so that a reader's momentary probe
    (``lock_holder``) is not taken for a writer. Used for caches and for grid folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=2)
    except Timeout:
        holder = lock_holder(path) or {"pid": "unknown"}
        raise CacheError(_describe_holder(path, holder, what) + ": " + advice) from None
    _owner_path(path).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return lock


def _open(path: Path, mode: str, locked: bool = False, **kw) -> h5py.File:
    """Open an HDF5 file; an error names the extraction writing it, unless ``locked`` (we are that writer)."""
    try:
        return h5py.File(path, mode, **kw)
    except OSError as e:
        holder = None if locked else lock_holder(path)
        if holder is not None:
            raise CacheError(_describe_holder(path, holder) + ": wait for it to finish "
                             "(`mmfuse info` shows its progress)") from None
        raise CacheError(f"cannot open feature cache {path}: {e}. If an extraction was killed while "
                         "writing it, re-run it with --overwrite.") from None


_REASON = h5py.string_dtype("utf-8", REASON_BYTES)


def _reason(text: str) -> bytes:
    """A skip reason as at most REASON_BYTES of UTF-8, cut at a character boundary."""
    return text.encode()[:REASON_BYTES].decode(errors="ignore").encode()


def _early():
    """A dataset creation property list that allocates the dataset's whole space at creation, so that no
    later write changes the file's metadata (chunk index, free space)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _is_complete(f: h5py.File) -> bool:
    return bool(f["complete"][0]) if "complete" in f else bool(f.attrs.get("complete", False))  # version 2: attr


def release_writer_lock(path: Path, lock: FileLock) -> None:
    _owner_path(path).unlink(missing_ok=True)
    lock.release()


class CacheWriter:
    """Creates or resumes a cache file; used by the extractor only. Holds the writer lock while open."""

    def __init__(self, f: h5py.File, path: Path, lock: FileLock):
        self.f, self.path, self._lock = f, path, lock
        skipped = f["skipped"][:]
        # rows still to write per modality, and features computed but not yet written (row -> arrays)
        self._todo = {m: ~f[f"done/{m}"][:] & ~skipped for m in MODALITIES}
        self._buffer: dict[str, dict[int, dict[str, np.ndarray]]] = {m: {} for m in MODALITIES}

    @classmethod
    def open(cls, path: str | Path, *, guids: list[str], labels: np.ndarray, label_names: tuple[str, ...],
             multilabel: bool, skipped: dict[int, str], dims: dict[str, int], store_dtype: str,
             provenance: dict, identity: str, overwrite: bool = False, shard: dict | None = None) -> "CacheWriter":
        """Resume ``path`` if it was started with the same identity, else create it.

        ``dims`` maps feature names ("text/cls", ...) to widths; ``skipped`` maps row -> reason for
        rows known to be unusable before extraction. A different configuration is refused unless
        ``overwrite``; a cache another process is writing is refused in any case. ``shard``: this file
        holds one shard of a larger extraction (its "rows" in the whole, as an array, and JSON-able
        rank, world, how, total and whole identity).
        """
        path = Path(path)
        lock = acquire_writer_lock(path)
        try:
            if path.exists() and not overwrite:
                f = _open(path, "r+", locked=True)
                if f.attrs.get("format") != FORMAT or f.attrs.get("identity") != identity:
                    old = json.loads(f.attrs.get("provenance", "{}"))
                    f.close()
                    raise CacheError(
                        f"{path} already holds features of another configuration or data set "
                        f"({_describe(old)}); pass --overwrite to replace it or choose another --out.")
                return cls(f, path, lock)
            tmp = path.with_name(path.name + ".partial")
            f = _open(tmp, "w", locked=True)
            try:
                cls._create(f, guids, labels, label_names, multilabel, skipped, dims, store_dtype, provenance,
                            identity, shard)
            except BaseException as e:
                f.close()
                tmp.unlink(missing_ok=True)
                if isinstance(e, OSError):
                    raise write_failed(tmp, e, "Nothing was kept") from None
                raise
            f.close()
            tmp.replace(path)  # the file appears under its name only with its full layout in place
            return cls(_open(path, "r+", locked=True), path, lock)
        except BaseException:
            release_writer_lock(path, lock)
            raise

    @staticmethod
    def _create(f, guids, labels, label_names, multilabel, skipped, dims, store_dtype, provenance, identity,
                shard=None):
        n = len(guids)
        if shard is not None:
            f.attrs["shard"] = json.dumps({k: v for k, v in shard.items() if k != "rows"})
            f.create_dataset("shard_rows", data=np.asarray(shard["rows"], np.int64))
        f.attrs.update(format=FORMAT, version=VERSION, label_names=json.dumps(list(label_names)),
                       multilabel=multilabel, provenance=json.dumps(provenance), identity=identity,
                       feature_identity=json.dumps(feature_identity(provenance)),
                       data_fingerprint=str(provenance.get("data", {}).get("fingerprint", "")))
        f.create_dataset("guid", data=np.array(guids, dtype=object), dtype=_str)
        f.create_dataset("label", data=labels)
        for name, dim in dims.items():  # space allocated now, nothing written: the rows are written once
            f.create_dataset(name, shape=(n, dim), dtype=store_dtype, chunks=(min(n, CHUNK_ROWS) or 1, dim),
                             dcpl=_early(), fill_time="never")
        for m in MODALITIES:
            f.create_dataset(f"done/{m}", data=np.zeros(n, bool), dcpl=_early())
        mask = np.zeros(n, bool)
        mask[list(skipped)] = True
        f.create_dataset("skipped", data=mask, dcpl=_early())
        f.create_dataset("skip_reason", data=np.array([_reason(skipped.get(i, "")) for i in range(n)], dtype=_REASON),
                         dcpl=_early())
        f.create_dataset("complete", data=np.zeros(1, bool), dcpl=_early())

    def pending(self, modality: str) -> np.ndarray:
        """Rows whose ``modality`` features are still to be computed, ascending."""
        return np.flatnonzero(self._todo[modality] & ~np.isin(np.arange(len(self._todo[modality])),
                                                                list(self._buffer[modality])))

    def write(self, modality: str, rows: np.ndarray, features: dict[str, np.ndarray]) -> None:
        """Take one batch of rows (any order); write every chunk whose rows are all computed."""
        buf = self._buffer[modality]
        for j, row in enumerate(np.asarray(rows)):
            buf[int(row)] = {name: np.asarray(values)[j] for name, values in features.items()}
        self._write_chunks(modality)

    def _write_chunks(self, modality: str, everything: bool = False) -> None:
        """Write buffered rows chunk by chunk (only full chunks unless ``everything``), then mark them
        done and flush: a chunk is on disk and flagged before the next one starts."""
        buf, todo = self._buffer[modality], self._todo[modality]
        try:
            self._write_ready(buf, todo, modality, everything)
        except OSError as e:  # a full disk above all: what is flagged done is on disk and stays
            raise write_failed(self.path, e, "The rows written before are kept") from None

    def _write_ready(self, buf, todo, modality: str, everything: bool) -> None:
        for chunk in sorted({row // CHUNK_ROWS for row in buf}):
            lo, hi = chunk * CHUNK_ROWS, min(len(todo), (chunk + 1) * CHUNK_ROWS)
            need = lo + np.flatnonzero(todo[lo:hi])
            ready = np.array(sorted(r for r in buf if lo <= r < hi))  # increasing, as h5py needs
            if not everything and len(ready) < len(need):
                continue
            where = slice(int(ready[0]), int(ready[-1]) + 1) if ready[-1] - ready[0] + 1 == len(ready) else ready
            for name in buf[int(ready[0])]:
                self.f[name][where] = np.stack([buf[int(r)][name] for r in ready])  # one chunk write
            self.f[f"done/{modality}"][ready] = True
            self.f.flush()
            todo[ready] = False
            for r in ready:
                del buf[int(r)]

    def skip(self, row: int, reason: str) -> None:
        try:
            self.f["skip_reason"][row] = _reason(reason)
            self.f["skipped"][row] = True
            self.f.flush()
        except OSError as e:
            raise write_failed(self.path, e, "The rows written before are kept") from None
        for m in MODALITIES:
            self._todo[m][row] = False
            self._buffer[m].pop(row, None)

    def finish(self) -> bool:
        """Write what is buffered; mark the cache complete if every row is done or skipped."""
        for m in MODALITIES:
            self._write_chunks(m, everything=True)
        skipped = self.f["skipped"][:]
        complete = all(bool(np.all(self.f[f"done/{m}"][:] | skipped)) for m in MODALITIES)
        try:
            if "complete" in self.f:
                self.f["complete"][0] = complete  # raw bytes in place: a kill here leaves a valid, incomplete file
            else:
                self.f.attrs["complete"] = complete  # a version 2 cache, resumed
            self.f.flush()
        except OSError as e:
            raise write_failed(self.path, e, "Every row is written; only the complete flag is not") from None
        return complete

    def close(self) -> None:
        """Write the computed rows still buffered (so an interrupted run keeps them), close, unlock."""
        try:
            if self.f.id.valid:
                for m in MODALITIES:
                    self._write_chunks(m, everything=True)
        except MmfuseError:
            pass  # the write failed again (a full disk): the error that stopped the run is the one to show
        finally:
            try:
                self.f.close()
            finally:
                release_writer_lock(self.path, self._lock)


def _describe(prov: dict) -> str:
    t, i, d = prov.get("text", {}), prov.get("image", {}), prov.get("data", {})
    return (f"text {t.get('model')}, image {i.get('model')} ({i.get('weights')}), "
            f"data {d.get('root')} split {d.get('split')}")


def metadata_bytes(path: str | Path) -> bytes:
    """An HDF5 file's bytes with every dataset's raw data zeroed: what is left is its metadata (superblock,
    object headers, chunk indexes, heaps). Equal before and after a run of writes means the writes
    changed no metadata, so a kill during them could not have left the file unreadable."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    with h5py.File(path, "r") as f:
        extents = []
        f.visititems(lambda name, ds: extents.append(ds) if isinstance(ds, h5py.Dataset) else None)
        for ds in extents:
            if ds.chunks:
                for i in range(ds.id.get_num_chunks()):
                    info = ds.id.get_chunk_info(i)
                    data[info.byte_offset:info.byte_offset + info.size] = bytes(info.size)
            elif ds.id.get_offset() is not None:
                off = ds.id.get_offset()
                data[off:off + ds.id.get_storage_size()] = bytes(ds.id.get_storage_size())
    return bytes(data)


class FeatureCache:
    """Read API over a finished cache. Skipped rows are left out of everything but ``skipped``.

    >>> cache = FeatureCache("features/train.h5")
    >>> X = cache.features("text/cls")          # (N, D) float32 numpy
    >>> y = cache.labels                          # (N,) int, -1 unlabelled
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"feature cache not found: {self.path}")
        with _open(self.path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise CacheError(f"{self.path} is not an mmfuse feature cache")
            self.complete = _is_complete(f)
            if not self.complete and not allow_incomplete:
                done = int(np.sum(f["done/text"][:] & f["done/image"][:] | f["skipped"][:]))
                raise CacheError(f"{self.path} is incomplete ({done}/{len(f['guid'])} rows): re-run the "
                                 "same extract command to resume it.")
            self.provenance: dict = json.loads(f.attrs["provenance"])
            self.identity: str = str(f.attrs["identity"])  # features + data + run numerics: resume key
            self.feature_identity = feature_identity(self.provenance)  # what must match to compare features
            self.label_names: tuple[str, ...] = tuple(json.loads(f.attrs["label_names"]))
            self.multilabel = bool(f.attrs["multilabel"])
            all_guids = [g.decode() if isinstance(g, bytes) else g for g in f["guid"][:]]
            skipped = f["skipped"][:]
            reasons = [r.decode() if isinstance(r, bytes) else r for r in f["skip_reason"][:]]
            self._keep = np.flatnonzero(~skipped)
            self.guids: list[str] = [all_guids[i] for i in self._keep]
            self.labels: np.ndarray = f["label"][:][self._keep]
            self.skipped: list[tuple[str, str]] = [(all_guids[i], reasons[i]) for i in np.flatnonzero(skipped)]
            self.feature_names: list[str] = []
            f.visititems(lambda name, obj: self.feature_names.append(name)
                         if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and name.split("/")[0] in MODALITIES
                         else None)
            self.dims = {n: f[n].shape[1] for n in self.feature_names}
            self.dtypes = {n: str(f[n].dtype) for n in self.feature_names}

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
        with _open(path, "r", locking=False) if holder else _open(path, "r") as f:
            skipped = f["skipped"][:]
            return {"rows": len(skipped), "skipped": int(skipped.sum()), "complete": _is_complete(f),
                    "writer": holder, **{m: int(f[f"done/{m}"][:].sum()) for m in MODALITIES}}

    def features(self, name: str, torch: bool = False, dtype=np.float32):
        """The (N, D) features ``name`` (e.g. "text/cls") of the kept rows, as numpy or torch."""
        if name not in self.feature_names:
            raise CacheError(f"{self.path} has no features {name!r}; it has {', '.join(self.feature_names)}")
        with _open(self.path, "r") as f:
            x = f[name][:][self._keep].astype(dtype)
        if torch:
            import torch as _torch
            return _torch.from_numpy(x)
        return x

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


SHARDINGS = ("round-robin", "contiguous")  # how a data set's rows are dealt to the shards


def shard_rows(n: int, rank: int, world: int, how: str = "round-robin") -> np.ndarray:
    """The rows (ascending) of an n-row data set that shard ``rank`` of ``world`` extracts: every
    world-th row from ``rank`` (round-robin), or the rank-th of ``world`` near-equal contiguous runs."""
    if world < 1 or not 0 <= rank < world:
        raise MmfuseError(f"--shard {rank}/{world}: the rank must be 0..{world - 1} and the world at least 1")
    if how not in SHARDINGS:
        raise MmfuseError(f"unknown sharding {how!r}: choose {', '.join(SHARDINGS)}")
    if world > n:
        raise MmfuseError(f"--shard {rank}/{world}: {n} rows cannot give each of {world} shards a row; use fewer shards")
    if how == "round-robin":
        return np.arange(rank, n, world)
    bounds = np.linspace(0, n, world + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1])


def shard_path(out: str | Path, rank: int, world: int) -> Path:
    """``features/train.h5`` -> ``features/train.shard-0-of-2.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{rank}-of-{world}{out.suffix}")


def merge_shards(paths: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Merge the shards of one extraction into one cache in the data set's order, as one process would
    have written it (the identity of the whole, so ``extract`` sees it as finished).

    Refused, naming the file: a file that is not a shard, an incomplete shard, a shard of another
    extraction (models, weights, preprocessing, data or numerics differ), two shards of one rank, a
    missing rank, and rows covered twice or not at all."""
    if not paths:
        raise CacheError("no shards to merge")
    shards = []
    for p in map(Path, paths):
        cache = FeatureCache(p, allow_incomplete=True)
        with _open(p, "r") as f:
            if "shard" not in f.attrs:
                raise CacheError(f"{p} is not a shard (extracted without --shard): nothing to merge")
            spec = json.loads(f.attrs["shard"])
            rows = f["shard_rows"][:]
        if not cache.complete:
            raise CacheError(f"{p} (shard {spec['rank']} of {spec['world']}) is incomplete: re-run its "
                             f"extract command with --shard {spec['rank']}/{spec['world']} to finish it")
        shards.append((p, spec, rows, cache))
    p0, s0, _, c0 = shards[0]
    for p, spec, _, cache in shards[1:]:
        if spec["identity"] != s0["identity"] or spec["world"] != s0["world"]:
            diff = feature_mismatch(c0.provenance, cache.provenance) or [
                k for k in ("data", "numerics") if cache.provenance.get(k) != c0.provenance.get(k)] or ["world size"]
            raise CacheError(f"{p} is a shard of another extraction than {p0} (differs in: {', '.join(diff)}): "
                             "merge the shards of one extract command")
    world, n = s0["world"], s0["total"]
    by_rank: dict[int, Path] = {}
    for p, spec, _, _ in shards:
        if spec["rank"] in by_rank:
            raise CacheError(f"{p} and {by_rank[spec['rank']]} are both shard {spec['rank']} of {world}")
        by_rank[spec["rank"]] = p
    missing = sorted(set(range(world)) - set(by_rank))
    if missing:
        raise CacheError(f"shard(s) {', '.join(map(str, missing))} of {world} missing: expected "
                         + ", ".join(str(shard_path(Path(out), r, world)) for r in missing))
    covered = np.bincount(np.concatenate([rows for _, _, rows, _ in shards]), minlength=n)
    if covered.max() > 1 or covered.min() < 1:
        twice, never = np.flatnonzero(covered > 1), np.flatnonzero(covered == 0)
        raise CacheError(f"the shards do not cover the {n} rows exactly once ({len(twice)} covered twice, e.g. row "
                         f"{twice[:1].tolist()}; {len(never)} not at all): were they cut with different --sharding?")
    return _write_merged([(rows, cache) for _, _, rows, cache in shards], Path(out), s0, overwrite)


def _write_merged(shards, out: Path, spec: dict, overwrite: bool) -> Path:
    n = spec["total"]
    c0 = shards[0][1]
    guids, labels = [""] * n, None
    skipped: dict[int, str] = {}
    where = np.empty((n, 2), np.int64)  # row of the whole -> (shard, row in its file)
    for s, (rows, cache) in enumerate(shards):
        with _open(cache.path, "r") as f:
            all_guids = [g.decode() if isinstance(g, bytes) else g for g in f["guid"][:]]
            lab, skip = f["label"][:], f["skipped"][:]
            reasons = f["skip_reason"][:]
        if labels is None:
            labels = np.empty((n, *lab.shape[1:]), lab.dtype)
        labels[rows] = lab
        for local, row in enumerate(rows):
            guids[row] = all_guids[local]
            if skip[local]:
                skipped[int(row)] = reasons[local].decode("utf-8", "replace").rstrip("\0")
        where[rows, 0], where[rows, 1] = s, np.arange(len(rows))
    provenance = {**c0.provenance, "shards": {"world": spec["world"], "how": spec["how"]}}
    store_dtype = c0.dtypes["image/pooled"]
    writer = CacheWriter.open(out, guids=guids, labels=labels, label_names=c0.label_names, multilabel=c0.multilabel,
                              skipped=skipped, dims=c0.dims, store_dtype=store_dtype, provenance=provenance,
                              identity=spec["identity"], overwrite=overwrite)
    try:
        files = [_open(cache.path, "r") for _, cache in shards]
        try:
            block = 16 * CHUNK_ROWS  # rows of the whole read and written at a time: memory stays bounded
            for start in range(0, n, block):
                rows = np.arange(start, min(n, start + block))
                rows = rows[~np.isin(rows, list(skipped))]
                for m in MODALITIES:
                    feats = {name: np.empty((len(rows), c0.dims[name]), store_dtype) for name in c0.dims
                             if name.split("/")[0] == m}
                    for s, f in enumerate(files):
                        take = np.flatnonzero(where[rows, 0] == s)
                        for name in feats:
                            feats[name][take] = f[name][where[rows[take], 1]] if len(take) else 0
                    writer.write(m, rows, feats)
        finally:
            for f in files:
                f.close()
        if not writer.finish():
            raise CacheError(f"{out}: the merged cache is not complete (a bug: please report it)")
    finally:
        writer.close()
    return out
