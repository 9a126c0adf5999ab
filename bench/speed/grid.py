"""The default grid on mvsa features: wall time, fits/s, and the plain loop's time for the same fits.

    python bench/speed/grid.py [--cache features/mvsa-train.h5] [--data ../shared/datasets/mvsa] [--sample 8]
                         [--search full,halving] [--precision auto] [--axis dropout=0,0.2,0.5]

Runs `mmfuse grid`'s default grid (concat, weighted, gated, late x lr 1e-4, 3e-4, 1e-3 x 5 folds =
60 fits, up to 20 epochs; `--axis dropout=0,0.2,0.5`: 36 configurations, 180 fits) into a fresh folder with each search
(`--search full` and `--search halving` over folds, compared in one run: time, pick, the pick's rank
in the full grid), at the precision the grid chooses for this CPU, then times a
sample of the same fits done one by one in a plain PyTorch loop (DataLoader over a TensorDataset,
AdamW, 20 epochs, no early stopping, torch's default threads) and extrapolates to the grid's fits.
Skips (exit 0) when neither the cache nor the data set exists.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_axis, add_cache, add_data, cpu_line, ensure_cache, grid_axes, parser
from mmfuse.cache import FeatureCache
from mmfuse.grid import (config_id, expand_grid, fast_precision, make_folds, run_grid,
                         standard_error)
from mmfuse.heads import FeatureSet, create_head
from mmfuse.heads.train import class_weights
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


def run_search(cache, configs, folds: int, jobs: int, search: str) -> tuple[float, list[dict], dict, int]:
    """(wall seconds, final rows best first, the pick, fits) of one grid run in a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix=f"mmfuse-bench-grid-{search}-"))
    try:
        t0 = time.perf_counter()
        result = run_grid(cache, configs, out, folds=folds, jobs=jobs, refit_best=False, progress=False,
                          search=search, log=lambda s: None)
        wall = time.perf_counter() - t0
        return wall, result.rows, result.pick, result.fits
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    ap = parser(__doc__)
    add_data(ap)
    add_cache(ap)
    ap.add_argument("--sample", type=int, default=8, help="plain-loop fits to time (0: none)")
    ap.add_argument("--text-feature", default="mean")
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--precision", default="auto", help="grid training precision: fp32, bf16 or auto (the grid's "
                    "own choice for this CPU)")
    ap.add_argument("--search", default="full,halving", help="searches to run and compare, in one run")
    add_axis(ap)
    args = ap.parse_args()
    cache = ensure_cache(args.cache, args.data)
    if cache is None:
        return 0
    precision, reason = fast_precision() if args.precision == "auto" else (args.precision, "--precision")
    configs = expand_grid({**grid_axes(args.axis), "epochs": [20], "text_feature": [args.text_feature],
                           "precision": [precision]})
    folds = 5
    runs = {s: run_search(cache, configs, folds, args.jobs, s) for s in args.search.split(",")}
    n_fits = len(configs) * folds

    print(f"\n{cpu_line()}; torch {torch.__version__}")
    print(f"{FeatureCache(cache).__len__()} rows, text/{args.text_feature}, grid precision {precision} ({reason}); "
          f"default grid{''.join(' + ' + a for a in args.axis)}: "
          f"{len(configs)} configurations x {folds} folds = {n_fits} fits, up to 20 epochs, "
          f"{args.jobs if args.jobs > 0 else 'all'} jobs\n")
    full_rank = {r["config_id"]: i for i, r in enumerate(runs["full"][1], 1)} if "full" in runs else {}
    print("| search | fits | wall (s) | fits/s | x full's time | pick | its CV macro-F1 | rank of the pick in full |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for s, (wall, rows, pick, fits) in runs.items():
        ratio = f"{wall / runs['full'][0]:.2f}" if "full" in runs else ""
        print(f"| {s} | {fits} | {wall:.1f} | {fits / wall:.2f} | {ratio} | {pick['fusion']}, lr {pick['lr']:g}, "
              f"dropout {pick['dropout']:g}, wd {pick['weight_decay']:g} | {pick['macro_f1_mean']:.3f} ± {pick['macro_f1_std']:.3f} | "
              f"{full_rank.get(pick['config_id'], '')} |")
    if "full" in runs:
        top = runs["full"][1][0]
        print(f"\nfull grid's top: {top['macro_f1_mean']:.3f}, one standard error "
              f"{standard_error(top, folds):.3f}")
    if args.sample <= 0 or "full" not in runs:
        return 0
    rows = {r["config_id"]: r for r in runs["full"][1]}
    data = FeatureSet.from_cache(cache, args.text_feature)
    fold = make_folds(data.y, folds, 0)
    rng = np.random.default_rng(0)
    sample = [(configs[c], int(k)) for c, k in zip(rng.choice(len(configs), args.sample, replace=False),
                                                  rng.integers(0, folds, args.sample))]
    plain = [plain_fit(cfg, data, np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for cfg, k in sample]
    plain_total = float(np.mean([s for s, _ in plain])) * n_fits
    print(f"\nplain loop (DataLoader, AdamW, 20 epochs, torch's default threads), {args.sample} fits timed, "
          f"x{n_fits}: {plain_total:.1f} s; full grid's speed-up {plain_total / runs['full'][0]:.1f}x")
    print("\nscores of the sampled fits (plain loop: 20 epochs; grid: mean over folds, early stopped):")
    print("| fusion | lr | dropout | fold | plain macro-F1 | grid macro-F1 (mean ± std over folds) |")
    print("|---|---:|---:|---:|---:|---:|")
    for (cfg, k), (_, f1) in zip(sample, plain):
        r = rows[config_id(cfg)]
        print(f"| {cfg.fusion} | {cfg.lr:g} | {cfg.dropout:g} | {k} | {f1:.3f} | "
              f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
