"""The one configuration of a fine-tune run, saved flat as finetune.json's ``finetune`` entry.

The backbone fields are extract's own: their defaults are the extractor configurations' defaults, and
``text_extractor()`` / ``image_extractor()`` build the configurations the backbones load with. They stay
flat fields (not nested extractor configurations): finetune.json, which ``--resume`` compares and
``FineTunedRun`` and cache provenance read, keeps its shape, and the extractors' extraction-only knobs
(batch size, decode workers, TorchScript, layout) stay out of the fine-tune run's identity.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import MmfuseError
from ..extract.image import ImageExtractorConfig
from ..extract.text import TextExtractorConfig
from ..precision import FINETUNE_PRECISIONS as PRECISIONS

ALL = -1  # --unfreeze-... all


@dataclass(frozen=True)
class FineTuneConfig:
    text_model: str = TextExtractorConfig.model  # as extract --text-model: hub id, local folder, or minilm
    image_model: str = ImageExtractorConfig.model  # as extract --image-model: torchvision name or efficientnet-lite*
    image_weights: str = ImageExtractorConfig.weights  # as extract --image-weights: DEFAULT, a name, none, or a file
    max_length: int = TextExtractorConfig.max_length  # tokens per text, as in extraction
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
    seed: int = 0  # seeds the head's init, the split, batch order, dropout and augmentation

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise MmfuseError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.unfreeze_text_layers == 0 and self.unfreeze_image_blocks == 0:
            raise MmfuseError("--unfreeze-text-layers 0 and --unfreeze-image-blocks 0 train only the head: that is "
                              "mmfuse extract + mmfuse train-head, which is far faster")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise MmfuseError("--batch-size, --grad-accum and --epochs must be at least 1")

    def text_extractor(self, source: str | None = None) -> TextExtractorConfig:
        """The text backbone's extractor configuration (``source``: a run's saved text/ folder instead)."""
        return TextExtractorConfig(source or self.text_model, self.max_length)

    def image_extractor(self, weights: str | None = None) -> ImageExtractorConfig:
        """The image backbone's extractor configuration (``weights``: a run's saved image.pt instead)."""
        return ImageExtractorConfig(self.image_model, weights or self.image_weights, seed=self.seed)
