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
    labels = np.arange(len(label_names))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1(y_true, y_pred, len(label_names)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "per_class": {n: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
                      for k, n in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "label_names": list(label_names),
    }


def format_metrics(m: dict) -> str:
    lines = [f"n={m['n']}  accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
             f"weighted-F1 {m['weighted_f1']:.3f}  balanced accuracy {m['balanced_accuracy']:.3f}"]
    for name, c in m["per_class"].items():
        lines.append(f"  {name:>12s}  P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  n={c['support']}")
    return "\n".join(lines)


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
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
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


def plot_history(history: list[dict], path: Path, title: str = "", best_epoch: int | None = None) -> None:
    """Loss (train, val) and validation macro-F1 per epoch; a dotted line marks the restored epoch."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    if any("val_loss" in h for h in history):
        a.plot(epochs, [h.get("val_loss", np.nan) for h in history], label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    if any("val_macro_f1" in h for h in history):
        b.plot(epochs, [h.get("val_macro_f1", np.nan) for h in history], label="macro-F1", color="C2")
        b.plot(epochs, [h.get("val_accuracy", np.nan) for h in history], label="accuracy", color="C3")
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
