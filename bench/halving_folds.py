"""Successive halving with folds as the resource, simulated exactly from a finished full grid.

    python bench/halving_folds.py GRID_FOLDER      # e.g. after: mmfuse grid features/mvsa-train.h5 --out GRID_FOLDER

A fold's model depends only on its configuration and the fold (the same training rows, seed and
early-stopping split), not on which other folds are run, so the full grid's out-of-fold
predictions give each configuration's score on any subset of folds. For each plan (folds per rung;
the best third of a rung goes on, its finished folds kept), prints the fits it would run against
the full grid's and the rank of its pick in the full grid, beside the top's one-standard-error bar.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from machine import cpu_line
from mmfuse.cache import FeatureCache
from mmfuse.grid import ranked, read_results, standard_error
from mmfuse.metrics import macro_f1

PLANS = ([1, 3, 5], [1, 2, 5], [1, 5], [2, 5])


def main(grid: str) -> int:
    g = Path(grid)
    info = json.loads((g / "grid.json").read_text())
    y, fold = FeatureCache(info["cache"]).labels, np.load(g / "folds.npy")
    k = int(fold.max()) + 1
    rows = ranked(read_results(g))
    per = {r["config_id"]: [macro_f1(y[fold == f], np.load(g / "oof" / f"{r['config_id']}.npy")[fold == f].argmax(1),
                                     len(info["label_names"])) for f in range(k)] for r in rows}
    rank = {r["config_id"]: i + 1 for i, r in enumerate(rows)}
    bar = rows[0]["macro_f1_mean"] - standard_error(rows[0], k)
    print(f"{g}: {len(rows)} configurations x {k} folds = {len(rows) * k} fits; top {rows[0]['macro_f1_mean']:.3f}, "
          f"one standard error below it {bar:.3f}; {cpu_line()}\n")
    print("| folds per rung | fits | x full | rank of the pick in the full grid | its CV macro-F1 |\n|---|---:|---:|---:|---:|")
    for plan in (p for p in PLANS if p[-1] == k):
        alive, fits, used = [r["config_id"] for r in rows], 0, 0
        for i, n in enumerate(plan):
            fits, used = fits + len(alive) * (n - used), n  # finished folds are kept, not refit
            alive.sort(key=lambda c: (-np.mean(per[c][:n]), rank[c]))
            if i < len(plan) - 1:
                alive = alive[:max(1, math.ceil(len(alive) / 3))]
        pick = alive[0]
        print(f"| {', '.join(map(str, plan))} | {fits} | {fits / (len(rows) * k):.2f} | {rank[pick]} | "
              f"{np.mean(per[pick]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
