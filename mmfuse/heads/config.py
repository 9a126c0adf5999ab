"""The one configuration of a head and its training, saved as JSON into the run folder."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..errors import MmfuseError
from ..multilabel import THRESHOLDS

LOSSES = ("ce", "hinge")
CLASS_WEIGHTS = ("none", "balanced")
# the cached vectors a head may read: text/{cls,mean} (BERT-family), text/{pooled,proj} (a two-tower text tower);
# image/pooled (every cache), image/{cls,mean} (ViT-like), image/proj (two-tower); auto: heads.features.resolve_feature
TEXT_FEATURES = ("auto", "cls", "mean", "pooled", "proj")
IMAGE_FEATURES = ("auto", "pooled", "cls", "mean", "proj")
MONITORS = ("auto", "macro_f1", "micro_f1", "samples_f1", "map")
COMBINES = ("mean", "union")
ZEROSHOT_FROM = ("image", "text", "both")
from ..precision import HEAD_PRECISIONS as PRECISIONS  # noqa: E402 - heads train in fp32 or bf16


@dataclass(frozen=True)
class HeadConfig:
    # Each default was chosen by a measurement on mvsa: bench/experiments/defaults.py (make bench-defaults)
    # unless noted; the numbers are in docs/heads.md ("Where each default comes from").
    fusion: str = "concat"  # a registered head (mmfuse.heads.list_heads())
    text_feature: str = "auto"  # cached text vector: cls ([CLS] token), mean (masked mean), or auto: the pooling
    #                             the encoder was trained with where its folder says (sentence-transformers), else cls;
    #                             pooled / proj (a two-tower text tower's pooled output / its projected, aligned
    #                             embedding); auto takes proj where the cache has it (heads.features.resolve_feature)
    image_feature: str = "auto"  # cached image vector: pooled, cls / mean (ViT-like: CLS token, mean of patch tokens),
    #                              proj (two-tower projected embedding), or auto: proj where the cache has it, else
    #                              pooled
    hidden: int = 256  # width of the MLP / common projection space (128 and 512 tie; 512 is slower)
    dropout: float = 0.2  # dropout on inputs and hidden layers
    heads: int = 4  # attention heads (attention fusion)
    align_weight: float = 0.1  # weight of the contrastive InfoNCE loss (aligned fusion)
    temperature: float = 0.07  # InfoNCE temperature (aligned fusion)
    epochs: int = 30  # maximum epochs (early stopping ends most fits by epoch 20; grids default to 20)
    lr: float = 3e-4  # AdamW peak learning rate
    weight_decay: float = 1e-2  # AdamW's decoupled weight decay (hardly moves the weights at these learning rates)
    batch_size: int = 64  # rows per step (128 ties on average and is faster; kept by the default grid's scores)
    warmup: float = 0.1  # fraction of steps with linear warm-up, then cosine decay to 0 (0 ties)
    clip: float = 1.0  # gradient norm clipping (none ties)
    loss: str = "ce"  # ce (softmax cross-entropy) or hinge (multiclass SVM)
    class_weight: str = "balanced"  # balanced (scikit-learn's) or none (a tie; kept because macro-F1 weighs the
    #                                 rare classes equally)
    ema: float = 0.0  # decay per step of an exponential moving average of the weights, which validation scores and
    #                   the fit keeps (0: off, the trained weights themselves; 0.99 ties at 1.2-1.3x the time)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    patience: int = 5  # epochs without validation gain before stopping (3 is faster and slightly worse)
    C: float | str = 1e-3  # logreg inverse regularisation strength, or "auto" (searched by CV on the training
    #                        part: 1e-6..1e6 coarse, then halved intervals)
    monitor: str = "auto"  # validation score for early stopping: auto (macro_f1 single-label, micro_f1
    #                        multi-label), macro_f1, micro_f1, samples_f1 or map (multi-label)
    thresholds: str = "global"  # multi-label decision: global (one threshold tuned on validation for micro-F1),
    #                             per-label (tuned per label where it has 5+ validation positives, else global) or
    #                             fixed (0.5); bench/experiments/multilabel.py: per-label overfits the validation part
    min_labels: int = 1  # multi-label: 1 gives a row where no label passes its top label; 0 may predict none
    combine: str = "mean"  # late fusion, multi-label: mean (weighted mean of the two heads' probabilities) or
    #                        union (a label when either modality's head predicts it: the max)
    precision: str = "fp32"  # fp32, or bf16: autocast the training matmuls (weights, optimiser and predictions stay
    #                          fp32); grids choose by the CPU's capability (native bf16 is faster, emulated slower)
    seed: int = 0  # seeds initialisation, batch order and the validation split
    zeroshot_from: str = "image"  # zeroshot head: the embedding compared with the class prompts: image, text, or
    #                               both (the mean of the two cosines)

    def __post_init__(self):
        from .registry import list_heads
        checks = {"fusion": list_heads(), "loss": LOSSES, "class_weight": CLASS_WEIGHTS,
                  "text_feature": TEXT_FEATURES, "image_feature": IMAGE_FEATURES, "precision": PRECISIONS,
                  "monitor": MONITORS, "thresholds": THRESHOLDS, "combine": COMBINES, "zeroshot_from": ZEROSHOT_FROM, "min_labels": (0, 1)}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise MmfuseError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.C != "auto" and not (isinstance(self.C, (int, float)) and self.C > 0):
            raise MmfuseError(f"C must be a positive number or auto, not {self.C!r}")
        if not 0 <= self.ema < 1:
            raise MmfuseError(f"ema must be a decay in [0, 1) (0: off), not {self.ema!r}")
        if self.hidden % self.heads:
            raise MmfuseError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: Path) -> "HeadConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes) -> "HeadConfig":
        return replace(self, **changes)
