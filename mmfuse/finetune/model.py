"""The fine-tuned model: backbones from the extraction loaders + a registered fusion head, which of
their layers train (``freeze``, ``_train_mode``), and its logits over a loader."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import MmfuseError
from ..extract.image import feature_extractor, load_image_model
from ..extract.text import load_text_encoder, pool_text, resolve_text_feature
from ..heads import HeadConfig, create_head
from ..heads.registry import get_head_class, list_heads
from ..precision import autocast
from .config import ALL, FineTuneConfig


class FineTuneModel(nn.Module):
    """Text encoder + image feature extractor + a registered fusion head. Features are standardised
    with fixed statistics of the first training rows, as the cached-feature heads standardise theirs."""

    def __init__(self, text: nn.Module, image: nn.Module, head: nn.Module, text_feature: str,
                 text_dim: int, image_dim: int):
        super().__init__()
        self.text, self.image, self.head, self.text_feature = text, image, head, text_feature
        for name, dim in (("text", text_dim), ("image", image_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (text (B, Dt), image (B, Di)) vectors, as extraction computes them."""
        text_in = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.text(**text_in).last_hidden_state  # (B, T, Dt)
        cls, mean = pool_text(hidden, batch["attention_mask"])
        return (cls if self.text_feature == "cls" else mean), self.image(batch["pixels"])["pooled"].flatten(1)

    def forward(self, batch: dict):
        t, i = self.features(batch)
        return self.head((t.float() - self.text_mean) / self.text_std, (i.float() - self.image_mean) / self.image_std)


def build_model(cfg: FineTuneConfig, head_cfg: HeadConfig, n_classes: int, *, text_source: str | None = None,
                image_weights: str | None = None):
    """(model, tokenizer, prep, text provenance, image provenance, image model) with the head's init
    seeded; the backbones from the extraction loaders (or a run's saved ones)."""
    if getattr(get_head_class(head_cfg.fusion), "kind", "module") != "module":
        raise MmfuseError(f"--fusion {head_cfg.fusion} is not a torch module and cannot be fine-tuned end to end: "
                          f"use one of the torch heads ({', '.join(list_heads(kind='module'))})")
    tokenizer, text_model, text_prov = load_text_encoder(cfg.text_extractor(text_source))
    if text_prov.get("paired"):
        raise MmfuseError(f"{cfg.text.model} is a two-tower checkpoint: fine-tuning takes BERT-family text encoders "
                          "(extract its towers frozen with mmfuse extract --model)")
    image_model, prep, weights = load_image_model(cfg.image_extractor(image_weights))
    features, node = feature_extractor(image_model)
    with torch.no_grad():
        dim = features.eval()(torch.zeros(1, 3, prep["crop"], prep["crop"]))["pooled"].flatten(1).shape[1]
    torch.manual_seed(cfg.seed)
    head = create_head(head_cfg.fusion, text_prov["hidden_size"], dim, n_classes, head_cfg)
    text_feature = resolve_text_feature(head_cfg.text_feature, text_prov)  # auto: the encoder's own pooling
    if text_feature not in ("cls", "mean") or head_cfg.image_feature not in ("auto", "pooled"):
        raise MmfuseError(f"fine-tuning trains on text/cls or text/mean and image/pooled, not --text-feature "
                          f"{head_cfg.text_feature} --image-feature {head_cfg.image_feature}")
    model = FineTuneModel(text_model, features, head, text_feature, text_prov["hidden_size"], dim)
    model.head_classes = n_classes
    image_prov = {"model": cfg.image.model, "weights": weights, "node": node, "dim": int(dim), "preprocessing": prep}
    return model, tokenizer, prep, text_prov, image_prov, image_model


def predict_loader(model: FineTuneModel, loader, precision: str, device: torch.device) -> np.ndarray:
    """Logits (N, C) in the loader's (a PairLoader's) record order."""
    model.eval()
    out = np.zeros((len(loader.records), model.head_classes), np.float32)
    with torch.inference_mode(), autocast(device, precision):
        for pos, batch, _ in loader:
            out[pos] = model(batch).logits.float().cpu().numpy()
    return out


# --- freezing -----------------------------------------------------------------------------------------
def text_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (BERT: encoder.layer)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise MmfuseError(f"cannot find the {n} transformer layers of {type(model).__name__} to unfreeze")


def image_stages(model: nn.Module, features: nn.Module) -> list[tuple[str, ...]]:
    """The image model's stages in order, each as module names: ResNet stem, layer1..layer4;
    EfficientNet-Lite stem, each of ``_blocks`` (the head convs with the last); torchvision
    ``features.N``; else the top-level children. Only modules the feature extractor uses count."""
    used = {k.split(".")[0] for k in features.state_dict()}
    kids = [n for n, m in model.named_children() if n in used and any(True for _ in m.parameters())]
    if all(f"layer{i}" in kids for i in range(1, 5)):
        return [tuple(k for k in kids if not k.startswith("layer"))] + [(f"layer{i}",) for i in range(1, 5)]
    for seq in ("_blocks", "features"):
        if seq in kids:
            i = kids.index(seq)
            blocks = [(f"{seq}.{name}",) for name, m in getattr(model, seq).named_children()
                      if any(True for _ in m.parameters())]
            stages = ([tuple(kids[:i])] if i else []) + blocks
            stages[-1] = stages[-1] + tuple(kids[i + 1:])
            return stages
    return [(k,) for k in kids]


def freeze(text_model: nn.Module, image_model: nn.Module, image_features: nn.Module, cfg: FineTuneConfig
           ) -> tuple[list[nn.Module], list[nn.Module]]:
    """Set requires_grad so that only the last N text layers and M image stages (and the head) train.
    Returns (frozen modules, which stay in eval mode: fixed BatchNorm statistics, no dropout;
    the trainable image stages' modules)."""
    frozen: list[nn.Module] = []
    layers = text_layers(text_model)
    n = len(layers) if cfg.unfreeze_text_layers == ALL else min(cfg.unfreeze_text_layers, len(layers))
    text_model.requires_grad_(cfg.unfreeze_text_layers == ALL)
    if cfg.unfreeze_text_layers != ALL:
        for layer in list(layers)[len(layers) - n:]:
            layer.requires_grad_(True)
        frozen += [m for name, m in text_model.named_children() if not any(p.requires_grad for p in m.parameters())]
        frozen += list(layers)[:len(layers) - n]
    stages = image_stages(image_model, image_features)
    m = len(stages) if cfg.unfreeze_image_blocks == ALL else min(cfg.unfreeze_image_blocks, len(stages))
    image_features.requires_grad_(cfg.unfreeze_image_blocks == ALL)  # all: parameters outside stages too
    if cfg.unfreeze_image_blocks == ALL:
        return frozen, [image_features]
    trainable = []
    for i, stage in enumerate(stages):
        modules = [image_features.get_submodule(name) for name in stage]
        for module in modules:
            module.requires_grad_(i >= len(stages) - m)
        (frozen if i < len(stages) - m else trainable).extend(modules)
    return frozen, trainable


def _train_mode(model: FineTuneModel, parts: tuple[list[nn.Module], list[nn.Module]], pooled_node: str) -> None:
    """Training mode for what trains, eval mode (fixed BatchNorm statistics, no dropout) for the frozen
    modules. The traced image model runs its eval graph, then its trainable stages are put back in
    training mode: its training graph bakes functional dropout and drop-connect (EfficientNet-Lite) into
    every block, frozen ones included, while BatchNorm and Dropout modules follow their own flags. The
    pooled feature's dropout stays off, so the head sees what extraction computes."""
    frozen, image_trainable = parts
    model.train()
    model.image.train(False)  # a DualGraphModule switches graphs in train(), not by its flag
    for module in image_trainable:
        module.train()
    for module in frozen:
        module.eval()
    if pooled_node in dict(model.image.named_modules()):
        model.image.get_submodule(pooled_node).eval()
