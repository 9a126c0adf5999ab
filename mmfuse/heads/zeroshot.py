"""The zero-shot head: no training, the floor a trained head must beat on a two-tower cache.

``mmfuse extract --model CLIP_OR_SIGLIP --class-prompts "a photo that feels {}"`` stores each class prompt's
projected text embedding (``zeroshot/text``) beside the rows' projected image and text embeddings. This head
scores each row by the cosine similarity of its image embedding (``zeroshot_from="image"``), its text
embedding (``"text"``) or both (the mean of the two) to each class prompt, turned into logits the way the
model was trained to (``logit_scale * cos + logit_bias``): softmax over the classes, or per-label sigmoid
for multi-label data with the thresholds tuned on the validation rows like any head's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import MmfuseError
from ..safe import corrupt, load_npz
from .registry import register_head


@register_head("zeroshot", training="none", own=("zeroshot_from",),
               uses=("fusion", "text_feature", "image_feature", "zeroshot_from", "thresholds", "min_labels", "seed"))
class ZeroShotHead:
    """Cosine similarity to the class prompts' embeddings; fit only takes the prompts from the features."""

    kind = "sklearn"  # fit / decision_function / save / load, no torch training loop
    raw_features = True  # cosines of the embeddings as extracted, not of standardised features
    task = "single"

    def __init__(self, text_dim: int, image_dim: int, n_out: int, cfg):
        self.cfg, self.n_out, self.dims = cfg, n_out, (text_dim, image_dim)

    def fit(self, t: torch.Tensor, i: torch.Tensor, y: np.ndarray, weight, prompts: dict | None = None):
        if not prompts:
            raise MmfuseError("the zeroshot head needs class prompts in the cache: extract it with a two-tower model "
                              "(--model CLIP_OR_SIGLIP) and --class-prompts 'a photo that feels {}'")
        if self.cfg.zeroshot_from != "text" and not prompts.get("image_matches", True):
            raise MmfuseError("the class prompts were embedded by another model than the image vectors: zeroshot "
                              "--zeroshot-from image/both needs one two-tower checkpoint for both (extract --model)")
        emb = np.asarray(prompts["embeddings"], np.float32)  # (C, D)
        if len(emb) != self.n_out:
            raise MmfuseError(f"the cache holds {len(emb)} class prompts for {self.n_out} classes: extract it again "
                              "with --class-prompts")
        self.prompts_ = emb
        self.scale_, self.bias_ = float(prompts["logit_scale"]), float(prompts["logit_bias"])
        self._check()
        return self

    def _check(self) -> None:
        need = {"image": (1,), "text": (0,), "both": (0, 1)}[self.cfg.zeroshot_from]
        for k in need:
            if self.dims[k] != self.prompts_.shape[1]:
                name = ("text", "image")[k]
                raise MmfuseError(f"zeroshot compares the {name} embedding ({self.dims[k]} wide) with the class "
                                  f"prompts ({self.prompts_.shape[1]} wide): use --{name}-feature proj (or auto) on a "
                                  "cache extracted with one two-tower model")

    def decision_function(self, t: torch.Tensor, i: torch.Tensor) -> np.ndarray:
        p = torch.nn.functional.normalize(torch.from_numpy(self.prompts_), dim=1)  # (C, D)
        sims = [torch.nn.functional.normalize(x.float(), dim=1) @ p.T  # (N, C)
                for x in {"image": (i,), "text": (t,), "both": (i, t)}[self.cfg.zeroshot_from]]
        logits = torch.stack(sims).mean(0) * self.scale_ + self.bias_  # (N, C)
        if self.task == "multilabel" and self.bias_ == 0:  # CLIP: no sigmoid bias was trained; per-row centring
            logits = logits - logits.mean(1, keepdim=True)  # keeps sigmoid(logit) away from 1.0 for every label
        return logits.numpy().astype(np.float32)

    def save(self, folder: Path) -> None:
        np.savez(folder / "zeroshot.npz", prompts=self.prompts_, scale=np.float32(self.scale_),
                 bias=np.float32(self.bias_))

    def load(self, folder: Path) -> "ZeroShotHead":
        path = folder / "zeroshot.npz"
        a = load_npz(path, ("prompts", "scale", "bias"))
        if a["prompts"].ndim != 2 or len(a["prompts"]) != self.n_out or not np.isfinite(a["prompts"]).all():
            raise corrupt(path, f"its prompts {a['prompts'].shape} do not fit head.json's {self.n_out} classes")
        self.prompts_, self.scale_, self.bias_ = a["prompts"].astype(np.float32), float(a["scale"]), float(a["bias"])
        self._check()
        return self
