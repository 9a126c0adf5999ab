"""HeadConfig's defaults against their alternatives, as paired per-fold macro-F1 differences.

    python bench/experiments/defaults.py [--cache features/mvsa-train.h5] [--data ../shared/datasets/mvsa]

Runs one 5-fold grid on the mvsa cache (every configuration on the same folds, each with seeds
0..S-1, ``--seeds``, scored by the mean over seeds) and, for each
default, prints the per-fold difference default - alternative (mean ± std, folds ahead), the
difference of macro-F1 pooled over all out-of-fold rows and both seconds per fit (one thread;
run it under ``ATEN_CPU_CAPABILITY=avx2`` too for an AVX2 CPU's times). A default whose difference is inside its
std is a tie, and the table says so. Skips (exit 0) when neither cache nor data exists.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_cache, add_data, cpu_line, ensure_cache, parser
from mmfuse.cache import FeatureCache
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
    ("hidden 256 vs 128 (concat)", BASE, BASE.replace(hidden=128)),
    ("hidden 256 vs 512 (concat)", BASE, BASE.replace(hidden=512)),
    ("dropout 0.2 vs 0 (concat)", BASE, BASE.replace(dropout=0.0)),
    ("dropout 0.2 vs 0.5 (concat)", BASE, BASE.replace(dropout=0.5)),
    ("weight_decay 1e-2 vs 0 (concat)", BASE, BASE.replace(weight_decay=0.0)),
    ("batch_size 64 vs 128 (concat)", BASE, BASE.replace(batch_size=128)),
    ("batch_size 64 vs 32 (concat)", BASE, BASE.replace(batch_size=32)),
    ("patience 5 vs 3 (concat)", BASE, BASE.replace(patience=3)),
    ("warmup 0.1 vs 0 (concat)", BASE, BASE.replace(warmup=0.0)),
    ("clip 1 vs none (concat)", BASE, BASE.replace(clip=1e9)),
    ("loss ce vs hinge (concat)", BASE, BASE.replace(loss="hinge")),
    ("label_smoothing 0 vs 0.1 (concat)", BASE, BASE.replace(label_smoothing=0.1)),
    ("heads 4 vs 1 (attention)", BASE.replace(fusion="attention"), BASE.replace(fusion="attention", heads=1)),
    ("align_weight 0.1 vs 0 (aligned)", BASE.replace(fusion="aligned"), BASE.replace(fusion="aligned", align_weight=0.0)),
    ("temperature 0.07 vs 0.2 (aligned)", BASE.replace(fusion="aligned"), BASE.replace(fusion="aligned", temperature=0.2)),
] + [  # regularisers for frozen features, on each fusion of the default grid
    (f"{name} ({fusion})", BASE.replace(fusion=fusion), BASE.replace(fusion=fusion, **change))
    for fusion in ("concat", "weighted", "gated", "late")
    for name, change in (("ema 0 vs 0.95", dict(ema=0.95)), ("ema 0 vs 0.99", dict(ema=0.99)),
                         ("ema 0 vs 0.998", dict(ema=0.998)))
]


def main() -> None:
    ap = parser(__doc__)
    add_cache(ap)
    add_data(ap)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="each configuration with seeds 0..S-1; scores are "
                    "their mean, so a difference is not one initialisation's luck")
    ap.add_argument("--only", default="", help="run the comparisons whose question contains this text")
    args = ap.parse_args()
    pairs = [p for p in PAIRS if args.only in p[0]]
    cache = ensure_cache(args.cache, args.data)
    if cache is None:
        sys.exit(0)
    configs = list({config_id(c): c for pair in pairs for c in pair[1:]}.values())
    seeded = [c.replace(seed=s) for c in configs for s in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "g"
        rows = {r["config_id"]: r for r in run_grid(cache, seeded, out, folds=args.folds, refit_best=False,
                                                   progress=False, log=lambda s: None).rows}
        fold = np.load(out / "folds.npy")
        y = FeatureCache(cache).labels
        pred = {config_id(c): np.load(out / "oof" / f"{config_id(c)}.npy").argmax(1) for c in seeded}

    def per_fold(c: HeadConfig) -> np.ndarray:  # (folds,): macro-F1 per fold, mean over seeds
        return np.mean([[macro_f1(y[fold == k], pred[config_id(c.replace(seed=s))][fold == k], 3)
                         for k in range(args.folds)] for s in range(args.seeds)], axis=0)

    def pooled(c: HeadConfig) -> float:
        return float(np.mean([macro_f1(y, pred[config_id(c.replace(seed=s))], 3) for s in range(args.seeds)]))

    def seconds(c: HeadConfig) -> float:
        return float(np.mean([rows[config_id(c.replace(seed=s))]["seconds_per_fit"] for s in range(args.seeds)]))

    print(f"{len(y)} rows, {args.folds}-fold stratified CV, same folds for all, each configuration with "
          f"{args.seeds} seeds (scores: their mean); {cpu_line()}\n")
    print("| default vs alternative | default macro-F1 | alternative | per-fold difference | folds ahead | pooled difference "
          "| s/fit default / alternative |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for question, a, b in pairs:
        fa, fb = per_fold(a), per_fold(b)
        d = fa - fb
        print(f"| {question} | {fa.mean():.3f} | {fb.mean():.3f} | {d.mean():+.3f} ± {d.std():.3f} | "
              f"{(d > 0).sum()}/{len(d)} | {pooled(a) - pooled(b):+.3f} | {seconds(a):.2f} / {seconds(b):.2f} |")


if __name__ == "__main__":
    main()
