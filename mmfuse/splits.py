"""Splits of labelled rows, in one place: the stratified validation split a head early-stops on, the
stratified k-fold folds a grid scores by, and iterative stratification, what both use for multi-label rows.

Single-label rows are stratified by class (scikit-learn's ``train_test_split`` and ``StratifiedKFold``).
Multi-label rows keep every label's share by iterative stratification (Sechidis, Tsoumakas and Vlahavas,
"On the stratification of multi-label data", ECML PKDD 2011): repeatedly take the label with the fewest
rows still to place, and give each of its rows to the part that most wants that label (then the part that
most wants rows; then at random, from ``seed``). Rows with no label left are spread over the parts that
want rows.

A ground floor: nothing here imports another part of mmfuse but its errors.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .errors import MmfuseError


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with ``fraction`` of each class in val; multi-label ``y`` (N, L): of each
    label's positives, by iterative stratification."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise MmfuseError(f"--val-split must be between 0 and 1, not {fraction}")
    if y.ndim == 2:
        if len(y) < 4:
            raise MmfuseError(f"{len(y)} rows are too few for a validation split: pass --val")
        part = iterative_stratification(y, [1 - fraction, fraction], seed)
        return np.flatnonzero(part == 0), np.flatnonzero(part == 1)
    counts = np.bincount(y)
    n_classes, n_val = int((counts > 0).sum()), int(np.ceil(fraction * len(y)))
    if counts[counts > 0].min() < 2:
        raise MmfuseError("a class has fewer than 2 rows: cannot make a stratified validation split")
    if n_val < n_classes or len(y) - n_val < n_classes:
        raise MmfuseError(f"{len(y)} rows are too few for a stratified {fraction:g} validation split of "
                          f"{n_classes} classes: pass --val or a larger --val-split")
    return train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)


def make_folds(y: np.ndarray, k: int, seed: int, repeats: int = 1) -> np.ndarray:
    """Fold index (0..k-1) of each row, stratified by label (multi-label (N, L): iterative stratification).
    ``repeats`` > 1: repeated stratified k-fold, an (repeats, N) array, one reshuffled k-fold split per row
    (repeat r seeded ``seed + r``)."""
    if repeats < 1:
        raise MmfuseError(f"--repeats must be at least 1, not {repeats}")
    if repeats > 1:
        return np.stack([make_folds(y, k, seed + r) for r in range(repeats)])  # (R, N)
    from sklearn.model_selection import StratifiedKFold

    if k < 2:
        raise MmfuseError(f"--folds must be at least 2, not {k}")
    if y.ndim == 2:
        if len(y) < 2 * k:
            raise MmfuseError(f"{len(y)} rows are too few for --folds {k}")
        return iterative_stratification(y, np.ones(k), seed)
    counts = np.bincount(y)
    if counts[counts > 0].min() < k:
        raise MmfuseError(f"a class has {counts[counts > 0].min()} rows, fewer than --folds {k}")
    fold = np.empty(len(y), np.int64)
    for i, (_, te) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y)):
        fold[te] = i
    return fold


def splits(fold: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of every split: k of them for an (N,) fold array, R x k for the (R, N)
    array of repeated k-fold (repeat by repeat)."""
    return [(np.flatnonzero(f != k), np.flatnonzero(f == k)) for f in np.atleast_2d(fold) for k in range(int(f.max()) + 1)]


def fold_fingerprint(fold: np.ndarray) -> str:
    """A short hash of the fold assignment, stored with every finished split so a split file is never read
    against other folds (a grid.json deleted and the folder reused with another seed, say)."""
    return hashlib.sha1(np.ascontiguousarray(fold, np.int64).tobytes()).hexdigest()[:16]


def iterative_stratification(y: np.ndarray, ratios, seed: int = 0) -> np.ndarray:
    """Part index of each row of a multi-hot ``y`` (N, L), the parts sized by ``ratios`` and each label's
    positives shared in those ratios as closely as the rows allow."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y) > 0
    n = len(y)
    ratios = np.asarray(ratios, float) / np.sum(ratios)
    want_rows = ratios * n  # (K,)
    want = np.outer(ratios, y.sum(0))  # (K, L)
    part = np.full(n, -1)
    left = np.ones(n, bool)
    order = rng.permutation(n)

    def pick(scores: list[np.ndarray]) -> int:
        cand = np.arange(len(ratios))
        for s in scores:  # lexicographic: keep the parts with the top score, then the next criterion
            cand = cand[s[cand] == s[cand].max()]
        return int(rng.choice(cand))

    while left.any():
        remaining = y[left].sum(0)
        if not remaining.any():  # rows without any label still to place
            for i in order[left[order]]:
                k = pick([want_rows])
                part[i], want_rows[k], left[i] = k, want_rows[k] - 1, False
            break
        counts = np.where(remaining > 0, remaining, np.iinfo(np.int64).max)
        label = int(rng.choice(np.flatnonzero(counts == counts.min())))
        for i in order[left[order] & y[order, label]]:
            k = pick([want[:, label], want_rows])
            part[i], left[i] = k, False
            want[k] -= y[i]
            want_rows[k] -= 1
    return part
