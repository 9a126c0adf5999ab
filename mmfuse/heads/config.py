"""The one configuration of a head and its training, saved as JSON into the run folder."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..errors import MmfuseError
from ..multilabel import THRESHOLDS

LOSSES = ("ce", "hinge")
CLASS_WEIGHTS = ("none", "balanced")
TEXT_FEATURES = ("auto", "cls", "mean")
MONITORS = ("auto", "macro_f1", "micro_f1", "samples_f1", "map")
COMBINES = ("mean", "union")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class HeadConfig:
    # Measured by bench/defaults.py on mvsa (minilm + efficientnet-lite0, 3,199 rows): each default against an
    # alternative on the same 5 folds, 3 seeds each, as the per-fold difference default - alternative (mean ±
    # std over folds, folds ahead); seconds per fit on one thread of an AVX-512 Xeon (and the same Xeon
    # restricted to AVX2, 1 seed, where speed decided). "A tie" = inside its std.
    fusion: str = "concat"  # a registered head (mmfuse.heads.list_heads())
    text_feature: str = "auto"  # cached text vector: cls ([CLS] token), mean (masked mean), or auto: the pooling
    #                             the encoder was trained with where its folder says (sentence-transformers:
    #                             minilm -> mean: +0.022 ± 0.008 over cls, 5 of 5, concat), else cls
    hidden: int = 256  # width of the MLP / common projection space (vs 128: -0.004 ± 0.007, vs 512: -0.006 ±
    #                    0.009, both ties; 512 costs 1.36x the time)
    dropout: float = 0.2  # dropout on inputs and hidden layers (vs 0: concat -0.005 ± 0.006, weighted/late ties,
    #                       gated +0.015 ± 0.013, 5 of 5; vs 0.5: +0.007 ± 0.015)
    heads: int = 4  # attention heads (attention fusion; vs 1: +0.007 ± 0.010, 5 of 5)
    align_weight: float = 0.1  # weight of the contrastive InfoNCE loss (aligned fusion; vs 0: +0.007 ± 0.007, 5 of 5)
    temperature: float = 0.07  # InfoNCE temperature (aligned fusion; vs 0.2: +0.009 ± 0.010, 4 of 5)
    epochs: int = 30  # maximum epochs (early stopping ends most fits by epoch 20; grids default to 20)
    lr: float = 3e-4  # AdamW peak learning rate (vs 1e-3: +0.005 ± 0.009, 4 of 5)
    weight_decay: float = 1e-2  # AdamW's decoupled weight decay: at these learning rates it hardly moves the
    #                             weights (1e-2 and 0 gave the same predictions; 0.1 and 1.0 within 0.001 on
    #                             average over the default grid's other axes)
    batch_size: int = 64  # rows per step (vs 128 at dropout 0.2, 3 seeds: concat and weighted +0.007 for 128,
    #                       gated -0.007, late -0.001, a tie on average at 0.76x the time; over the default grid,
    #                       1 seed, 128 scored -0.003 per configuration (behind on 24 of 36) at 0.90x: kept)
    warmup: float = 0.1  # fraction of steps with linear warm-up, then cosine decay to 0 (vs 0: -0.002 ± 0.014, a tie)
    clip: float = 1.0  # gradient norm clipping (vs none: -0.001 ± 0.005, a tie)
    loss: str = "ce"  # ce (softmax cross-entropy) or hinge (multiclass SVM) (ce vs hinge: +0.004 ± 0.005, 4 of 5)
    class_weight: str = "balanced"  # balanced (scikit-learn's) or none (+0.002 ± 0.014, a tie; kept because
    #                                 macro-F1 weighs the rare classes equally)
    ema: float = 0.0  # decay per step of an exponential moving average of the weights, which validation scores and
    #                   the fit keeps (0: off, the trained weights themselves). Measured (3 seeds x 5 folds): 0.99
    #                   +0.005 weighted, +0.003 concat, ties gated / late, at 1.2-1.3x the time: off
    label_smoothing: float = 0.0  # cross-entropy label smoothing (vs 0.1: +0.017 ± 0.011, 5 of 5)
    patience: int = 5  # epochs without validation gain before stopping (vs 3: concat -0.000 ± 0.001 at 0.82x the
    #                    time; over the default grid, 1 seed, 3 scored -0.003 ± 0.007 per configuration, behind
    #                    on 20 of 36 and equal on 9, at 0.71x the time: kept, `--patience 3` for speed)
    C: float | str = 1e-3  # logreg inverse regularisation strength, or "auto" (searched by CV on the training
    #                        part: 1e-6..1e6 coarse, then halved intervals). 1e-3 on mvsa's 1664 standardised
    #                        dims: +0.018 ± 0.014 over 1e-2, 5 of 5; +0.047 ± 0.017 over 1, 5 of 5
    monitor: str = "auto"  # validation score for early stopping: auto (macro_f1 single-label, micro_f1
    #                        multi-label), macro_f1, micro_f1, samples_f1 or map (multi-label)
    thresholds: str = "global"  # multi-label decision: global (one threshold tuned on validation for micro-F1),
    #                             per-label (tuned per label where it has 5+ validation positives, else global) or
    #                             fixed (0.5). On a 9-label mvsa CSV (bench/multilabel.py, 5 held-out splits, concat):
    #                             micro-F1 global 0.747, fixed 0.746, per-label 0.738 (per-label overfits the
    #                             validation part)
    min_labels: int = 1  # multi-label: 1 gives a row where no label passes its top label; 0 may predict none
    combine: str = "mean"  # late fusion, multi-label: mean (weighted mean of the two heads' probabilities) or
    #                        union (a label when either modality's head predicts it: the max)
    precision: str = "fp32"  # fp32, or bf16: autocast the training matmuls (4x the fp32 matmul rate on CPUs
    #                          with AVX-512 BF16; weights, optimiser and predictions stay fp32; emulated bf16 on
    #                          an AVX2 CPU is far slower, so grids choose by the CPU's capability)
    seed: int = 0  # seeds initialisation, batch order and the validation split

    def __post_init__(self):
        from .registry import list_heads
        checks = {"fusion": list_heads(), "loss": LOSSES, "class_weight": CLASS_WEIGHTS,
                  "text_feature": TEXT_FEATURES, "precision": PRECISIONS, "monitor": MONITORS,
                  "thresholds": THRESHOLDS, "combine": COMBINES, "min_labels": (0, 1)}
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
