"""Run folders: train a head on a cache and save everything needed to reuse it; compare runs.

Loading any run folder (head, bagged head, ensemble) and scoring or predicting with it lives in
``mmfuse.runs``, above every kind of run, so that imports flow one way."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path


from ..cache import FeatureCache
from ..errors import MmfuseError
from ..outputs import new_folder
from ..safe import number, read_json
from ..metrics import format_size, metrics_for
from ..plots import plot_confusion, plot_history, plot_label_f1, plot_threshold_curve
from ..splits import stratified_split  # its home is mmfuse.splits (imported from here too)
from .config import HeadConfig
from .estimator import Head
from .features import FeatureSet, check_compatible


def write_history(history: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def train_head(cache: str | Path | FeatureCache, config: HeadConfig | None = None, *, val_split: float = 0.2,
               val: str | Path | FeatureCache | None = None, out: str | Path | None = None,
               overwrite: bool = False) -> tuple[Head, dict]:
    """Fit a head on a cache (validation: ``val`` cache, else a stratified ``val_split``).

    With ``out``, saves the run folder: weights, config.json, head.json (labels, dims, provenance,
    thresholds), scaler.npz, metrics.json, history.csv, curves.png and confusion.png (multi-label:
    label_f1.png and thresholds.png, F1 against the global threshold). The folder is written beside
    ``out`` and renamed into place when complete; an existing ``out`` is replaced only with
    ``overwrite`` (and never when mmfuse did not make it). Returns (head, metrics).
    """
    if out is None:
        return _train_head(cache, config, val_split, val, None)
    with new_folder(out, "head run", overwrite) as tmp:
        return _train_head(cache, config, val_split, val, tmp)


def _train_head(cache, config: HeadConfig | None, val_split: float, val, out: Path | None) -> tuple[Head, dict]:
    cfg = config or HeadConfig()
    data = FeatureSet.from_cache(cache, cfg.text_feature, cfg.image_feature)
    if val is not None:  # the vectors the training cache resolved to (auto may name others in another cache)
        train, valid = data, FeatureSet.from_cache(val, data.text_feature, data.image_feature)
        check_compatible(data.provenance, {"text": data.text.shape[1], "image": data.image.shape[1]},
                         data.label_names, valid)
    elif val_split > 0:
        if data.y is None:
            raise MmfuseError(f"{data.source} has unlabelled rows: train on a labelled split")
        tr, va = stratified_split(data.y, val_split, cfg.seed)
        train, valid = data.view(tr), data.view(va)  # rows of the features read once, not copies
    else:
        train, valid = data, None
    t0 = time.perf_counter()
    head = Head(cfg).fit(train, val=valid)
    seconds = time.perf_counter() - t0
    metrics = {"fusion": cfg.fusion, "text_feature": head.text_feature_, "image_feature": head.image_feature_,
               "fit_seconds": seconds,
               "best_epoch": head.best_epoch_,
               "epochs_run": len(head.history_), "train_rows": len(train),
               "modality_weights": head.modality_weights()}
    if valid is not None:
        proba = head.predict_proba(valid)
        metrics["validation"] = metrics_for(valid.y, proba, head.label_names_, head.decide)
        if head.multilabel_:
            metrics["thresholds"] = dict(zip(head.label_names_, map(float, head.thresholds_)))
    if out is not None:
        out = Path(out)
        head.save(out)
        if head.history_:
            write_history(head.history_, out / "history.csv")
            plot_history(head.history_, out / "curves.png", f"{cfg.fusion} head (dotted: best epoch, restored)",
                         head.best_epoch_ if valid is not None else None)
        if valid is not None and head.multilabel_:
            plot_label_f1(metrics["validation"], out / "label_f1.png",
                          f"{cfg.fusion}: validation micro-F1 {metrics['validation']['micro_f1']:.3f}")
            plot_threshold_curve(valid.y, proba, out / "thresholds.png", head.thresholds_, cfg.min_labels,
                                 f"{cfg.fusion}: validation F1 against one global threshold (dotted: tuned)")
        elif valid is not None:
            plot_confusion(metrics["validation"], out / "confusion.png",
                           f"{cfg.fusion}: validation macro-F1 {metrics['validation']['macro_f1']:.3f}")
        metrics["size_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return head, metrics


def compare_runs(runs: list[str | Path]) -> str:
    """A markdown table of run folders' validation metrics, best first (macro-F1; multi-label: micro-F1)."""
    rows, multi = [], set()
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise MmfuseError(f"{run} has no metrics.json: is it a train-head run folder?")
        m = read_json(path, ("fusion", "fit_seconds"))
        v = m.get("validation")
        if v is None:
            raise MmfuseError(f"{run} was trained without validation (--val-split 0): nothing to compare")
        if not isinstance(v, dict):
            raise MmfuseError(f"{path}: 'validation' is not a table of metrics; train the run again")
        keys = ("micro_f1", "macro_f1", "samples_f1") if v.get("multilabel") else (
            "macro_f1", "accuracy", "weighted_f1", "balanced_accuracy")
        v = {**v, **{k: number(v.get(k), path, f"validation {k}") for k in keys}}
        m["fit_seconds"] = number(m["fit_seconds"], path, "fit_seconds")
        m["fusion"] = str(m["fusion"])
        w = m.get("modality_weights") or {}
        w = {str(k): number(x, path, f"modality weight {k}") for k, x in w.items()} if isinstance(w, dict) else {}
        if "map" in v:
            v["map"] = number(v["map"], path, "validation map")
        multi.add(bool(v.get("multilabel")))
        if len(multi) > 1:
            raise MmfuseError(f"{run} is {'multi' if v.get('multilabel') else 'single'}-label, the runs before it "
                              "are not: compare runs of one task")
        if v.get("multilabel"):
            rows.append((v["micro_f1"], f"| {Path(run).name} | {m['fusion']} | {v['micro_f1']:.3f} | {v['macro_f1']:.3f} | "
                         f"{v['samples_f1']:.3f} | {v.get('map', float('nan')):.3f} | {m['fit_seconds']:.2f} | "
                         f"{format_size(number(m['size_bytes'], path, 'size_bytes')) if 'size_bytes' in m else ''} |"))
            continue
        rows.append((v["macro_f1"], f"| {Path(run).name} | {m['fusion']} | {v['macro_f1']:.3f} | {v['accuracy']:.3f} | "
                     f"{v['weighted_f1']:.3f} | {v['balanced_accuracy']:.3f} | {m['fit_seconds']:.2f} | "
                     + (" / ".join(f"{k} {x:.2f}" for k, x in w.items()) or "") + " |"))
    head = ("| run | fusion | micro-F1 | macro-F1 | samples-F1 | mAP | fit (s) | size |\n|---|---|---:|---:|---:|---:|---:|---:|"
            if True in multi else
            "| run | fusion | macro-F1 | accuracy | weighted-F1 | balanced acc. | fit (s) | modality weights |\n"
            "|---|---|---:|---:|---:|---:|---:|---|")
    return "\n".join([head, *(r for _, r in sorted(rows, key=lambda r: -r[0]))])
