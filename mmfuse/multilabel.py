"""Multi-label decisions and splits: thresholds on per-label probabilities, and iterative stratification.

A multi-label head outputs one probability per label (a sigmoid). Which labels a row gets is a
decision rule on top: one global threshold tuned on validation rows for micro-F1 (the default), or a
threshold per label tuned for that label's F1 where it has enough validation positives, or 0.5;
and, with ``min_labels=1``, the top label for a row where nothing passes.

Splits and folds keep every label's share, as stratified k-fold does for one label: iterative
stratification (Sechidis, Tsoumakas and Vlahavas, "On the stratification of multi-label data",
ECML PKDD 2011): repeatedly take the label with the fewest rows still to place, and give each of
its rows to the part that most wants that label (then the part that most wants rows; then at
random, from ``seed``). Rows with no label left are spread over the parts that want rows.
"""
from __future__ import annotations

import numpy as np

from .splits import iterative_stratification  # noqa: F401 - its home is mmfuse.splits

THRESHOLDS = ("global", "per-label", "fixed")
GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)  # candidate thresholds
MIN_POSITIVES = 5  # validation positives a label needs for a threshold of its own


def decide(proba: np.ndarray, thresholds, min_labels: int = 1) -> np.ndarray:
    """(N, L) 0/1 predictions: proba > threshold (a scalar or one per label); with ``min_labels=1``
    a row where nothing passes gets its most probable label. ``thresholds=None`` (a single-label run):
    the class indices, argmax."""
    if thresholds is None:
        return proba.argmax(1)
    pred = (proba > np.asarray(thresholds)).astype(np.int8)
    if min_labels and len(pred):
        empty = pred.sum(1) == 0
        pred[np.flatnonzero(empty), proba[empty].argmax(1)] = 1
    return pred


def tune_thresholds(y: np.ndarray, proba: np.ndarray, mode: str = "global", min_labels: int = 1) -> np.ndarray:
    """One threshold per label from validation rows ``y`` (N, L) and their probabilities.

    ``fixed``: 0.5. ``global``: the candidate (GRID and the probabilities' percentiles) with the best
    micro-F1 (ties: the one nearest 0.5). ``per-label``: for a label with at least MIN_POSITIVES positives, the value with its best
    F1; for the others, the global one."""
    from sklearn.metrics import f1_score  # scikit-learn on first use: extraction never needs it
    L = y.shape[1]
    if mode not in THRESHOLDS:
        raise ValueError(f"thresholds must be one of {', '.join(THRESHOLDS)}, not {mode!r}")
    if mode == "fixed" or not len(y):
        return np.full(L, 0.5)
    grid = candidates(proba)
    near_half = np.argsort(np.abs(grid - 0.5), kind="stable")
    micro = [f1_score(y, decide(proba, grid[i], min_labels), average="micro", zero_division=0) for i in near_half]
    best = float(grid[near_half[int(np.argmax(micro))]])
    out = np.full(L, best)
    if mode == "per-label":
        for label in np.flatnonzero(y.sum(0) >= MIN_POSITIVES):
            g = candidates(proba[:, label])
            order = np.argsort(np.abs(g - 0.5), kind="stable")
            f1 = [f1_score(y[:, label], proba[:, label] > g[i], zero_division=0) for i in order]
            out[label] = g[order[int(np.argmax(f1))]]
    return out


def candidates(proba: np.ndarray) -> np.ndarray:
    """Thresholds to try: GRID, plus the 2nd..98th percentiles of the probabilities themselves (so
    probabilities packed in a narrow band, as a linear member's or a stack's can be, are still split)."""
    return np.unique(np.concatenate([GRID, np.round(np.percentile(proba, np.arange(2, 99, 2)), 6)]))
