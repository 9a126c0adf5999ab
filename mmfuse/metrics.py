"""Classification metrics and the plots a user looks at (training curves, confusion matrix)."""
from __future__ import annotations

from pathlib import Path

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


# Text properties for names that are data (label names): shown as written, never parsed as mathtext or TeX,
# where a name like `$\bad$` would raise at draw time (Text's parse_math exists since matplotlib 3.5)
PLAIN = {"parse_math": False, "usetex": False}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(m: dict, path: Path, title: str = "") -> None:
    plt = _plt()
    cm, names = np.array(m["confusion_matrix"]), m["label_names"]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.1 * len(names) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", **PLAIN)
    ax.set_yticks(range(len(names)), names, **PLAIN)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title or f"confusion (macro-F1 {m['macro_f1']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_label_f1(m: dict, path: Path, title: str = "") -> None:
    """Per-label F1 bars (multi-label), each labelled with its support."""
    plt = _plt()
    names = m["label_names"]
    f1 = [m["per_class"][n]["f1"] for n in names]
    fig, ax = plt.subplots(figsize=(0.45 * len(names) + 3, 3.6))
    ax.bar(range(len(names)), f1, color="C0")
    for k, n in enumerate(names):
        ax.text(k, f1[k] + 0.01, str(m["per_class"][n]["support"]), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", **PLAIN)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("F1 (number: positives)")
    ax.set_title(title or f"per-label F1 (micro-F1 {m['micro_f1']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_threshold_curve(y_true: np.ndarray, proba: np.ndarray, path: Path, chosen=None, min_labels: int = 1,
                         title: str = "") -> None:
    """Micro-, macro- and samples-F1 against one global threshold; a dotted line per chosen threshold."""
    from .multilabel import GRID, decide

    plt = _plt()
    curves = {avg: [f1_score(y_true, decide(proba, t, min_labels), average=avg, zero_division=0) for t in GRID]
              for avg in ("micro", "macro", "samples")}
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for avg, values in curves.items():
        ax.plot(GRID, values, label=f"{avg}-F1")
    for t in sorted(set(np.round(np.atleast_1d(chosen), 2))) if chosen is not None else []:
        ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("global threshold")
    ax.set_ylabel("F1 (validation)")
    ax.legend()
    ax.set_title(title or "F1 against the threshold (dotted: the thresholds in use)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history: list[dict], path: Path, title: str = "", best_epoch: int | None = None) -> None:
    """Loss (train, val) and the validation scores per epoch; a dotted line marks the restored epoch."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    if any("val_loss" in h for h in history):
        a.plot(epochs, [h.get("val_loss", np.nan) for h in history], label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    for key, name, color in (("val_macro_f1", "macro-F1", "C2"), ("val_accuracy", "accuracy", "C3"),
                             ("val_micro_f1", "micro-F1", "C4"), ("val_samples_f1", "samples-F1", "C5"),
                             ("val_map", "mAP", "C6")):
        if any(key in h for h in history):
            b.plot(epochs, [h.get(key, np.nan) for h in history], label=name, color=color)
    if any(k.startswith("val_") and k != "val_loss" for h in history for k in h):
        b.legend()
    b.set_xlabel("epoch")
    b.set_ylabel("validation")
    if best_epoch:
        for ax in (a, b):
            ax.axvline(best_epoch, color="grey", linestyle=":", label="_restored")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
