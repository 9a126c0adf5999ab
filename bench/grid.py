"""The default grid on mvsa features: wall time, fits/s, and the plain loop's time for the same fits.

    python bench/grid.py [--cache features/mvsa-train.h5] [--data ../shared/datasets/mvsa] [--sample 8]

Runs `mmfuse grid`'s default grid (concat, weighted, gated, late x lr 1e-4, 3e-4, 1e-3 x weight
decay 0, 1e-4, 1e-2 x 5 folds = 180 fits, up to 20 epochs) into a fresh folder, then times a
sample of the same fits done one by one in a plain PyTorch loop (DataLoader over a TensorDataset,
AdamW, 20 epochs, no early stopping, torch's default threads) and extrapolates to 180 fits.
Skips (exit 0) when neither the cache nor the data set exists.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mvsa_cache import ensure_cache
from mmfuse.grid import DEFAULT_GRID, config_id, expand_grid, make_folds, run_grid
from mmfuse.heads import FeatureSet, create_head
from mmfuse.heads.estimator import class_weights
from mmfuse.metrics import macro_f1


def plain_fit(cfg, data: FeatureSet, train: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """One fit the notebook way: (seconds, macro-F1 on the held-out fold)."""
    torch.manual_seed(cfg.seed)
    mt, st = data.text[train].mean(0), data.text[train].std(0) + 1e-6
    mi, si = data.image[train].mean(0), data.image[train].std(0) + 1e-6
    t, i = torch.from_numpy((data.text - mt) / st), torch.from_numpy((data.image - mi) / si)
    y = torch.from_numpy(data.y)
    t0 = time.perf_counter()
    model = create_head(cfg.fusion, t.shape[1], i.shape[1], len(data.label_names), cfg)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(t[train], i[train], y[train]),
                                         batch_size=cfg.batch_size, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    w = torch.tensor(class_weights(data.y[train], len(data.label_names), cfg.class_weight), dtype=torch.float32)
    for _ in range(cfg.epochs):
        model.train()
        for tb, ib, yb in loader:
            loss = torch.nn.functional.cross_entropy(model(tb, ib).logits, yb, weight=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        pred = model(t[test], i[test]).logits.argmax(1).numpy()
    return seconds, macro_f1(data.y[test], pred, len(data.label_names))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/mvsa")
    ap.add_argument("--cache", default="features/mvsa-train.h5")
    ap.add_argument("--sample", type=int, default=8, help="plain-loop fits to time")
    ap.add_argument("--text-feature", default="mean")
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--precision", default="bf16", help="grid training precision (fp32 or bf16)")
    args = ap.parse_args()
    cache = ensure_cache(args.cache, args.data)
    if cache is None:
        return 0
    configs = expand_grid({**DEFAULT_GRID, "epochs": [20], "text_feature": [args.text_feature],
                           "precision": [args.precision]})
    folds = 5
    out = Path(tempfile.mkdtemp(prefix="mmfuse-bench-grid-"))
    try:
        t0 = time.perf_counter()
        result = run_grid(cache, configs, out, folds=folds, jobs=args.jobs, refit_best=False, progress=False,
                          log=lambda s: None)
        wall = time.perf_counter() - t0
        rows = {r["config_id"]: r for r in result.rows}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n_fits = len(configs) * folds

    data = FeatureSet.from_cache(cache, args.text_feature)
    fold = make_folds(data.y, folds, 0)
    rng = np.random.default_rng(0)
    sample = [(configs[c], int(k)) for c, k in zip(rng.choice(len(configs), args.sample, replace=False),
                                                  rng.integers(0, folds, args.sample))]
    plain = [plain_fit(cfg, data, np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for cfg, k in sample]
    per_fit = float(np.mean([s for s, _ in plain]))
    plain_total = per_fit * n_fits

    print(f"\n{len(data)} rows, text/{args.text_feature}, grid precision {args.precision}; {len(configs)} configurations x {folds} folds = {n_fits} fits, "
          f"up to 20 epochs; torch {torch.__version__}\n")
    print("| | wall (s) | fits/s |\n|---|---:|---:|")
    print(f"| mmfuse grid ({args.jobs if args.jobs > 0 else 'all'} jobs) | {wall:.1f} | {n_fits / wall:.2f} |")
    print(f"| plain loop, {args.sample} fits timed, x{n_fits} | {plain_total:.1f} | {n_fits / plain_total:.2f} |")
    print(f"\nspeed-up: {plain_total / wall:.1f}x")
    print("\nscores of the sampled fits (plain loop: 20 epochs; grid: mean over folds, early stopped):")
    print("| fusion | lr | weight decay | fold | plain macro-F1 | grid macro-F1 (mean ± std over folds) |")
    print("|---|---:|---:|---:|---:|---:|")
    for (cfg, k), (_, f1) in zip(sample, plain):
        r = rows[config_id(cfg)]
        print(f"| {cfg.fusion} | {cfg.lr:g} | {cfg.weight_decay:g} | {k} | {f1:.3f} | "
              f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} |")
    top = sorted(rows.values(), key=lambda r: -r["macro_f1_mean"])[:5]
    print("\ntop 5 configurations:")
    for r in top:
        print(f"  {r['fusion']:9s} lr {r['lr']:g} wd {r['weight_decay']:g}: {r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
