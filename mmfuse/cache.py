"""The HDF5 feature cache: one file per data set split.

Layout (N = rows of the split file, in file order, skipped rows included and flagged)::

    guid            (N,)    str
    label           (N,)    int64, -1 when unlabelled      [multi-label: (N, L) uint8 multi-hot]
    text/cls        (N, Dt) last layer's [CLS] vector
    text/mean       (N, Dt) attention-masked mean of the last layer
    image/pooled    (N, Di) pooled features before the classifier
    done/text       (N,)    bool, row's text features written
    done/image      (N,)    bool, row's image features written
    skipped         (N,)    bool, row left out (reason in skip_reason)
    skip_reason     (N,)    str
    attrs: format, version, label_names (JSON), multilabel, provenance (JSON), identity, complete

Rows are written in batches and their ``done`` flags set after the features, so an interrupted
extraction resumes where it stopped; ``complete`` is set only once every row is done or skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .errors import CacheError

FORMAT = "mmfuse-cache"
VERSION = 1
MODALITIES = ("text", "image")
_str = h5py.string_dtype()


def _open(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as e:
        raise CacheError(f"cannot open feature cache {path}: {e}. If an extraction was killed while "
                         "writing it, re-run it with --overwrite.") from None


class CacheWriter:
    """Creates or resumes a cache file; used by the extractor only."""

    def __init__(self, f: h5py.File, path: Path):
        self.f, self.path = f, path

    @classmethod
    def open(cls, path: str | Path, *, guids: list[str], labels: np.ndarray, label_names: tuple[str, ...],
             multilabel: bool, skipped: dict[int, str], dims: dict[str, int], store_dtype: str,
             provenance: dict, identity: str, overwrite: bool = False) -> "CacheWriter":
        """Resume ``path`` if it was started with the same identity, else create it.

        ``dims`` maps feature names ("text/cls", ...) to widths; ``skipped`` maps row -> reason for
        rows known to be unusable before extraction. A different configuration is refused unless
        ``overwrite``.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            f = _open(path, "r+")
            if f.attrs.get("format") != FORMAT or f.attrs.get("identity") != identity:
                old = json.loads(f.attrs.get("provenance", "{}"))
                f.close()
                raise CacheError(
                    f"{path} already holds features of another configuration or data set "
                    f"({_describe(old)}); pass --overwrite to replace it or choose another --out.")
            return cls(f, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        f = _open(tmp, "w")
        try:
            cls._create(f, guids, labels, label_names, multilabel, skipped, dims, store_dtype, provenance, identity)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        f.close()
        tmp.replace(path)  # the file appears under its name only with its full layout in place
        return cls(_open(path, "r+"), path)

    @staticmethod
    def _create(f, guids, labels, label_names, multilabel, skipped, dims, store_dtype, provenance, identity):
        n = len(guids)
        f.attrs.update(format=FORMAT, version=VERSION, label_names=json.dumps(list(label_names)),
                       multilabel=multilabel, provenance=json.dumps(provenance), identity=identity,
                       complete=False)
        f.create_dataset("guid", data=np.array(guids, dtype=object), dtype=_str)
        f.create_dataset("label", data=labels)
        for name, dim in dims.items():
            f.create_dataset(name, shape=(n, dim), dtype=store_dtype, chunks=(min(n, 256) or 1, dim))
        for m in MODALITIES:
            f.create_dataset(f"done/{m}", shape=(n,), dtype=bool)
        mask = np.zeros(n, bool)
        mask[list(skipped)] = True
        reasons = np.array([skipped.get(i, "") for i in range(n)], dtype=object)
        f.create_dataset("skipped", data=mask)
        f.create_dataset("skip_reason", data=reasons, dtype=_str)

    def pending(self, modality: str) -> np.ndarray:
        """Rows whose ``modality`` features are still to be computed, ascending."""
        todo = ~self.f[f"done/{modality}"][:] & ~self.f["skipped"][:]
        return np.flatnonzero(todo)

    def write(self, modality: str, rows: np.ndarray, features: dict[str, np.ndarray]) -> None:
        """Write one batch of rows (any order), then mark them done and flush."""
        order = np.argsort(rows)
        rows = np.asarray(rows)[order]  # h5py writes need increasing indices
        for name, values in features.items():
            self.f[name][rows] = np.asarray(values)[order]
        done = self.f[f"done/{modality}"]
        done[rows] = True
        self.f.flush()

    def skip(self, row: int, reason: str) -> None:
        self.f["skipped"][row] = True
        self.f["skip_reason"][row] = reason
        self.f.flush()

    def finish(self) -> bool:
        """Mark the cache complete if every row is done or skipped; returns whether it is."""
        skipped = self.f["skipped"][:]
        complete = all(bool(np.all(self.f[f"done/{m}"][:] | skipped)) for m in MODALITIES)
        self.f.attrs["complete"] = complete
        self.f.flush()
        return complete

    def close(self) -> None:
        self.f.close()


def _describe(prov: dict) -> str:
    t, i, d = prov.get("text", {}), prov.get("image", {}), prov.get("data", {})
    return (f"text {t.get('model')}, image {i.get('model')} ({i.get('weights')}), "
            f"data {d.get('root')} split {d.get('split')}")


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
            self.complete = bool(f.attrs["complete"])
            if not self.complete and not allow_incomplete:
                done = int(np.sum(f["done/text"][:] & f["done/image"][:] | f["skipped"][:]))
                raise CacheError(f"{self.path} is incomplete ({done}/{len(f['guid'])} rows): re-run the "
                                 "same extract command to resume it.")
            self.provenance: dict = json.loads(f.attrs["provenance"])
            self.identity: str = str(f.attrs["identity"])  # hash of what determines the features
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
        """Whether every kept row has a label (multi-label rows always do: all-zero is a label set)."""
        return self.multilabel or bool(np.all(self.labels >= 0))

    def class_counts(self) -> dict[str, int]:
        """Rows per label name (multi-label: rows carrying it), plus 'unlabelled' if any."""
        if self.multilabel:
            return {n: int(c) for n, c in zip(self.label_names, self.labels.sum(0))}
        counts = {n: int(np.sum(self.labels == i)) for i, n in enumerate(self.label_names)}
        unlabelled = int(np.sum(self.labels < 0))
        if unlabelled:
            counts["unlabelled"] = unlabelled
        return counts
