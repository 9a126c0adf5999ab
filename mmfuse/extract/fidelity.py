"""``--precision auto`` for extraction: the precision the hardware runs fastest (:func:`choose_precision`),
kept only where its vectors match fp32's on the first rows of the data set.

The check encodes the first ``CHECK_ROWS`` texts and ``CHECK_IMAGES`` readable images of the split (the
same rows whatever a resumed run has left to do, so a rerun decides the same) in fp32 and in the chosen
precision, and falls back to fp32 where any vector's cosine to its fp32 twin is below ``MIN_COSINE``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..precision import AUTO, choose_precision, native_bf16
from .image import encode_images
from .text import encode_texts

# bench/experiments/precision.py: over all 3,199 mvsa rows bf16's worst vector had cosine 0.986 to fp32
# (efficientnet-lite0; mean 0.9991), texts >= 0.9999, and the same heads scored within one standard error
# on the bf16 and fp32 caches; a model that diverges in bf16 falls far below this
MIN_COSINE = 0.98
CHECK_ROWS, CHECK_IMAGES = 16, 8


def _cosines(a: dict, b: dict) -> float:
    worst = 1.0
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        keep = np.isfinite(x).all(1)  # an image that did not decode (NaN in both) is not compared
        x, y = x[keep], y[keep]
        if not np.isfinite(y).all():  # an overflow in the lower precision fails the check
            return -1.0
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
        worst = min(worst, float(cos.min()) if len(cos) else 1.0)
    return worst


def _collect(batches) -> dict[str, np.ndarray]:
    """{feature: (N, D)} in input order from encode_texts / encode_images batches (undecodable rows NaN)."""
    out: dict[str, list] = {}
    for pos, feats, *errors in batches:
        bad = np.isin(pos, list(errors[0])) if errors and errors[0] else np.zeros(len(pos), bool)
        for k, v in feats.items():
            v = np.where(bad[:, None], np.nan, v)
            out.setdefault(k, []).append((pos, v))
    return {k: np.concatenate([v for _, v in parts])[np.argsort(np.concatenate([p for p, _ in parts]))]
            for k, parts in out.items()}


def resolve_precision(requested: str, dev: torch.device, records, text_parts, image_parts, log) -> tuple[str, dict]:
    """(precision, how it was chosen) for ``requested``, the choice of ``auto`` logged in one line; ``records``: the whole split's (every shard checks the
    same rows); ``text_parts`` = (tokenizer, model, config) and
    ``image_parts`` = (model, preprocessing, config) as extraction loaded them."""
    if requested != AUTO:
        return requested, {"requested": requested}
    chosen = choose_precision(AUTO, dev)
    if dev.type == "cuda":
        reason = f"CUDA {'with' if chosen == 'bf16' else 'without'} bf16"
    else:
        reason = ("this CPU has native bf16 (AVX512-BF16/AMX)" if native_bf16() else
                  f"no native bf16 on this CPU (torch capability {torch.backends.cpu.get_cpu_capability()})")
    info = {"requested": AUTO, "chosen": chosen, "reason": reason}
    if chosen == "fp32":
        log(f"precision auto: fp32 ({reason})")
        return "fp32", info
    usable = [r for r in records if not r.error]
    texts, paths = [r.text for r in usable[:CHECK_ROWS]], [r.image_path for r in usable[:CHECK_IMAGES]]
    tok, tmodel, tcfg = text_parts
    imodel, prep, icfg = image_parts
    icfg = dataclasses.replace(icfg, optimize=False, num_workers=0)  # the check needs no traced copy
    worst = 1.0
    for run in (lambda p: encode_texts(texts, tok, tmodel, tcfg, dev, p), lambda p: encode_images(paths, imodel, prep,
                                                                                                  icfg, dev, p)):
        ref, low = _collect(run("fp32")), _collect(run(chosen))
        worst = min(worst, _cosines(ref, low))
    info["min_cosine_first_rows"] = round(worst, 6)
    if worst < MIN_COSINE:
        log(f"precision auto: {chosen} vectors differ from fp32 on the first rows (cosine {worst:.4f} < "
            f"{MIN_COSINE}): extracting in fp32")
        info["fallback"] = "fp32"
        log(f"precision auto: fp32 ({reason})")
        return "fp32", info
    log(f"precision auto: {chosen} ({reason}; first rows' cosine to fp32 >= {worst:.4f})")
    return chosen, info
