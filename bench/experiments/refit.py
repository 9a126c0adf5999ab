"""What a grid should ship: its k fold models averaged (``--refit folds``) or one refit on all rows
with the fold fits' schedule in steps (``--refit full``), scored on rows the grid never saw.

    python bench/experiments/refit.py [--cache features/mvsa-train.h5] [--data ../shared/datasets/mvsa] [--repeats 3]

For each repeat, a stratified 20% of the mvsa training cache is held out; a grid (concat, weighted,
late, logreg; lr 3e-4, 1e-3; mean text vector; 5 folds) runs on the other 80%; then the best
configuration and a top-4 stacking ensemble are saved both ways and scored on the held-out rows.
Prints one markdown table with the CPU. Skips (exit 0) when neither cache nor data exists.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_cache, add_data, cpu_line, ensure_cache, parser, subset_cache
from mmfuse.cache import FeatureCache
from mmfuse.ensemble import build_ensemble
from mmfuse.grid import expand_grid, run_grid
from mmfuse.metrics import macro_f1
from mmfuse.runs import load_run


def main() -> None:
    ap = parser(__doc__)
    add_cache(ap)
    add_data(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=-1)
    args = ap.parse_args()
    cache = ensure_cache(args.cache, args.data)
    if cache is None:
        sys.exit(0)
    src = FeatureCache(cache)
    configs = expand_grid({"fusion": ["concat", "weighted", "late", "logreg"], "lr": [3e-4, 1e-3],
                           "text_feature": ["mean"], "epochs": [20], "precision": ["fp32"]})
    results: dict[str, list[float]] = {}
    for seed in range(args.repeats):
        dev, held = train_test_split(np.arange(len(src)), test_size=0.2, stratify=src.labels, random_state=seed)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            dev_cache = subset_cache(src, np.sort(dev), tmp / "dev.h5", f"dev{seed}")
            held_cache = subset_cache(src, np.sort(held), tmp / "held.h5", f"held{seed}")
            grid = run_grid(dev_cache, configs, tmp / "g", folds=5, jobs=args.jobs, refit_best=False,
                            progress=False, log=lambda s: None)
            best = grid.pick  # what best/ ships (--pick; measured with top and with one-se)
            from mmfuse.grid import refit
            fold = np.load(tmp / "g" / "folds.npy")
            for mode in ("folds", "full"):
                X, proba = load_run(refit(dev_cache, best, tmp / f"best-{mode}", fold, mode)).predict_cache(held_cache)
                results.setdefault(f"best config, {mode}", []).append(macro_f1(X.y, proba.argmax(1), 3))
                build_ensemble(tmp / "g", top=4, out=tmp / f"ens-{mode}", meta="lr", refit_mode=mode, log=lambda s: None)
                X, proba = load_run(tmp / f"ens-{mode}").predict_cache(held_cache)
                results.setdefault(f"top-4 stacking (lr meta), {mode}", []).append(macro_f1(X.y, proba.argmax(1), 3))
                if mode == "folds":  # the mean of the members' probabilities, beside the lr meta-classifier
                    build_ensemble(tmp / "g", top=4, out=tmp / "ens-mean", meta="mean", log=lambda s: None)
                    X, proba = load_run(tmp / "ens-mean").predict_cache(held_cache)
                    results.setdefault("top-4 mean of probabilities, folds", []).append(
                        macro_f1(X.y, proba.argmax(1), 3))
            results.setdefault("best config, CV estimate on dev", []).append(best["macro_f1_mean"])
        print(f"repeat {seed}, best {best['fusion']} lr {best['lr']:g}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()), flush=True)
    print(f"\n{cpu_line()}; {args.repeats} held-out splits of 20% of {len(src)} rows\n")
    print("| model | held-out macro-F1 per split | mean |\n|---|---|---:|")
    for k, v in results.items():
        print(f"| {k} | {' / '.join(f'{x:.3f}' for x in v)} | {np.mean(v):.3f} |")
    d = np.subtract(results["best config, folds"], results["best config, full"])
    e = np.subtract(results["top-4 stacking (lr meta), folds"], results["top-4 stacking (lr meta), full"])
    m = np.subtract(results["top-4 mean of probabilities, folds"], results["top-4 stacking (lr meta), folds"])
    print(f"\nmean - lr meta, paired per split: {m.mean():+.3f} ({' / '.join(f'{x:+.3f}' for x in m)})")
    print(f"folds - full, paired per split: best config {d.mean():+.3f} ({' / '.join(f'{x:+.3f}' for x in d)}); "
          f"stacking {e.mean():+.3f} ({' / '.join(f'{x:+.3f}' for x in e)})")


if __name__ == "__main__":
    main()
