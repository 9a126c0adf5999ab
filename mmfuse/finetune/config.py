"""The one configuration of a fine-tune run, saved as finetune.json's ``finetune`` entry.

The backbones are extract's own configurations, composed rather than copied: ``text`` is a
``TextExtractorConfig`` (model, max_length) and ``image`` an ``ImageExtractorConfig`` (model, weights,
seed), so their defaults and meaning are extraction's, and finetune.json nests them (``"text": {...}``,
``"image": {...}``). ``text_extractor()`` / ``image_extractor()`` point them at a run's saved ``text/``
folder and ``image.pt``.

The extractor configurations' extraction-only knobs (batch size, decode workers, JPEG draft, layout,
TorchScript) do not change what a fine-tune run trains: fine-tuning has its own ``batch_size`` and
``num_workers``. They are saved with the rest, but ``identity()``, what ``--resume`` compares, leaves them
out. ``from_dict`` reads both the nested entry and the flat one that earlier runs wrote (``text_model``,
``max_length``, ``image_model``, ``image_weights`` beside the other fields), so those runs still load and
resume.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

from ..errors import MmfuseError
from ..extract.image import ImageExtractorConfig
from ..extract.text import TextExtractorConfig
from ..precision import FINETUNE_PRECISIONS as PRECISIONS

ALL = -1  # --unfreeze-... all
# the extractor configurations' fields that only extraction uses: not part of a fine-tune run's identity
EXTRACTION_ONLY = ("batch_size", "num_workers", "draft", "channels_last", "optimize", "runtime")
# the flat fields earlier runs saved in finetune.json -> (nested config, its field)
FLAT_FIELDS = {"text_model": ("text", "model"), "max_length": ("text", "max_length"),
               "image_model": ("image", "model"), "image_weights": ("image", "weights")}


@dataclass(frozen=True)
class FineTuneConfig:
    text: TextExtractorConfig = field(default_factory=TextExtractorConfig)  # as extract's --text-model, --max-length
    image: ImageExtractorConfig = field(default_factory=ImageExtractorConfig)  # --image-model, --image-weights
    unfreeze_text_layers: int = 2  # the last N encoder layers train (-1: all, embeddings included)
    unfreeze_image_blocks: int = 1  # the last M image stages train (ResNet layer4 for 1; -1: all)
    epochs: int = 5  # maximum epochs (early stopping on validation macro-F1)
    lr_backbone: float = 2e-5  # AdamW peak lr of the unfrozen backbone layers (BERT fine-tuning range)
    lr_head: float = 1e-3  # AdamW peak lr of the fusion head (it starts from random weights)
    weight_decay: float = 1e-2  # AdamW weight decay
    batch_size: int = 16  # rows per forward pass
    grad_accum: int = 2  # forward passes per optimiser step: effective batch 32 where 16 fits
    warmup: float = 0.1  # fraction of optimiser steps with linear warm-up, then cosine decay to 0
    clip: float = 1.0  # gradient norm clipping
    patience: int = 2  # epochs without validation macro-F1 gain before stopping
    augment: bool = False  # train-only random resized crop, flip, colour jitter
    precision: str = "auto"  # auto: bf16 on CUDA with bf16 and on CPUs with AVX512-BF16/AMX, fp16 on
    #                          older CUDA (with a GradScaler), else fp32
    val_split: float = 0.2  # stratified validation fraction when no --val is given
    num_workers: int = 0  # image decode processes (0 on 2 cores: workers only take the model's cores)
    seed: int = 0  # seeds the head's init, the split, batch order, dropout, augmentation and image.seed

    def __post_init__(self):
        # One seed per run: ``seed`` is also the image model's init seed (weights=none), so image.seed is set
        # to it here rather than being a second knob that could disagree (a given image.seed is replaced).
        if self.image.seed != self.seed:
            object.__setattr__(self, "image", replace(self.image, seed=self.seed))
        if self.precision not in PRECISIONS:
            raise MmfuseError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.unfreeze_text_layers == 0 and self.unfreeze_image_blocks == 0:
            raise MmfuseError("--unfreeze-text-layers 0 and --unfreeze-image-blocks 0 train only the head: that is "
                              "mmfuse extract + mmfuse train-head, which is far faster")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise MmfuseError("--batch-size, --grad-accum and --epochs must be at least 1")

    def text_extractor(self, source: str | None = None) -> TextExtractorConfig:
        """The text backbone's extractor configuration (``source``: a run's saved text/ folder instead)."""
        return replace(self.text, model=source) if source else self.text

    def image_extractor(self, weights: str | None = None) -> ImageExtractorConfig:
        """The image backbone's extractor configuration (``weights``: a run's saved image.pt instead)."""
        return replace(self.image, weights=weights) if weights else self.image

    def to_dict(self) -> dict[str, Any]:
        """finetune.json's ``finetune`` entry: every field, the extractor configurations nested."""
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """What defines the run, as ``--resume`` compares it: every field, less the extractor configurations'
        extraction-only knobs (``EXTRACTION_ONLY``)."""
        d = self.to_dict()
        for part in ("text", "image"):
            d[part] = {k: v for k, v in d[part].items() if k not in EXTRACTION_ONLY}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FineTuneConfig:
        """The configuration of finetune.json's ``finetune`` entry, nested or in the flat shape of earlier runs.

        Every field of FineTuneConfig and the backbones' model (and max_length, weights) must be there (a
        KeyError names the missing one); extractor knobs missing or unknown take their defaults."""
        d = dict(d)
        parts: dict[str, dict] = {"text": dict(d.pop("text", None) or {}), "image": dict(d.pop("image", None) or {})}
        for old, (part, name) in FLAT_FIELDS.items():
            if old in d:
                parts[part].setdefault(name, d.pop(old))
        for part, required in (("text", ("model", "max_length")), ("image", ("model", "weights"))):
            for name in required:
                if name not in parts[part]:
                    raise KeyError(f"{part}.{name}")
        text = TextExtractorConfig(**{f.name: parts["text"][f.name] for f in fields(TextExtractorConfig)
                                      if f.name in parts["text"]})
        image = ImageExtractorConfig(**{f.name: parts["image"][f.name] for f in fields(ImageExtractorConfig)
                                        if f.name in parts["image"]})
        return cls(text=text, image=image, **{f.name: d[f.name] for f in fields(cls) if f.name not in parts})
