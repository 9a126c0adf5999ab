"""HeadConfig's defaults against their alternatives, as paired per-fold macro-F1 differences.

    python bench/defaults.py [--cache features/mvsa-train.h5] [--data ../shared/datasets/mvsa]

Runs one 5-fold grid on the mvsa cache (every configuration on the same folds) and, for each
default, prints the per-fold difference default - alternative (mean ± std, folds ahead) and the
difference of macro-F1 pooled over all out-of-fold rows. A default whose difference is inside its
std is a tie, and the table says so. Skips (exit 0) when neither cache nor data exists.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mvsa_cache import ensure_cache
from mmfuse.grid import config_id, run_grid
from mmfuse.heads import HeadConfig
from mmfuse.metrics import macro_f1

# (question, default config, alternative config), all with the mean text vector and 20 epochs
BASE = HeadConfig(fusion="concat", text_feature="mean", epochs=20, precision="fp32")
PAIRS = [
    ("lr 3e-4 vs 1e-3 (concat)", BASE, BASE.replace(lr=1e-3)),
    ("class_weight balanced vs none (concat)", BASE, BASE.replace(class_weight="none")),
    ("text_feature mean vs cls (concat)", BASE, BASE.replace(text_feature="cls")),
    ("logreg C 1e-3 vs 1e-2", HeadConfig(fusion="logreg", text_feature="mean"),
     HeadConfig(fusion="logreg", text_feature="mean", C=1e-2)),
    ("logreg C 1e-3 vs 1", HeadConfig(fusion="logreg", text_feature="mean"),
     HeadConfig(fusion="logreg", text_feature="mean", C=1.0)),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="features/mvsa-train.h5")
    ap.add_argument("--data", default="../shared/datasets/mvsa")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    cache = ensure_cache(args.cache, args.data)
    if cache is None:
        sys.exit(0)
    configs = list({config_id(c): c for pair in PAIRS for c in pair[1:]}.values())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "g"
        run_grid(cache, configs, out, folds=args.folds, refit_best=False, progress=False, log=lambda s: None)
        fold = np.load(out / "folds.npy")
        from mmfuse.cache import FeatureCache
        y = FeatureCache(cache).labels
        pred = {config_id(c): np.load(out / "oof" / f"{config_id(c)}.npy").argmax(1) for c in configs}
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"{len(y)} rows, {args.folds}-fold stratified CV, same folds for all; {cpu}, torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}\n")
    print("| default vs alternative | default macro-F1 | alternative | per-fold difference | folds ahead | pooled difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for question, a, b in PAIRS:
        fa = np.array([macro_f1(y[fold == k], pred[config_id(a)][fold == k], 3) for k in range(args.folds)])
        fb = np.array([macro_f1(y[fold == k], pred[config_id(b)][fold == k], 3) for k in range(args.folds)])
        d = fa - fb
        pooled = macro_f1(y, pred[config_id(a)], 3) - macro_f1(y, pred[config_id(b)], 3)
        print(f"| {question} | {fa.mean():.3f} | {fb.mean():.3f} | {d.mean():+.3f} ± {d.std():.3f} | "
              f"{(d > 0).sum()}/{len(d)} | {pooled:+.3f} |")


if __name__ == "__main__":
    main()
