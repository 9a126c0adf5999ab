"""Classification metrics: single-label, multi-label, formatting. (The plots: ``mmfuse.plots``.)"""
from __future__ import annotations


import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    return float(f1_score(y_true, y_pred, average="macro", labels=np.arange(n_classes), zero_division=0))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names) -> dict:
    """Accuracy, macro/weighted F1, balanced accuracy, per-class P/R/F1/support, confusion matrix."""
    import warnings

    labels = np.arange(len(label_names))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    with warnings.catch_warnings():  # a test split may lack a class the head predicts: not worth a warning
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1(y_true, y_pred, len(label_names)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0)),
        "balanced_accuracy": balanced,
        "per_class": {n: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
                      for k, n in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "label_names": list(label_names),
    }


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names, proba: np.ndarray | None = None) -> dict:
    """Micro-, macro- and samples-F1, subset accuracy, per-label P/R/F1/support and (with ``proba``)
    mean average precision over the labels that have positives; ``y_*`` (N, L) multi-hot."""
    from sklearn.metrics import average_precision_score

    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    out = {
        "n": int(len(y_true)), "multilabel": True,
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "samples_f1": float(f1_score(y_true, y_pred, average="samples", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "labels_per_row": float(y_pred.sum(1).mean()) if len(y_pred) else 0.0,
        "per_class": {n: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
                      for k, n in enumerate(label_names)},
        "label_names": list(label_names),
    }
    if proba is not None:
        present = np.flatnonzero(y_true.sum(0) > 0)
        out["map"] = float(np.mean([average_precision_score(y_true[:, k], proba[:, k]) for k in present])) \
            if len(present) else 0.0
    return out


def task_metrics_of(y_true: np.ndarray, y_pred: np.ndarray, label_names, proba: np.ndarray | None = None) -> dict:
    """The metrics of either task from predictions: (N, L) multi-hot labels get the multi-label ones
    (mAP too, with ``proba``), (N,) class indices the single-label ones."""
    if np.asarray(y_true).ndim == 2:
        return multilabel_metrics(y_true, y_pred, label_names, proba)
    return classification_metrics(y_true, y_pred, label_names)


def metrics_for(y_true: np.ndarray, proba: np.ndarray, label_names, decide=None) -> dict:
    """The metrics of either task from probabilities: argmax for (N,) labels; for (N, L) multi-hot
    labels, ``decide(proba)`` (thresholds) gives the predictions."""
    multilabel = np.asarray(y_true).ndim == 2
    return task_metrics_of(y_true, decide(proba) if multilabel else proba.argmax(1), label_names, proba)


def format_metrics(m: dict) -> str:
    if m.get("multilabel"):
        lines = [f"n={m['n']}  micro-F1 {m['micro_f1']:.3f}  macro-F1 {m['macro_f1']:.3f}  samples-F1 "
                 f"{m['samples_f1']:.3f}" + (f"  mAP {m['map']:.3f}" if "map" in m else "")
                 + f"  subset accuracy {m['subset_accuracy']:.3f}  labels/row {m['labels_per_row']:.2f}"]
        for name, c in m["per_class"].items():
            lines.append(f"  {name:>12s}  P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  n={c['support']}")
        return "\n".join(lines)
    lines = [f"n={m['n']}  accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
             f"weighted-F1 {m['weighted_f1']:.3f}  balanced accuracy {m['balanced_accuracy']:.3f}"]
    for name, c in m["per_class"].items():
        lines.append(f"  {name:>12s}  P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  n={c['support']}")
    return "\n".join(lines)


def format_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


# the plots lived here before mmfuse/plots.py: their old import path keeps working
from .plots import PLAIN, plot_confusion, plot_history, plot_label_f1, plot_threshold_curve  # noqa: E402,F401
