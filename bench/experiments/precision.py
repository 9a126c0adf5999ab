"""Does a bf16 cache choose and score heads like the fp32 cache? The evidence for extract --precision auto.

    python bench/experiments/precision.py --data ../shared/datasets/mvsa [--rows 0] [--folds 5]

Extracts mvsa's training split twice with the offline backbones (minilm + efficientnet-lite0), in fp32 and in
bf16 (on a CPU without native bf16 the bf16 run is emulated: slow, but the numbers are the same), times both,
and reports the cosine of each bf16 vector to its fp32 twin. Then the same head grid (six heads at their
defaults, epochs 20 as mmfuse grid trains them) is cross-validated on both caches with the same stratified
folds: per head, the mean of the paired per-fold differences in macro-F1 (bf16 - fp32) and its standard
error, and whether the grid's best head and its score agree within one standard error. Skips (exit 0) when
the data set is absent.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_data, cpu_line, parser

HEADS = ("concat", "weighted", "gated", "attention", "late", "logreg")


def main() -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default=None, help="folder for the two caches [default: a temporary one]")
    args = ap.parse_args()
    if not (Path(args.data) / "train.txt").is_file():
        print(f"skip: data set not found at {args.data}")
        return 0
    import torch

    import mmfuse
    from mmfuse.cache import FeatureCache
    from mmfuse.heads import FeatureSet, Head, HeadConfig
    from mmfuse.metrics import macro_f1
    from mmfuse.splits import make_folds, splits

    folder = Path(args.out or tempfile.mkdtemp())
    caches, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        caches[precision] = folder / f"mvsa-{precision}.h5"
        t0 = time.perf_counter()
        mmfuse.extract(args.data, "train", caches[precision], precision=precision, progress=False,
                       text=mmfuse.TextExtractorConfig("minilm"), image=mmfuse.ImageExtractorConfig("efficientnet-lite0"),
                       on_error="skip", log=lambda s: None, overwrite=True)
        seconds[precision] = time.perf_counter() - t0
    c32, c16 = FeatureCache(caches["fp32"]), FeatureCache(caches["bf16"])
    cos = {}
    for name in c32.feature_names:
        a, b = c32.features(name).astype(np.float64), c16.features(name).astype(np.float64)
        c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        cos[name] = (c.min(), c.mean())
    sets = {p: FeatureSet.from_cache(c) for p, c in (("fp32", c32), ("bf16", c16))}
    y = sets["fp32"].y
    folds = splits(make_folds(y, args.folds, seed=0))
    scores = {p: {h: [] for h in HEADS} for p in sets}
    for head in HEADS:
        for train, test in folds:
            for p, X in sets.items():
                model = Head(HeadConfig(fusion=head, epochs=20)).fit(X.subset(train))
                scores[p][head].append(macro_f1(y[test], model.predict(X.subset(test)), len(c32.label_names)))
        print(head, np.mean(scores["fp32"][head]), np.mean(scores["bf16"][head]), flush=True)

    print(f"\n{cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"mvsa train ({len(c32)} rows), minilm + efficientnet-lite0; extraction fp32 {seconds['fp32']:.1f} s, "
          f"bf16 {seconds['bf16']:.1f} s ({seconds['fp32'] / seconds['bf16']:.2f}x)")
    print("cosine of bf16 vectors to fp32: " + "; ".join(f"{n} min {lo:.4f} mean {m:.5f}" for n, (lo, m) in cos.items()))
    print(f"\n{args.folds}-fold CV, the same folds for both caches (macro-F1)\n")
    print("| head | fp32 | bf16 | paired diff (bf16 - fp32) | SE of diff | fp32's SE | within 1 SE |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for head in HEADS:
        a, b = np.array(scores["fp32"][head]), np.array(scores["bf16"][head])
        d = b - a
        se_d, se_a = d.std(ddof=1) / np.sqrt(len(d)), a.std(ddof=1) / np.sqrt(len(a))
        print(f"| {head} | {a.mean():.4f} | {b.mean():.4f} | {d.mean():+.4f} | {se_d:.4f} | {se_a:.4f} | "
              f"{'yes' if abs(d.mean()) <= se_a else 'no'} |")
    best = {p: max(HEADS, key=lambda h: np.mean(scores[p][h])) for p in scores}
    print(f"\nbest head: fp32 {best['fp32']} ({np.mean(scores['fp32'][best['fp32']]):.4f}), bf16 {best['bf16']} "
          f"({np.mean(scores['bf16'][best['bf16']]):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
