"""Two-tower checkpoints (CLIP, SigLIP and others ``transformers`` loads as one model with a text and a
vision tower): each tower as a feature module, the projected embeddings that share one space beside the
towers' unprojected pooled outputs, and the class prompts' embeddings for a zero-shot head.

One forward pass per tower gives every stored vector: ``text_model``/``vision_model`` give the pooled
output, the projection (``text_projection``/``visual_projection``; SigLIP has none: its pooled output is
already the embedding) gives ``proj``. At load the projected vectors are checked against the model's own
``get_text_features``/``get_image_features`` on a small batch; a model where they differ is run through
those calls instead.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import BackboneError
from .common import close_to, sha256_files
from .hub import from_pretrained, load_config, quiet_transformers, weight_files

HINT = "pass the checkpoint's local folder (a save_pretrained folder with its tokenizer and image processor)"
_LOADED: dict[str, nn.Module] = {}  # source -> model: a checkpoint named for both towers is loaded once


def _as_tensor(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is it (5)."""
    return out if torch.is_tensor(out) else out.pooler_output


def load_paired(name: str):
    """(model, source, local, provenance base) of a two-tower checkpoint, loaded once per process."""
    from transformers import AutoModel

    config, source, local = load_config(name, "two-tower model", HINT)
    if source not in _LOADED:
        quiet_transformers()
        model = from_pretrained(lambda **kw: AutoModel.from_pretrained(source, **kw), name, source, local,
                                "two-tower model", HINT)
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise BackboneError(f"{name}: {type(model).__name__} has no get_text_features/get_image_features; "
                                "a two-tower model needs both")
        _LOADED.clear()  # keep one: a later run in this process with another checkpoint frees this one
        _LOADED[source] = model.eval()
    model = _LOADED[source].cpu()  # a run before may have left it on a GPU: every run starts on the CPU
    files = weight_files(source, local)
    base = {"model": name, "source": source, "revision": getattr(config, "_commit_hash", None),
            "weights_sha256": sha256_files(files) if files else None, "architecture": type(model).__name__,
            "paired": True}
    return model, source, local, base


def _pad_mask(batch: dict, pad_id) -> torch.Tensor:
    if "attention_mask" in batch:
        return batch["attention_mask"]
    ids = batch["input_ids"]
    return (ids != pad_id).long() if pad_id is not None else torch.ones_like(ids)


class PairedText(nn.Module):
    """A two-tower model's text tower: ``features(batch)`` -> {"pooled", "mean", "proj"} (B, D) each; texts at
    most ``max_length`` tokens, padded to it where the tower was trained so (SigLIP)."""

    def __init__(self, model: nn.Module, pad_id, max_length: int, pad_to_max_length: bool):
        super().__init__()
        self.model, self.pad_id = model, pad_id
        self.max_length, self.pad_to_max_length = max_length, pad_to_max_length
        self.projection = getattr(model, "text_projection", None)
        self.own_call = False

    def batch(self, tokenizer, texts: list[str]) -> dict:
        """A few short texts (prompts, the load-time check) as one batch of the tower's inputs."""
        enc = tokenizer(texts, truncation=True, max_length=self.max_length,
                        padding="max_length" if self.pad_to_max_length else True, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in tokenizer.model_input_names}

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model.text_model(**batch)
        mask = _pad_mask(batch, self.pad_id).unsqueeze(-1).to(out.last_hidden_state.dtype)  # (B, T, 1)
        mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        pooled = out.pooler_output
        if self.own_call:
            proj = _as_tensor(self.model.get_text_features(**batch))
        else:
            proj = self.projection(pooled) if self.projection is not None else pooled
        return {"pooled": pooled.float(), "mean": mean.float(), "proj": proj.float()}

    def verify(self, batch: dict) -> None:
        """Use the model's own get_text_features where tower + projection does not reproduce it (fp32)."""
        with torch.inference_mode():
            ref = _as_tensor(self.model.get_text_features(**batch)).float()
            self.own_call = not close_to(self.features(batch)["proj"], ref, 1e-6)


class PairedVision(nn.Module):
    """A two-tower model's vision tower: (B, 3, H, W) -> {"pooled", "mean", "proj"} (B, D) each; ``mean`` is
    the mean of the patch tokens (the class token left out where the tower has one)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.projection = getattr(model, "visual_projection", None)
        emb = getattr(model.vision_model, "embeddings", None)
        self.prefix = 1 if emb is not None and hasattr(emb, "class_embedding") else 0
        self.own_call = False

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model.vision_model(pixel_values=x)
        pooled, h = out.pooler_output, out.last_hidden_state  # (B, D), (B, 1 + P, D)
        if self.own_call:
            proj = _as_tensor(self.model.get_image_features(pixel_values=x))
        else:
            proj = self.projection(pooled) if self.projection is not None else pooled
        return {"pooled": pooled, "mean": h[:, self.prefix:].mean(1), "proj": proj}

    def verify(self, x: torch.Tensor) -> None:
        """Use the model's own get_image_features where tower + projection does not reproduce it (fp32)."""
        with torch.inference_mode():
            ref = _as_tensor(self.model.get_image_features(pixel_values=x)).float()
            self.own_call = not close_to(self(x)["proj"], ref, 1e-6)


def text_max_length(model: nn.Module) -> int | None:
    return getattr(model.config.text_config, "max_position_embeddings", None)


def pads_to_max_length(model: nn.Module) -> bool:
    """SigLIP's text tower was trained on texts padded to its maximum length and pools the last position."""
    return model.config.model_type.startswith("siglip")


def text_dims(model: nn.Module) -> dict[str, int]:
    hidden = int(model.config.text_config.hidden_size)
    proj = getattr(model, "text_projection", None)
    return {"text/pooled": hidden, "text/mean": hidden,
            "text/proj": int(proj.out_features) if isinstance(proj, nn.Linear) else hidden}


def logit_scale(model: nn.Module) -> tuple[float, float]:
    """(scale, bias) the model turns cosine similarities into logits with (bias 0 where it has none)."""
    scale = getattr(model, "logit_scale", None)
    bias = getattr(model, "logit_bias", None)
    return (float(scale.detach().exp()) if scale is not None else 100.0,
            float(bias.detach().reshape(-1)[0]) if bias is not None else 0.0)


def class_prompts(spec: str, label_names) -> list[str]:
    """One prompt per class: a template with ``{}`` filled with each class name, or a file with one prompt
    per line in the order of the label names."""
    from pathlib import Path

    names = list(label_names)
    if not names:
        raise BackboneError("--class-prompts needs the label names: this data set names none (give --label-names)")
    if "{}" in spec:
        return [spec.replace("{}", n) for n in names]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise BackboneError(f"--class-prompts {spec!r} is neither a template with {{}} nor a file of prompts")
    lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if len(lines) != len(names):
        raise BackboneError(f"{path}: {len(lines)} prompts for {len(names)} classes ({', '.join(names)}): "
                            "write one prompt per class, in that order")
    return lines


def encode_prompts(prompts: list[str], tokenizer, tower: PairedText) -> np.ndarray:
    """The prompts' projected text embeddings (C, D), in fp32."""
    device = next(tower.parameters()).device
    batch = {k: v.to(device) for k, v in tower.batch(tokenizer, prompts).items()}
    with torch.inference_mode():
        return tower.features(batch)["proj"].float().cpu().numpy()
