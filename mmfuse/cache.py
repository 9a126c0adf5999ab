"""The HDF5 feature cache: one file per data set split.

Layout (N = rows of the split file, in file order, skipped rows included and flagged)::

    guid            (N,)    str
    label           (N,)    int64, -1 when unlabelled      [multi-label: (N, L) int8 multi-hot, -1 unlabelled]
    text/cls        (N, Dt) last layer's [CLS] vector
    text/mean       (N, Dt) attention-masked mean of the last layer
    image/pooled    (N, Di) pooled features before the classifier
    text/..., image/...     further vectors where the backbone has them (text/pooled, text/proj,
                    image/cls, image/mean, image/proj; provenance's text/image "pooling" says what each is)
    zeroshot/text   (C, Dp) the class prompts' projected text embeddings (extract --class-prompts)
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

Writes: a whole chunk (``CHUNK_ROWS`` rows) at a time, then its ``done`` flags, so a chunk is written
about once and a rerun resumes from the last written chunk. After creation the writer never changes
HDF5 metadata (space allocated early, fixed-length skip reasons, ``complete`` a dataset), so a kill at
any moment leaves a file that opens. A cache is written as ``{cache}.partial`` (laid out as
``{cache}.creating``) and takes its own name only once complete; ``{cache}.lock`` is its one writer's.
docs/extraction.md says why and what each choice cost.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .errors import CacheError, MmfuseError, write_failed
from .identity import describe as _describe, feature_identity, feature_mismatch  # noqa: F401 (feature_mismatch: re-exported)
from .outputs import LockedError, TargetLock, describe_holder, lock_holder  # noqa: F401 (re-exported)
# the read side and what both sides share live in cache_read; importable from here as before
from .cache_read import (EXTRAS, FORMAT, MODALITIES, READ_ROWS, FeatureCache, _final, _is_complete,  # noqa: F401
                         _open, partial_path, read_rows)

VERSION = 3  # 3: space allocated at creation, fixed-length skip reasons, ``complete`` a dataset
REASON_BYTES = 512  # a skip reason longer than this is cut (at a character boundary)
CHUNK_ROWS = 256  # rows per HDF5 chunk; also the unit of buffered writes
_str = h5py.string_dtype()


# --- one writer at a time --------------------------------------------------------------------------
def acquire_writer_lock(path: Path, what: str = "extraction",
                        advice: str = "wait for it to finish or stop it; `mmfuse info` shows its progress") -> TargetLock:
    """Take ``path``'s writer lock (``{path}.lock``) or raise CacheError naming the process that holds it.
    Used for caches and for grid folders."""
    try:
        return TargetLock(path, what).acquire(advice)
    except LockedError as e:
        raise CacheError(str(e)) from None


def release_writer_lock(path: Path, lock: TargetLock) -> None:
    lock.release()


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


class CacheWriter:
    """Creates or resumes a cache file; used by the extractor only. Holds the writer lock while open.

    A new cache is written at ``{cache}.partial`` and renamed to ``{cache}`` only when complete, so an
    existing cache (``overwrite``) stays until its replacement is whole, and a cache under its own name
    is a finished one (caches that earlier mmfuse versions left unfinished under their own name resume in
    place)."""

    def __init__(self, f: h5py.File, path: Path, lock: TargetLock, final: Path | None = None):
        self.f, self.path, self._lock, self.final = f, path, lock, final or path
        self.complete = False
        skipped = f["skipped"][:]
        # rows still to write per modality, and features computed but not yet written (row -> arrays)
        self._todo = {m: ~f[f"done/{m}"][:] & ~skipped for m in MODALITIES}
        self._buffer: dict[str, dict[int, dict[str, np.ndarray]]] = {m: {} for m in MODALITIES}

    @staticmethod
    def _held(path: Path, identity: str) -> tuple[bool, str]:
        """(whether the file at ``path`` is an mmfuse cache of ``identity``, what it holds, for messages)."""
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    return False, "a file that is not an mmfuse cache"
                old = json.loads(f.attrs.get("provenance", "{}"))
                return f.attrs.get("identity") == identity, f"features of another configuration or data set ({_describe(old)})"
        except (OSError, ValueError) as e:
            return False, f"a file that cannot be opened ({str(e).splitlines()[0][:120]})"

    @classmethod
    def open(cls, path: str | Path, *, guids: list[str], labels: np.ndarray, label_names: tuple[str, ...],
             multilabel: bool, skipped: dict[int, str], dims: dict[str, int], store_dtype: str,
             provenance: dict, identity: str, overwrite: bool = False, shard: dict | None = None,
             extras: dict[str, np.ndarray] | None = None) -> "CacheWriter":
        """Resume ``path`` (or its ``.partial``) if it was started with the same identity, else create it.

        ``dims`` maps feature names ("text/cls", ...) to widths; ``skipped`` maps row -> reason for
        rows known to be unusable before extraction. Anything else at ``path`` is refused unless
        ``overwrite`` (and then kept until the new cache is complete); a cache another process is
        writing is refused in any case. ``shard``: this file holds one shard of a larger extraction (its
        "rows" in the whole, as an array, and JSON-able rank, world, how, total and whole identity).
        ``extras``: datasets that are not per row (``zeroshot/text``), written with the layout.
        """
        path = Path(path)
        partial, creating = partial_path(path), path.with_name(path.name + ".creating")
        lock = acquire_writer_lock(path)
        try:
            creating.unlink(missing_ok=True)  # a kill while creating the layout left it; we hold the lock
            unfinished = cls._held(partial, identity) if partial.exists() else None  # (same identity, what it holds)
            if unfinished and unfinished[0]:  # this very extraction, interrupted (with or without --overwrite): resume
                return cls(_open(partial, "r+", locked=True), partial, lock, path)
            if os.path.lexists(path) and not overwrite:
                same, held = cls._held(path, identity)
                if same:  # finished (nothing to do), or a version 3 cache resumed in place
                    return cls(_open(path, "r+", locked=True), path, lock)
                raise CacheError(f"{path} already holds {held}; pass --overwrite to replace it (it is kept until "
                                 "the new cache is complete) or choose another --out.")
            if os.path.lexists(path) and (path.is_dir() or path.is_symlink()):
                raise CacheError(f"{path} is a folder or a link, not a cache: it is never replaced; choose another --out")
            if unfinished and not overwrite:
                raise CacheError(f"{partial} holds the unfinished extraction of {unfinished[1]}: re-run that command to "
                                 "finish it, or pass --overwrite to start this one in its place.")
            f = _open(creating, "w", locked=True)
            try:
                cls._create(f, guids, labels, label_names, multilabel, skipped, dims, store_dtype, provenance,
                            identity, shard)
                for name, value in (extras or {}).items():
                    f.create_dataset(name, data=value)
            except BaseException as e:
                f.close()
                creating.unlink(missing_ok=True)
                if isinstance(e, OSError):
                    raise write_failed(creating, e, "Nothing was kept") from None
                raise
            f.close()
            creating.replace(partial)  # the partial file appears only with its full layout in place
            return cls(_open(partial, "r+", locked=True), partial, lock, path)
        except BaseException:
            lock.release()
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

    def _where(self) -> str:
        return "" if self.path == self.final else f" (in {self.path.name})"

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
            raise write_failed(self.final, e, "The rows written before are kept" + self._where()) from None

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
            raise write_failed(self.final, e, "The rows written before are kept" + self._where()) from None
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
            raise write_failed(self.final, e, "Every row is written" + self._where() + "; only the complete flag "
                               "is not") from None
        self.complete = complete
        return complete

    def close(self) -> None:
        """Write the computed rows still buffered (so an interrupted run keeps them), close, and, when
        the cache is complete, rename it to its own name (replacing the old one); then unlock."""
        try:
            if self.f.id.valid:
                for m in MODALITIES:
                    self._write_chunks(m, everything=True)
        except MmfuseError:
            pass  # the write failed again (a full disk): the error that stopped the run is the one to show
        finally:
            try:
                self.f.close()
                if self.complete and self.path != self.final:
                    os.replace(self.path, self.final)  # the finished cache appears whole, or not at all
                    self.path = self.final
            finally:
                self._lock.release()


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
