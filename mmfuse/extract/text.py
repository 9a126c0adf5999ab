"""Text backbones: any Hugging Face encoder (its last layer's [CLS] vector and masked mean), or the text
tower of a two-tower checkpoint (its pooled output, masked mean and projected embedding)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import BackboneError
from ..precision import autocast
from .common import HalveOnOOM, finetune_run, sha256_files
from .hub import OFFLINE_HINT, TEXT_ALIASES, from_pretrained, is_paired, load_config, quiet_transformers  # noqa: F401
from .hub import resolve_checkpoint as resolve_text_model  # noqa: F401 - a hub id, folder or alias
from .hub import weight_files

@dataclass(frozen=True)
class TextExtractorConfig:
    model: str = "bert-base-uncased"  # hub id, local model folder, or an offline alias ("minilm"); a CLIP/SigLIP
    #                                   checkpoint gives its text tower
    max_length: int = 128  # tokens; longer texts are truncated (a two-tower text tower: at most its own, 77 for CLIP)
    batch_size: int = 64  # texts per forward pass; batches are sorted by length and padded per batch


def load_tokenizer(name: str):
    """The tokenizer alone of a hub id (local HF cache first), local folder or alias."""
    from transformers import AutoTokenizer

    source, local = resolve_text_model(name)
    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(source, **({} if local else {"local_files_only": True}))
    except OSError:
        raise BackboneError(f"cannot load the tokenizer of {name!r} offline: pass a local model folder or "
                            f"{OFFLINE_HINT.split(' (')[0]}") from None


def load_text_encoder(cfg: TextExtractorConfig):
    """Load (tokenizer, model, provenance). A hub id is taken from the local HF cache first. A two-tower
    checkpoint (CLIP, SigLIP) gives its text tower (:class:`.towers.PairedText`), at most its own maximum
    length. The provenance's ``dims`` maps each stored feature (``text/cls``, ...) to its width."""
    from transformers import AutoModel, AutoTokenizer

    hint = f"pass a local model folder (--text-model path/to/folder) or the offline model {OFFLINE_HINT}"
    config, source, local = load_config(cfg.model, "text model", hint)
    tokenizer = from_pretrained(lambda **kw: AutoTokenizer.from_pretrained(source, **kw), cfg.model, source, local,
                                "tokenizer of", hint)
    if is_paired(config):
        return (tokenizer, *_paired_text(cfg, tokenizer))
    model = from_pretrained(lambda **kw: AutoModel.from_pretrained(source, **kw), cfg.model, source, local,
                            "text model", hint)
    hidden = getattr(model.config, "hidden_size", None)
    if hidden is None:
        raise BackboneError(f"{cfg.model}: {type(model).__name__} is not a text encoder with a hidden size "
                            "(pass a BERT-family or sentence-transformers model, or a CLIP/SigLIP checkpoint)")
    model.eval()
    weights = weight_files(source, local)
    provenance = {
        "model": cfg.model,
        "source": source,
        "revision": getattr(model.config, "_commit_hash", None),
        "weights_sha256": sha256_files(weights) if weights else None,
        "architecture": type(model).__name__,
        "hidden_size": int(hidden),
        "dims": {"text/cls": int(hidden), "text/mean": int(hidden)},
        "max_length": cfg.max_length,
        "max_chars": max_chars(cfg.max_length),  # not in the feature identity: it never changes a feature
        "pooling": {"text/cls": "last layer [CLS] (first token)",
                    "text/mean": "attention-masked mean of the last layer"},
        "trained_pooling": trained_pooling(source if local else None),  # what --text-feature auto reads
    }
    finetuned = finetune_run(source) if local else None
    if finetuned:
        provenance["finetune_run"] = finetuned
    return tokenizer, model, provenance


def _paired_text(cfg: TextExtractorConfig, tokenizer):
    """(PairedText, provenance) of a two-tower checkpoint's text tower."""
    from .towers import PairedText, load_paired, pads_to_max_length, text_dims, text_max_length

    model, source, local, base = load_paired(cfg.model)
    max_length, pad_max = min(cfg.max_length, text_max_length(model) or cfg.max_length), pads_to_max_length(model)
    tower = PairedText(model, tokenizer.pad_token_id, max_length, pad_max)
    tower.verify(tower.batch(tokenizer, ["a photo", "two words here"]))
    dims = text_dims(model)
    provenance = {**base, "tower": "text", "hidden_size": dims["text/pooled"], "dims": dims,
                  "max_length": max_length, "max_chars": max_chars(max_length), "pad_to_max_length": pad_max,
                  "pooling": {"text/pooled": "the text tower's pooled output (unprojected)",
                              "text/mean": "attention-masked mean of the text tower's last layer",
                              "text/proj": "get_text_features: the projected embedding, aligned with image/proj"},
                  "trained_pooling": None}
    return tower, provenance


def trained_pooling(folder: str | Path | None) -> str | None:
    """The pooling a sentence-transformers model folder was trained with, "mean" or "cls", read from its
    modules.json and Pooling config.json; None where the folder does not say (a plain encoder)."""
    if not folder:
        return None
    try:
        modules = json.loads((Path(folder) / "modules.json").read_text())
        pooling = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
        cfg = json.loads((Path(folder) / pooling.get("path", "") / "config.json").read_text())
    except (OSError, ValueError, StopIteration, AttributeError):
        return None
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls" if cfg.get("pooling_mode_cls_token") else None


def resolve_text_feature(name: str, text_provenance: dict) -> str:
    """``auto`` -> the pooling the encoder was trained with (sentence-transformers folders say so), else
    "cls"; "cls" and "mean" stay as they are."""
    if name != "auto":
        return name
    pooling = text_provenance.get("trained_pooling")
    if pooling is None and "trained_pooling" not in text_provenance:  # a cache made before it was recorded
        pooling = trained_pooling(text_provenance.get("source"))
    return pooling or "cls"


def pool_text(hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls, mean) of the last layer (B, T, D): the first token, and the attention-masked mean."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return hidden[:, 0], (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D) each


_LAST_WORD = re.compile(r"\S+\Z")


def max_chars(max_length: int) -> int:
    """Characters of a text tokenised at most: ``max(2000, 64 * max_length)``. Tokenising a whole 27 MB text
    to keep its first 128 tokens took 45 s and 4.2 GB. A token spans about 4-5 characters of English (1-2 of
    CJK) with its spaces, so 64 per token leaves a margin of 10x and more; and :func:`tokenize` cuts the
    rare text whose cut no longer fills ``max_length`` tokens (mostly blanks) further on, so the cut never
    changes a feature."""
    return max(2000, 64 * max_length)


def cut(text: str, limit: int) -> str:
    """``text`` up to ``limit`` characters, ending before the word the cut would split (the words before it keep
    their tokens: tokenizers split at whitespace first); a text without whitespace there is cut at ``limit``."""
    head = text[:limit]
    if len(text) <= limit or text[limit].isspace() or head[-1].isspace():
        return head
    return head[:_LAST_WORD.search(head).start()] or head


def tokenize(tokenizer, texts: list[str], max_length: int):
    """``tokenizer(texts, truncation=True, max_length=max_length)``, each text cut to :func:`max_chars` first:
    the same tokens, in time and memory bounded per text."""
    limit = max_chars(max_length)
    enc = tokenizer([cut(t, limit) for t in texts], truncation=True, max_length=max_length)
    redo = list(range(len(texts)))
    while True:  # a cut that left fewer than max_length tokens: the words after it count, cut 16x further
        redo = [i for i in redo if len(texts[i]) > limit and len(enc["input_ids"][i]) < max_length]
        if not redo:
            return enc
        limit *= 16
        again = tokenizer([cut(texts[i], limit) for i in redo], truncation=True, max_length=max_length)
        for k in again.keys():
            for j, i in enumerate(redo):
                enc[k][i] = again[k][j]


def encode_texts(texts: list[str], tokenizer, model, cfg: TextExtractorConfig, device: torch.device,
                 precision: str = "fp32", log=None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (positions, {feature name: (B, D)}) per batch; positions index ``texts``. A BERT-family model
    gives "cls" and "mean", a two-tower text tower "pooled", "mean" and "proj". Batches are length-sorted
    (a tower trained on padded texts gets them padded to its maximum length); one that runs out of memory
    is run in halves (:class:`HalveOnOOM`)."""
    if not texts:
        return
    paired = hasattr(model, "features")
    max_length = min(cfg.max_length, model.max_length) if paired else cfg.max_length
    enc = tokenize(tokenizer, texts, max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc
            and (not paired or k in tokenizer.model_input_names)]
    pad = {"padding": "max_length", "max_length": max_length} if paired and model.pad_to_max_length else {}
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    model.to(device)
    halve = HalveOnOOM("text model", log)
    names = ("pooled", "mean", "proj") if paired else ("cls", "mean")

    def run(b):
        if paired:
            out = model.features(b)
            return tuple(out[k] for k in names)
        return pool_text(model(**b).last_hidden_state.float(), b["attention_mask"])  # (B, D) each

    for start in range(0, len(order), cfg.batch_size):
        pos = order[start:start + cfg.batch_size]
        batch = tokenizer.pad({k: [enc[k][i] for i in pos] for k in keys}, return_tensors="pt", **pad)
        batch = {k: v.to(device) for k, v in batch.items() if k in keys}
        with torch.inference_mode(), autocast(device, precision):
            feats = halve(run, batch, len(pos), lambda b, lo, hi: {k: v[lo:hi] for k, v in b.items()})
        yield pos, {k: v.cpu().numpy() for k, v in zip(names, feats)}
