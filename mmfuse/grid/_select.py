"""Selection: ranking a grid's configurations by their mean CV score, the standard error of that mean,
the one-standard-error rule, and the rows a pick, an ensemble or a report ranks."""
from __future__ import annotations

import math
from pathlib import Path

from ..heads import HeadConfig
from ..heads.registry import head_info
from ..safe import load_npy, read_json
from ..splits import fold_fingerprint
from ._spec import row_cell, task_metrics
from ._store import SplitState, _halving, read_results

# what best/ holds: the top configuration by mean CV macro-F1, or the simplest within one standard error
# of it; the top predicted held-out rows better (bench/experiments/refit.py), so it is the default. The summary marks
# the tied set either way.
PICKS = ("top", "one-se")


def primary(row: dict) -> str:
    """The metric a result row is ranked by: micro-F1 for a multi-label grid, else macro-F1."""
    return "micro_f1" if "micro_f1_mean" in row else "macro_f1"


def score(row: dict) -> float:
    """A result row's mean score over its splits, in the metric it is ranked by."""
    return row[f"{primary(row)}_mean"]


def ranked(rows: list[dict]) -> list[dict]:
    """Best CV macro-F1 first; ties broken by config id, so the order never depends on finishing order."""
    return sorted(rows, key=lambda r: (-score(r), r["config_id"]))


def standard_error(row: dict, folds: int) -> float:
    """Standard error of a row's mean fold score: its std (over the splits, ddof 0) / sqrt(k - 1). With
    repeated k-fold the std is over all R x k splits but the divisor stays k's: the repeats reuse the same
    rows, so they steady the mean without being R times the evidence (Nadeau and Bengio's corrected
    variance never falls below about std^2 / (k - 1) however many repeats)."""
    return row[f"{primary(row)}_std"] / math.sqrt(max(1, folds - 1))


def n_parameters(cfg: HeadConfig, text_dim: int, image_dim: int, n_classes: int) -> int:
    """Learned parameters of a configuration's head: the measure of "simpler" in the one-SE rule."""
    training = head_info(cfg.fusion).training
    if training == "none":  # zeroshot: nothing learned
        return 0
    if training == "closed-form":  # a linear model: one weight per feature and class
        return (text_dim + image_dim + 1) * n_classes
    from ..heads import create_head
    return sum(p.numel() for p in create_head(cfg.fusion, text_dim, image_dim, n_classes, cfg).parameters())


def one_se_pick(rows: list[dict], folds: int) -> tuple[dict, list[dict]]:
    """(pick, tied): the configurations whose mean CV macro-F1 is within one standard error of the top's
    are statistically tied with it; the pick is the simplest of them (fewest parameters; then rank).
    ``rows`` are ranked and carry "parameters"."""
    bar = score(rows[0]) - standard_error(rows[0], folds)
    tied = [r for r in rows if score(r) >= bar]
    return min(tied, key=lambda r: (r["parameters"], tied.index(r))), tied


def final_rows(out: Path, rows: list[dict] | None = None) -> list[dict]:
    """A grid folder's configurations scored on every split, best first: what a pick, an ensemble or a
    report ranks. (Successive halving's configurations that stopped early: :func:`stopped_rows`.)"""
    rows = ranked(read_results(out) if rows is None else rows)
    plan = _halving(out)
    for r in rows:
        r["rung"] = len(plan) - 1 if plan else 0
    return rows


def stopped_rows(out: Path) -> list[dict]:
    """The configurations of the folder's last successive-halving run that stopped before its last rung,
    each scored on the splits it ran (``splits``) at the rung it reached (``rung``, from 0; a run killed in
    its first rung: 0): the last rungs first, then by score."""
    out = Path(out)
    info = read_json(out / "grid.json") if (out / "grid.json").is_file() else {}
    plan = info.get("halving_splits")
    if not plan:
        return []
    names = task_metrics(bool(info.get("multilabel")))
    done = {r["config_id"] for r in read_results(out)}
    configs = read_json(out / "configs.json") if (out / "configs.json").is_file() else {}
    fold = load_npy(out / "folds.npy")
    fingerprint, rows = fold_fingerprint(fold), []
    for cid in info.get("halving_ids", []):
        if cid in done or cid not in configs:
            continue
        state = SplitState(out, cid, fold, names, fingerprint)
        if not state.done.any():
            continue
        row = state.row(row_cell(configs[cid]))
        row["splits"] = int(state.done.sum())
        row["rung"] = max([i for i, n in enumerate(plan) if n <= row["splits"]], default=0)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["rung"], -score(r), r["config_id"]))
