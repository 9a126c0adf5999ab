"""Image backbones from timm and Hugging Face, and the vision tower of a two-tower checkpoint.

Each is preprocessed by its own library (timm's ``resolve_data_config``/``create_transform``, the
checkpoint's image processor), so the cached vectors are what the library's own call gives:
- timm (``timm:NAME`` or ``timm/NAME``): ``forward_head(forward_features(x), pre_logits=True)`` of
  ``create_model(NAME, num_classes=0)`` as ``pooled``; token models add ``cls`` and ``mean`` (of the
  patch tokens);
- Hugging Face vision encoders (ViT, DINOv2, ConvNeXt, Swin, ... by hub id or folder): ``pooler_output``
  as ``pooled``, and ``cls`` / ``mean`` of the last layer's tokens where the model has them;
- a two-tower checkpoint's vision tower (:mod:`.towers`): ``pooled``, ``mean`` and ``proj``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..errors import BackboneError
from .common import sha256_files
from .hub import from_pretrained, is_paired, load_config, quiet_transformers, weight_files

TIMM_PREFIXES = ("timm:", "timm/")
HF_HINT = ("pass a local folder saved with save_pretrained (model and image processor), e.g. "
           "--image-model path/to/folder")


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIXES)


def is_hf_checkpoint(name: str) -> bool:
    """A local folder with a config.json, or a hub id (owner/name) that is not a timm name."""
    path = Path(name).expanduser()
    return (path / "config.json").is_file() or (not path.exists() and "/" in name and not is_timm(name)
                                               and not name.startswith((".", "/", "~")))


class LibraryTransform:
    """PIL image -> normalised float (3, H, W) by the backbone library's own preprocessing (picklable, for
    DataLoader workers)."""

    def __init__(self, fn, processor: bool = False):
        self.fn, self.processor = fn, processor

    def __call__(self, img) -> torch.Tensor:
        return self.fn(images=img, return_tensors="pt")["pixel_values"][0] if self.processor else self.fn(img)


def _prep(transform: LibraryTransform, description: dict) -> dict:
    from PIL import Image

    shape = tuple(transform(Image.new("RGB", (64, 48))).shape)  # (3, H, W) the model is fed
    return {"transform": transform, "input_size": shape, "draft": math.ceil(max(shape[1:]) * 1.15),
            **description}


class TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.prefix = model, int(getattr(model, "num_prefix_tokens", 0) or 0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.model.forward_features(x)  # (B, C, H, W) or (B, prefix + P, D)
        out = {"pooled": self.model.forward_head(h, pre_logits=True)}
        if h.ndim == 3:  # (B, prefix + P, D) tokens
            if getattr(self.model, "cls_token", None) is not None:  # not a register-only model
                out["cls"] = h[:, 0]
            out["mean"] = h[:, self.prefix:].mean(1)
        return out


def load_timm(cfg) -> tuple[nn.Module, dict, dict]:
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except ImportError:
        raise BackboneError(f"{cfg.model} needs timm: pip install timm (or pip install 'mmfuse[backbones]')") from None
    name = cfg.model.split(":", 1)[1] if cfg.model.startswith("timm:") else cfg.model.split("/", 1)[1]
    w = cfg.weights
    kw: dict = {"pretrained": w.lower() != "none", "num_classes": 0}
    if w.lower() == "none":
        weights = f"random init (seed {cfg.seed})"
    elif w.upper() == "DEFAULT":
        weights = None  # known once the model says where its pretrained weights come from
    else:
        path = Path(w).expanduser()
        if not path.is_file():
            raise BackboneError(f"image weights file not found: {path}")
        kw["pretrained_cfg_overlay"] = {"file": str(path)}
        weights = {"file": str(path), "sha256": sha256_files([path])}
    torch.manual_seed(cfg.seed)
    try:
        model = timm.create_model(name, **kw)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise BackboneError(f"unknown timm model {name!r}: see timm.list_models()") from None
        raise BackboneError(f"cannot load timm model {name} ({w}): {e}".split("\n")[0]) from None
    except Exception as e:  # noqa: BLE001 - a download failure is one line
        raise BackboneError(f"cannot load the pretrained weights of timm model {name} ({type(e).__name__}: {e}"
                            .split("\n")[0] + "). Offline: pass --image-weights path/to/weights.safetensors "
                            "(or .pth), or --image-weights none") from None
    if weights is None:
        pc = model.pretrained_cfg
        weights = {"name": pc.get("hf_hub_id") or f"{name}.{pc.get('tag')}", "url": pc.get("url") or None}
    data = resolve_data_config({}, model=model)
    prep = _prep(LibraryTransform(create_transform(**data, is_training=False)),
                 {"library": "timm", **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}})
    return TimmFeatures(model.eval()), prep, {"weights": weights, "node": "forward_head(pre_logits=True)",
                                             "family": "timm"}


class HFVisionFeatures(nn.Module):
    def __init__(self, model: nn.Module, trained_pooler: bool = True):
        super().__init__()
        self.model, self.trained_pooler = model, trained_pooler
        emb = getattr(model, "embeddings", None)
        has_cls = emb is not None and (hasattr(emb, "cls_token") or hasattr(emb, "class_embedding"))
        self.prefix = (1 + int(hasattr(emb, "distillation_token"))
                       + int(getattr(model.config, "num_register_tokens", 0) or 0)) if has_cls else 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(pixel_values=x)
        h, pooled, d = out.last_hidden_state, getattr(out, "pooler_output", None), {}
        pooled = pooled if self.trained_pooler else None  # a pooler the checkpoint has no weights for is random
        if h.ndim == 3:  # (B, prefix + P, D) tokens
            if self.prefix:
                d["cls"] = h[:, 0]
            d["mean"] = h[:, self.prefix:].mean(1)
        elif pooled is None:  # (B, C, H, W) feature map
            pooled = h.mean((2, 3))
        d["pooled"] = (pooled if pooled is not None else d.get("cls", d.get("mean"))).flatten(1)
        return d


def _processor(source: str, local: bool, name: str):
    from transformers import AutoImageProcessor

    try:
        return from_pretrained(lambda **kw: AutoImageProcessor.from_pretrained(source, **kw), name, source, local,
                               "image processor of", HF_HINT)
    except BackboneError as e:
        raise BackboneError(f"{e} (the folder needs its preprocessor_config.json, as save_pretrained of the "
                            "image processor writes it)") from None


def load_hf_vision(cfg) -> tuple[nn.Module, dict, dict]:
    """A Hugging Face vision encoder, or the vision tower of a two-tower checkpoint."""
    from transformers import AutoModel

    if cfg.weights.upper() != "DEFAULT":
        raise BackboneError(f"--image-weights {cfg.weights} applies to torchvision and timm models; a Hugging "
                            f"Face model's weights are those of its folder or hub id ({cfg.model})")
    config, source, local = load_config(cfg.model, "image model", HF_HINT)
    processor = _processor(source, local, cfg.model)
    prep_desc = {"library": "transformers",
                 **{k: v for k, v in processor.to_dict().items() if isinstance(v, (int, float, str, bool, list,
                                                                                  tuple, dict, type(None)))}}
    prep = _prep(LibraryTransform(processor, processor=True), prep_desc)
    files = weight_files(source, local)
    weights = {"source": source, "revision": getattr(config, "_commit_hash", None),
               "sha256": sha256_files(files) if files else None}
    if is_paired(config):
        from .towers import PairedVision, load_paired

        model, *_ = load_paired(cfg.model)
        features = PairedVision(model)
        features.verify(torch.zeros(1, *prep["input_size"]))
        return features, prep, {"weights": weights, "node": "vision_model pooler_output; proj: get_image_features",
                                "family": "paired", "architecture": type(model).__name__}
    quiet_transformers()
    model, info = from_pretrained(lambda **kw: AutoModel.from_pretrained(source, output_loading_info=True, **kw),
                                  cfg.model, source, local, "image model", HF_HINT)
    # a classification checkpoint (ViTForImageClassification, ...) has no pooler weights: AutoModel would add
    # a randomly initialised one; its class token (or mean) is the pooled vector then
    trained = not any(k.split(".")[0] == "pooler" or ".pooler." in k for k in info.get("missing_keys", ()))
    node = "pooler_output" if trained else "class token (the checkpoint has no trained pooler)"
    return HFVisionFeatures(model.eval(), trained), prep, {"weights": weights, "node": node, "family": "transformers",
                                                           "architecture": type(model).__name__}


POOLING = {  # what each stored image vector is, recorded in the provenance
    "pooled": "the pooled vector before the classifier (torchvision, timm pre-logits, HF pooler_output)",
    "cls": "the last layer's class token",
    "mean": "mean of the last layer's patch tokens (class and register tokens left out)",
    "proj": "get_image_features: the projected embedding, aligned with text/proj",
}
