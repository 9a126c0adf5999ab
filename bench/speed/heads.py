"""Heads on cached mvsa features: fit time (20 epochs) and 5-fold macro-F1 of every head.

    python bench/speed/heads.py [--cache features/mvsa-train.h5] [--data ../shared/datasets/mvsa]

Builds the cache (minilm text, efficientnet-lite0 image) when it is missing, or skips (exit 0)
when the data set is absent. In the same run it times a plain PyTorch loop (DataLoader over a
TensorDataset, hidden 256, batch 64, AdamW, 20 epochs) and scores scikit-learn logistic
regression baselines, then prints one markdown table.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_cache, add_data, cpu_line, ensure_cache, parser
from mmfuse.heads import FeatureSet, Head, HeadConfig, list_heads
from mmfuse.heads.run import stratified_split
from mmfuse.metrics import macro_f1


def plain_loop_seconds(X: np.ndarray, y: np.ndarray, epochs: int = 20) -> float:
    """The notebook way: DataLoader + TensorDataset, MLP hidden 256, batch 64, AdamW."""
    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 256), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(256, int(y.max()) + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def cv_scores(data: FeatureSet, cfg: HeadConfig, folds: int, val_fraction: float = 0.15):
    """Stratified k-fold: train on k-1 folds (early stopping on a stratified part of them), score the held-out fold."""
    f1s, accs = [], []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=0).split(data.text, data.y):
        fit_idx, val_idx = stratified_split(data.y[tr], val_fraction, cfg.seed)
        head = Head(cfg).fit(data.subset(tr[fit_idx]), val=data.subset(tr[val_idx]))
        pred = head.predict(data.subset(te))
        f1s.append(macro_f1(data.y[te], pred, len(data.label_names)))
        accs.append(float((pred == data.y[te]).mean()))
    return np.array(f1s), np.array(accs)


def sklearn_cv(X: np.ndarray, y: np.ndarray, folds: int, C: float, class_weight) -> np.ndarray:
    out = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y):
        sc = StandardScaler().fit(X[tr])
        lr = LogisticRegression(C=C, max_iter=3000, class_weight=class_weight).fit(sc.transform(X[tr]), y[tr])
        out.append(macro_f1(y[te], lr.predict(sc.transform(X[te])), int(y.max()) + 1))
    return np.array(out)


def main() -> int:
    ap = parser(__doc__)
    add_data(ap)
    add_cache(ap)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--heads", default=",".join(list_heads(trained=True)))
    ap.add_argument("--text-feature", default="mean", help="cls or mean (mean suits MiniLM, a mean-pooled model)")
    args = ap.parse_args()
    cache = ensure_cache(args.cache, args.data)
    if cache is None:
        return 0
    data = FeatureSet.from_cache(cache, args.text_feature)
    rows = []
    plain = plain_loop_seconds(np.hstack([data.text, data.image]), data.y, args.epochs)
    for name in args.heads.split(","):
        cfg = HeadConfig(fusion=name, epochs=args.epochs, text_feature=args.text_feature)
        t0 = time.perf_counter()
        Head(cfg.replace(patience=args.epochs)).fit(data)  # all rows, all epochs, no validation
        seconds = time.perf_counter() - t0
        f1, acc = cv_scores(data, cfg, args.folds)
        rows.append((name, seconds, f1, acc))
        print(f"{name:10s} fit {seconds:5.2f} s  macro-F1 {f1.mean():.3f} ± {f1.std():.3f}  acc {acc.mean():.3f}",
              flush=True)
    mean, cls = FeatureSet.from_cache(cache, "mean"), FeatureSet.from_cache(cache, "cls")
    base = {
        "sklearn LR (C=1, no class weights), text CLS only": sklearn_cv(cls.text, data.y, args.folds, 1.0, None),
        "sklearn LR (C=1, no class weights), text mean + image":
            sklearn_cv(np.hstack([mean.text, mean.image]), data.y, args.folds, 1.0, None),
    }
    print(f"\n{cpu_line()}")
    print(f"{len(data)} rows, {args.folds}-fold stratified CV (early stopping on 15% of each training part), "
          f"{args.epochs} epochs max, text/{args.text_feature}, defaults of HeadConfig; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print(f"| head | fit {args.epochs} epochs (s) | macro-F1 (mean ± std) | accuracy |\n|---|---:|---:|---:|")
    for name, seconds, f1, acc in sorted(rows, key=lambda r: -r[2].mean()):
        print(f"| {name} | {seconds:.2f} | {f1.mean():.3f} ± {f1.std():.3f} | {acc.mean():.3f} |")
    for name, f1 in base.items():
        print(f"| {name} | | {f1.mean():.3f} ± {f1.std():.3f} | |")
    concat = next((r[1] for r in rows if r[0] == "concat"), None)
    print(f"\nplain PyTorch loop, {args.epochs} epochs: {plain:.2f} s"
          + (f"; mmfuse concat {concat:.2f} s (plain / mmfuse = {plain / concat:.2f})" if concat else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
