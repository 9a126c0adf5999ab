"""Multi-label on real data: a CSV built from mvsa, every fusion, union late fusion, tuned thresholds.

    python bench/experiments/multilabel.py [--data ../shared/datasets/mvsa] [--work features/mvsa-multilabel] [--repeats 3]

The builder writes ``{work}/mvsa-multilabel.csv`` (``ImageID,Labels,Caption``, the images left in
mvsa's own folder; and ``mvsa-multilabel-test.csv``, the unlabelled rows) with eight labels, some readable only in the text, some only in the image:

- ``positive`` / ``neutral`` / ``negative``: the course tag (both modalities);
- ``mention``, ``hashtag``, ``link``: the text has an @user, a #tag, a URL (text only);
- ``grayscale``: the image's colour channels differ by less than 8 levels on average (image only);
- ``portrait``: the image is at least 10% taller than wide (image only).

It extracts the CSV once (minilm text, efficientnet-lite0 image, as the other benches), then for each
repeat holds out an iteratively stratified 20%, fits each head on the rest (early stopping and
thresholds on a stratified 20% of it; HeadConfig's defaults, the global threshold among them, unless a
row says otherwise) and scores micro-F1 on the held-out rows. Prints markdown
tables with the CPU. Skips (exit 0) when the data set is absent.
"""
from __future__ import annotations

import csv
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_data, cpu_line, parser
import mmfuse
from mmfuse.data import CsvFormat, read_course
from mmfuse.heads import FeatureSet, Head, HeadConfig
from mmfuse.heads.run import stratified_split
from mmfuse.metrics import multilabel_metrics
from mmfuse.multilabel import iterative_stratification

LABELS = ("positive", "neutral", "negative", "mention", "hashtag", "link", "grayscale", "portrait")


def image_labels(path: Path) -> list[str]:
    with Image.open(path) as img:
        w, h = img.size
        small = np.asarray(img.convert("RGB").resize((64, 64)), np.float32)
    spread = np.abs(small - small.mean(2, keepdims=True)).mean()
    return (["grayscale"] if spread < 8 else []) + (["portrait"] if h >= 1.1 * w else [])


def build_csv(data: Path, out: Path) -> Path:
    """The multi-label CSV of mvsa's labelled rows (written with csv: captions are quoted as needed), and
    beside it ``*-test.csv``: mvsa's unlabelled rows as ``ImageID,Caption``, to predict."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.stem + "-test.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "Caption"])
        w.writerows([r.image_path.name, r.text] for r in read_course(data, "test").records)
    ds = read_course(data, "train")
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "Labels", "Caption"])
        for r in ds.records:
            labels = [r.labels[0]]
            labels += [name for name, pattern in (("mention", r"@\w"), ("hashtag", r"#\w"), ("link", r"https?://"))
                       if re.search(pattern, r.text)]
            labels += image_labels(r.image_path)
            w.writerow([r.image_path.name, " ".join(labels), r.text])
    return out


def main() -> None:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--work", default="features/mvsa-multilabel")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of row names to run (default: all)")
    args = ap.parse_args()
    data, work = Path(args.data), Path(args.work)
    if not (data / "train.txt").is_file():
        print(f"skip: the data set at {data} is absent")
        sys.exit(0)
    table = work / "mvsa-multilabel.csv"
    if not table.with_name(table.stem + "-test.csv").is_file():
        build_csv(data, table)
    cache = work / "mvsa-multilabel.h5"
    if not cache.is_file():
        mmfuse.extract(table, out=cache, csv_format=CsvFormat(data / "data", label_names=LABELS),
                       text=mmfuse.TextExtractorConfig("minilm"), image=mmfuse.ImageExtractorConfig("efficientnet-lite0"))
    X = FeatureSet.from_cache(cache)
    print(f"CPU: {cpu_line()}; {len(X)} rows of {table}; positives per label: "
          + ", ".join(f"{n} {int(c)}" for n, c in zip(X.label_names, X.y.sum(0))))
    runs = {"text only (text head)": dict(fusion="text"), "image only (image head)": dict(fusion="image"),
            "concat": dict(fusion="concat"), "weighted": dict(fusion="weighted"), "attention": dict(fusion="attention"),
            "gated": dict(fusion="gated"), "aligned": dict(fusion="aligned"), "late, mean": dict(fusion="late"),
            "late, union": dict(fusion="late", combine="union"), "logreg (one-vs-rest)": dict(fusion="logreg"),
            "concat, thresholds fixed 0.5": dict(fusion="concat", thresholds="fixed"),
            "concat, per-label thresholds": dict(fusion="concat", thresholds="per-label"),
            "late union, thresholds fixed 0.5": dict(fusion="late", combine="union", thresholds="fixed"),
            "late union, per-label thresholds": dict(fusion="late", combine="union", thresholds="per-label"),
            "concat, no pos_weight": dict(fusion="concat", class_weight="none"),
            "concat, no pos_weight, thresholds fixed 0.5": dict(fusion="concat", class_weight="none", thresholds="fixed"),
            "concat, no pos_weight, per-label thresholds": dict(fusion="concat", class_weight="none",
                                                                thresholds="per-label")}
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
    scores: dict[str, list[dict]] = {k: [] for k in runs}
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.repeats):
        part = iterative_stratification(X.y, [4, 1], seed=rep)
        dev, held = X.subset(np.flatnonzero(part == 0)), X.subset(np.flatnonzero(part == 1))
        fit, val = stratified_split(dev.y, 0.2, rep)
        for name, cfg in runs.items():
            t0 = time.perf_counter()
            head = Head(HeadConfig(text_feature="mean", seed=rep, **cfg)).fit(dev.subset(fit), val=dev.subset(val))
            seconds[name].append(time.perf_counter() - t0)
            proba = head.predict_proba(held)
            scores[name].append(multilabel_metrics(held.y, head.decide(proba), X.label_names, proba))
    print(f"\n{args.repeats} held-out 20% splits (iterative stratification), micro-F1 etc. on the held-out rows:\n")
    print("| head | micro-F1 | macro-F1 | samples-F1 | mAP | fit (s) |\n|---|---:|---:|---:|---:|---:|")
    for name, ms in scores.items():
        cell = lambda k: f"{np.mean([m[k] for m in ms]):.3f} ± {np.std([m[k] for m in ms]):.3f}"  # noqa: E731
        print(f"| {name} | {cell('micro_f1')} | {cell('macro_f1')} | {cell('samples_f1')} | {cell('map')} | "
              f"{np.mean(seconds[name]):.1f} |")
    print("\nper-label F1 (mean over the splits):\n")
    shown = [s for s in ("text only (text head)", "image only (image head)", "concat", "late, union",
                         "concat, per-label thresholds") if s in scores]
    print("| label | " + " | ".join(shown) + " |\n|---|" + "---:|" * len(shown))
    for label in X.label_names:
        print(f"| {label} | " + " | ".join(f"{np.mean([m['per_class'][label]['f1'] for m in scores[s]]):.3f}"
                                          for s in shown) + " |")


if __name__ == "__main__":
    main()
