"""The plots a user looks at: training curves, confusion matrices, per-label F1 and thresholds. Grids,
``inspect`` and the report draw theirs with :func:`pyplot` and :data:`PLAIN` from here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score


# Text properties for names that are data (label names): shown as written, never parsed as mathtext or TeX,
# where a name like `$\bad$` would raise at draw time (Text's parse_math exists since matplotlib 3.5)
PLAIN = {"parse_math": False, "usetex": False}


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no window), imported when first needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(m: dict, path: Path, title: str = "") -> None:
    plt = pyplot()
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
    plt = pyplot()
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

    plt = pyplot()
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
    plt = pyplot()
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
