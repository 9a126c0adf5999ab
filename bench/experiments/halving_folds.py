"""Successive halving over folds, simulated exactly from a finished full grid, in every fold order.

    python bench/experiments/halving_folds.py GRID_FOLDER      # e.g. after: mmfuse grid features/mvsa-train.h5 --search full --out GRID_FOLDER

A fold's model depends only on its configuration and the fold (the same training rows, seed and
early-stopping split), not on which other folds are run, so the full grid's out-of-fold
predictions give each configuration's score on any subset of folds. For each plan (folds per rung;
the best third of a rung goes on, its finished folds kept; `mmfuse grid --search halving` runs
halving_plan's), and for each of the k rotations of the fold order (the search starts at fold r, so
the one grid gives k draws of "which fold comes first"), prints the fits it would run against the
full grid's, and the rank in the full grid of its pick and whether the pick is within one standard
error of the top.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import cpu_line, parser
from mmfuse.cache import FeatureCache
from mmfuse.grid import HALVING_FACTOR, halving_plan, ranked, read_results, standard_error
from mmfuse.metrics import macro_f1

PLANS = ([1, 3, 5], [1, 2, 5], [1, 5], [2, 5])
FACTORS = (3, 4)  # keep the best 1/factor of a rung


def simulate(plan: list[int], order: list[int], per: dict, rank: dict, factor: int) -> tuple[str, int]:
    """(pick, fits) of halving with ``plan`` over the folds in ``order``."""
    alive, fits, used = sorted(per, key=rank.get), 0, 0
    for i, n in enumerate(plan):
        fits, used = fits + len(alive) * (n - used), n  # finished folds are kept, not refit
        alive.sort(key=lambda c: (-np.mean([per[c][f] for f in order[:n]]), rank[c]))
        if i < len(plan) - 1:
            alive = alive[:max(1, math.ceil(len(alive) / factor))]
    return alive[0], fits


def main(grid: str) -> int:
    g = Path(grid)
    info = json.loads((g / "grid.json").read_text())
    y, fold = FeatureCache(info["cache"]).labels, np.load(g / "folds.npy")
    k = int(fold.max()) + 1
    rows = ranked(read_results(g))
    per = {r["config_id"]: [macro_f1(y[fold == f], np.load(g / "oof" / f"{r['config_id']}.npy")[fold == f].argmax(1),
                                     len(info["label_names"])) for f in range(k)] for r in rows}
    rank = {r["config_id"]: i + 1 for i, r in enumerate(rows)}
    score = {r["config_id"]: r["macro_f1_mean"] for r in rows}
    bar = rows[0]["macro_f1_mean"] - standard_error(rows[0], k)
    shipped = halving_plan(k, len(rows))
    print(f"{g}: {len(rows)} configurations x {k} folds = {len(rows) * k} fits; top {rows[0]['macro_f1_mean']:.3f}, "
          f"one standard error below it {bar:.3f}; {cpu_line()}\n")
    print("| folds per rung | keep | fits | x full | rank of the pick in the full grid, fold order starting at "
          "0 .. k-1 | picks within one SE of the top | mean CV macro-F1 of the picks |\n|---|---|---:|---:|---|---:|---:|")
    for plan, factor in [(p, f) for p in [p for p in PLANS if p[-1] == k] or [shipped] for f in FACTORS]:
        picks = [simulate(plan, [(r + i) % k for i in range(k)], per, rank, factor) for r in range(k)]
        fits = picks[0][1]
        ours = plan == shipped and factor == HALVING_FACTOR
        print(f"| {', '.join(map(str, plan))}{' (shipped)' if ours else ''} | 1/{factor} | {fits} | "
              f"{fits / (len(rows) * k):.2f} | {' / '.join(str(rank[p]) for p, _ in picks)} | "
              f"{sum(score[p] >= bar for p, _ in picks)} of {k} | {np.mean([score[p] for p, _ in picks]):.3f} |")
    return 0


if __name__ == "__main__":
    ap = parser(__doc__)
    ap.add_argument("grid", help="the folder of a finished grid run with --search full")
    sys.exit(main(ap.parse_args().grid))
