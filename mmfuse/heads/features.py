"""What a head reads: :class:`FeatureSet` (features, labels and provenance from a cache), and the check
that features were extracted like a head's training features (:func:`check_compatible`), with their
labels mapped into the head's order (:func:`align_labels`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import FeatureCache, feature_mismatch
from ..errors import CacheError

IMAGE_FEATURE = "image/pooled"


@dataclass
class FeatureSet:
    """The in-memory features a head reads: text (N, Dt), image (N, Di), labels (N,) or None.

    Row-indexable like an array (``shape``, ``X[rows]``), so scikit-learn's splitters and
    ``cross_val_score`` / ``GridSearchCV`` can pass subsets of it to a :class:`Head`.
    """

    text: np.ndarray
    image: np.ndarray
    y: np.ndarray | None
    guids: list[str]
    label_names: tuple[str, ...]
    provenance: dict | None = None
    source: str = ""
    text_feature: str = ""  # which text vector ("cls" or "mean"; ``auto`` resolved)

    @classmethod
    def from_cache(cls, cache: FeatureCache | str | Path, text_feature: str = "auto") -> "FeatureSet":
        from ..extract.text import resolve_text_feature

        cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        if not len(cache):
            raise CacheError(f"{cache.path} has no usable rows (all {len(cache.skipped)} were skipped)")
        y = cache.labels if cache.labelled else None
        name = resolve_text_feature(text_feature, cache.provenance.get("text", {}))
        return cls(cache.features(f"text/{name}"), cache.features(IMAGE_FEATURE), y, list(cache.guids),
                   cache.label_names, cache.provenance, str(cache.path), name)

    def __len__(self) -> int:
        return len(self.guids)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.guids), self.text.shape[1] + self.image.shape[1]

    def __getitem__(self, rows) -> "FeatureSet":
        if isinstance(rows, tuple):  # scikit-learn indexes rows as X[rows, ...]
            rows = rows[0]
        idx = np.arange(len(self))[rows]
        return self.subset(np.atleast_1d(idx))

    def subset(self, idx: np.ndarray) -> "FeatureSet":
        return FeatureSet(self.text[idx], self.image[idx], None if self.y is None else self.y[idx],
                          [self.guids[i] for i in idx], self.label_names, self.provenance, self.source,
                          self.text_feature)


def _few(names, k: int = 6) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def check_compatible(provenance: dict | None, dims: dict, label_names, X: FeatureSet,
                     subset: bool = False) -> FeatureSet:
    """Raise CacheError naming the field where X's feature identity differs from the training cache's
    (models, weights, pooling, max length, preprocessing, precision, store dtype, library versions),
    or its dims or labels differ. Returns X with its labels in ``label_names``' order; with ``subset``, a
    cache naming only some of them (a test split without a rare label) is mapped by name."""
    problems = feature_mismatch(provenance or {}, X.provenance or {})
    x_dims = {"text": X.text.shape[1], "image": X.image.shape[1]}
    if x_dims != dims:
        problems.append(f"feature dims: {dims} vs {x_dims}")
    names, own = tuple(label_names), tuple(X.label_names)
    unknown, missing = [x for x in own if x not in names], [x for x in names if x not in own]
    bad_labels = bool(own) and own != names and bool(unknown or not subset)  # an unlabelled CSV may name none
    if bad_labels:
        detail = ([f"{_few(unknown)} unknown to the head"] if unknown else []) + \
                 ([f"{_few(missing)} missing from the cache"] if missing and not subset else [])
        problems.insert(0, "labels: " + (", ".join(detail) or "the same names in another order"))
    if problems:
        fix = f" and --label-names {','.join(names)} (the training set's label names)" if bad_labels else ""
        raise CacheError(f"{X.source} was not extracted like the head's training features (head vs cache: "
                         + "; ".join(problems[:3]) + f"): extract it with the same options{fix}")
    return align_labels(X, names) if own else X


def align_labels(X: FeatureSet, label_names) -> FeatureSet:
    """X with its labels mapped by name into ``label_names``' order: a label the cache lacks is an
    all-negative column (multi-label), a class no row has (single-label); unlabelled rows stay -1."""
    names = tuple(label_names)
    if tuple(X.label_names) == names or not X.label_names:
        return X
    idx, y = np.array([names.index(x) for x in X.label_names]), X.y
    if y is not None and y.ndim == 2:
        y = np.zeros((len(X.y), len(names)), X.y.dtype)  # (N, L_head)
        y[:, idx] = X.y
        y[(X.y < 0).any(1)] = -1
    elif y is not None:
        y = np.where(y >= 0, idx[np.maximum(y, 0)], y)
    return dataclasses.replace(X, y=y, label_names=names)
