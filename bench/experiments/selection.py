"""Nested cross-validation on mvsa: how the grid's choices score on rows no choice saw.

    python bench/experiments/selection.py [--cache features/mvsa-train.h5] [--data ../shared/datasets/mvsa]
                              [--outer 5] [--search full] [--jobs -1] [--axis dropout=0,0.2,0.5]

The mvsa training cache is split into ``--outer`` stratified folds. Inside each outer training part
runs what a user runs: ``mmfuse grid`` with its defaults (4 fusions x 3 lr, 20
epochs, 5 inner folds, ``--search``; ``--axis`` adds axes), then its recommendations: ``best/`` (the top configuration's
fold models), the mean-of-probabilities ensemble of the configurations tied with the top, and
``mmfuse ensemble``'s default (top 8). Beside them, fit on the same outer training part: the
default head (concat, HeadConfig's defaults, early-stopped on a stratified 15% as in the grid's folds;
``train-head`` itself holds out 20%), logistic
regression with ``--C auto`` on [text mean; image], and the text-only head. Every model predicts
the outer held-out fold; printed: macro-F1 mean ± std over the outer folds, its standard error,
the paired per-fold difference to tuned logistic regression, and the grid's optimism (inner CV
score of its pick minus the pick's outer score). Skips (exit 0) without cache and data.
"""
from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_axis, add_cache, add_data, cpu_line, ensure_cache, grid_axes, parser, subset_cache
from mmfuse.cache import FeatureCache
from mmfuse.grid import VAL_FRACTION, expand_grid, fast_precision, final_rows, refit, run_grid
from mmfuse.heads import FeatureSet, Head, HeadConfig
from mmfuse.heads.run import stratified_split
from mmfuse.metrics import macro_f1
from mmfuse.runs import load_run

quiet = dict(log=lambda s: None)


def fit_single(cfg: HeadConfig, train: Path) -> Head:
    """A single head with its defaults, early-stopped on a stratified 15% of the training rows (the grid's
    VAL_FRACTION; ``mmfuse train-head`` holds out 20%)."""
    data = FeatureSet.from_cache(FeatureCache(train), cfg.text_feature)
    if cfg.fusion == "logreg":
        return Head(cfg).fit(data)
    fit, val = stratified_split(data.y, VAL_FRACTION, cfg.seed)
    return Head(cfg).fit(data.subset(fit), val=data.subset(val))


def member_proba(train: Path, row: dict, folder: Path, fold: np.ndarray, test: Path) -> np.ndarray:
    """A grid configuration saved as ``best/`` and ensemble members are (its fold models, refit exactly as CV
    fit them), predicting the outer held-out rows."""
    return load_run(refit(train, row, folder, fold)).predict_cache(test)[1]


def main() -> int:
    ap = parser(__doc__)
    add_cache(ap)
    add_data(ap)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--search", default="full")
    ap.add_argument("--jobs", type=int, default=-1)
    add_axis(ap)
    args = ap.parse_args()
    cache = ensure_cache(args.cache, args.data)
    if cache is None:
        return 0
    src = FeatureCache(cache)
    precision, reason = fast_precision()
    configs = expand_grid({**grid_axes(args.axis), "epochs": [20], "precision": [precision]})
    singles = {"default head (concat)": HeadConfig(),
               "logistic regression, C auto": HeadConfig(fusion="logreg", C="auto"),
               "text-only head": HeadConfig(fusion="text")}
    scores: dict[str, list[float]] = {}
    optimism, tied_sizes, t0 = [], [], time.perf_counter()
    outer = StratifiedKFold(args.outer, shuffle=True, random_state=0).split(src.labels, src.labels)
    for o, (train, test) in enumerate(outer):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            train_cache = subset_cache(src, train, tmp / "train.h5", f"outer-train{o}")
            test_cache = subset_cache(src, test, tmp / "test.h5", f"outer-test{o}")

            y = src.labels[test]

            def f1(proba: np.ndarray) -> float:
                return macro_f1(y, proba.argmax(1), len(src.label_names))

            grid = run_grid(train_cache, configs, tmp / "g", folds=5, jobs=args.jobs, search=args.search,
                            refit_best=False, progress=False, **quiet)
            # best/ (the top, the default --pick) and the members of both ensembles, each its fold models;
            # the mean-of-probabilities ensembles average them as `mmfuse ensemble --meta mean` does
            rows, fold = final_rows(tmp / "g"), np.load(tmp / "g" / "folds.npy")
            n = max(len(grid.tied), 8)
            with ProcessPoolExecutor(max(1, args.jobs if args.jobs > 0 else 2), mp_context=get_context("spawn")) as pool:
                proba = list(pool.map(member_proba, [train_cache] * n, rows[:n],
                                      [tmp / "m" / r["config_id"] for r in rows[:n]], [fold] * n, [test_cache] * n))
            assert rows[0]["config_id"] == grid.pick["config_id"]
            pick = f1(proba[0])
            scores.setdefault("grid pick (best/)", []).append(pick)
            optimism.append(grid.pick["macro_f1_mean"] - pick)
            tied_sizes.append(len(grid.tied))
            scores.setdefault("mean of the tied configurations", []).append(f1(np.mean(proba[:len(grid.tied)], 0)))
            scores.setdefault("mean of the top 8 (mmfuse ensemble's default)", []).append(f1(np.mean(proba[:8], 0)))
            for name, cfg in singles.items():
                scores.setdefault(name, []).append(f1(fit_single(cfg, train_cache).predict_cache(test_cache)[1]))
        print(f"outer fold {o}: pick {grid.pick['fusion']} lr {grid.pick['lr']:g} dropout {grid.pick['dropout']:g} wd {grid.pick['weight_decay']:g} "
              f"(inner CV {grid.pick['macro_f1_mean']:.3f}), {len(grid.tied)} tied; "
              + ", ".join(f"{k.split(' (')[0]} {v[-1]:.3f}" for k, v in scores.items()), flush=True)
    print(f"\n{cpu_line()}; grid precision {precision} ({reason}); {len(src)} rows, {args.outer} outer folds, "
          f"default grid{''.join(' + ' + a for a in args.axis)} ({len(configs)} configurations, 5 inner folds, "
          f"--search {args.search}); "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    base = np.array(scores["logistic regression, C auto"])
    print("| model | outer macro-F1 (mean ± std) | ± SE | per outer fold | vs tuned logreg, paired | folds ahead |")
    print("|---|---:|---:|---|---:|---:|")
    for name, v in scores.items():
        v = np.array(v)
        d = v - base
        print(f"| {name} | {v.mean():.3f} ± {v.std():.3f} | {v.std(ddof=1) / np.sqrt(len(v)):.3f} | "
              f"{' / '.join(f'{x:.3f}' for x in v)} | {d.mean():+.3f} ± {d.std():.3f} | {(d > 0).sum()} of {len(v)} |")
    print(f"\noptimism of the grid's pick (inner CV macro-F1 - outer): {np.mean(optimism):+.3f} ± {np.std(optimism):.3f}; "
          f"configurations tied with the top per outer fold: {tied_sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
