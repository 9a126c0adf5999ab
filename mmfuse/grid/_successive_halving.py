"""Successive halving over splits (scikit-learn's HalvingGridSearchCV with splits as the resource): every
configuration is fit and scored on the first split, the best third (by mean score over the splits run)
goes on to the first two, and so on until the survivors have all splits. A split's model does not depend
on which other splits run, so each rung's finished splits are kept for the next, and a configuration that
reaches the last rung has exactly the row and out-of-fold probabilities a full search gives it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..cache import FeatureCache
from ..errors import MmfuseError
from ..heads import HeadConfig
from ..splits import splits
from ._fit import Workers, _evaluate
from ._select import score
from ._spec import config_id
from ._store import _state, read_results

HALVING_FACTOR = 3  # keep the best third of a rung's configurations (bench/experiments/halving_folds.py)


def halving_plan(n_splits: int, n_configs: int, factor: int = HALVING_FACTOR) -> list[int]:
    """Splits per rung of successive halving over folds, the last being all ``n_splits``: each rung about
    half the next (5 folds: 1, 2, 5), at most as many rungs as keeping 1/factor takes n_configs to one."""
    plan = [n_splits]
    while plan[0] > 1 and len(plan) < 1 + math.ceil(math.log(max(n_configs, 2), factor)):
        plan.insert(0, max(1, plan[0] // 2))
    return plan


def _rung_score(out: Path, fc: FeatureCache, cfg: HeadConfig, fold: np.ndarray, n: int) -> float:
    """A configuration's mean score over the first ``n`` splits, what a halving rung ranks by; a configuration
    listed in results.csv without split files (a folder from before splits/ existed) by its row's score."""
    state = _state(out, fc, cfg, fold)
    if state.done[:n].all():
        return state.mean(n)
    row = next((r for r in read_results(out) if r["config_id"] == config_id(cfg)), None)
    if row is None:
        raise MmfuseError(f"{out}: configuration {config_id(cfg)} has neither its first {n} splits nor a row")
    return score(row)


def rungs(fc: FeatureCache, configs: list[HeadConfig], plan: list[int], out: Path, fold: np.ndarray,
          workers: Workers, progress: bool, log: Callable[[str], None]) -> int:
    """Run successive halving's rungs (``plan``: splits per rung), logging each; returns the fits run."""
    n_splits = len(splits(fold))
    fits, survivors, extra = 0, list(configs), []
    for r, n in enumerate(plan):
        log(f"rung {r + 1} of {len(plan)}: {len(survivors)} configurations x {n} of {n_splits} splits")
        fits += _evaluate(fc, survivors, n, out, fold, workers, progress, log, resuming=r == 0)
        extra.append(f"{len(survivors)} x {n}")
        if r < len(plan) - 1:
            survivors.sort(key=lambda c: (-_rung_score(out, fc, c, fold, n), config_id(c)))
            survivors = survivors[:max(1, math.ceil(len(survivors) / HALVING_FACTOR))]
    log(f"successive halving: configurations x splits per rung {' -> '.join(extra)}: {fits} fits "
        f"against {len(configs) * n_splits} for the full grid")
    return fits


def halving_note(plan: list[int], n_splits: int, n_rows: int, n_stopped: int) -> str:
    """The paragraph summary.md gives a successive-halving run, below its table."""
    return (f"\nSuccessive halving over splits: rungs of {', '.join(map(str, plan))} of "
            f"{n_splits} splits, keeping the best 1/{HALVING_FACTOR} of each rung; {n_rows} configuration(s) ran "
            f"every split and compete for `best/`; the {n_stopped} that stopped early are listed after them with "
            "the splits they ran (`splits`): their scores are over fewer splits, so noisier.\n")
