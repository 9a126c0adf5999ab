"""Extraction: run the text and image backbones once over a data set split into a feature cache."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import CHUNK_ROWS, CacheWriter, feature_identity
from ..shards import shard_path, shard_rows
from ..data import Columns, CsvFormat, read_data
from ..errors import DataError
from ..precision import AUTO, native_bf16
from .common import library_versions, resolve_device
from . import towers
from .fidelity import resolve_precision
from .image import ImageExtractorConfig, encode_images, load_image_encoder, optimizable, optimize_pays
from .runtimes import RUNTIMES, check_runtime
from .text import TextExtractorConfig, encode_texts, load_text_encoder

STORE_DTYPES = ("float32", "float16")
TEXT_BLOCK = 16 * CHUNK_ROWS  # texts length-sorted together (4096)


@dataclass
class ExtractReport:
    path: Path
    rows: int  # rows in the cache, skipped included
    skipped: list[tuple[str, str]]  # (guid, reason), read-time and decode-time
    encodings: dict[str, int]  # text encoding -> count
    complete: bool
    seconds: dict[str, float] = field(default_factory=dict)  # text / image wall time of this run
    computed: dict[str, int] = field(default_factory=dict)  # rows computed in this run (resume: fewer)
    whole: Path | None = None  # a shard: the path of the cache its shards merge into


def extract(data_dir: str | Path, split: str = "train", out: str | Path | None = None, *,
            text: TextExtractorConfig | None = None, image: ImageExtractorConfig | None = None,
            device: str = "auto", precision: str = "auto", store_dtype: str = "float32",
            on_error: str = "raise", overwrite: bool = False, progress: bool = True,
            csv_format: CsvFormat | None = None, shard: tuple[int, int] | None = None,
            sharding: str = "round-robin", class_prompts: str | None = None, columns: Columns | None = None,
            log: Callable[[str], None] = print) -> ExtractReport:
    """Extract text and image features of one split into ``out`` (default features/{split}.h5).

    ``data_dir``: a course-format folder (``split`` names the split), a multi-label CSV file read
    with ``csv_format`` (its images folder, columns and label names; the default out is named after it),
    or WebDataset tar shards, Parquet files or a Hugging Face datasets folder, read with ``columns``.

    Resumes an interrupted run with the same configuration; refuses to replace a cache of another
    configuration unless ``overwrite``. ``on_error="skip"`` skips bad records and records why.

    ``shard=(rank, world)``: extract only this shard's rows (``sharding``: round-robin, contiguous, or
    whole-files: whole input files (tar shards, Parquet files) dealt to the ranks)
    into ``{out stem}.shard-RANK-of-WORLD.h5``, resumable on its own; ``mmfuse.cache.merge_shards``
    joins the shards. On a GPU the shard takes ``cuda:$LOCAL_RANK`` (torchrun's); on CPU each of the
    machine's shard processes ($LOCAL_WORLD_SIZE, else ``world``) gets an equal share of the cores.

    ``text``/``image`` may name one two-tower checkpoint (CLIP, SigLIP): both towers' projected, aligned
    vectors are stored (``text/proj``, ``image/proj``) beside their pooled outputs. ``class_prompts`` (a
    template with ``{}`` or a file, one prompt per class) stores the prompts' embeddings for the zero-shot head.
    """
    text, image = text or TextExtractorConfig(), image or ImageExtractorConfig()
    if store_dtype not in STORE_DTYPES:
        raise DataError(f"unknown store dtype {store_dtype!r}: choose {', '.join(STORE_DTYPES)}")
    ds = read_data(data_dir, split, csv_format, columns)
    out = Path(out or f"features/{ds.split}.h5")
    ds.check(on_error)  # raises on bad records unless skipping
    whole = np.arange(len(ds.records)) if shard is None else shard_rows(len(ds.records), *shard, sharding,
                                                                        ds.groups or None)
    records = [ds.records[i] for i in whole]  # this run's rows: all, or the shard's
    whole_out = out
    if shard is not None:
        out = shard_path(out, *shard)
    skipped = {i: f"{r.error} ({r.source})" for i, r in enumerate(records) if r.error}
    for i, reason in skipped.items():
        log(f"skipping guid {records[i].guid}: {reason}")
    if ds.fallback_count:
        detail = ", ".join(f"{e}: {n}" for e, n in ds.encodings.items() if e != "utf-8")
        log(f"{ds.fallback_count} of {sum(ds.encodings.values())} texts were not UTF-8 ({detail})")

    dev = resolve_device(device)
    if shard is not None and dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per torchrun process
    if precision == "bf16" and dev.type == "cpu" and not native_bf16():
        log("warning: this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 is emulated and slower than "
            "fp32 here (measured on an AVX2 EPYC: 0.17-0.29x the fp32 images/s); --precision fp32 is faster")
    check_runtime(image.runtime, dev, precision)  # before any load
    prompts = towers.class_prompts(class_prompts, ds.label_names) if class_prompts else None  # before any load
    tokenizer, text_model, text_prov = load_text_encoder(text)
    image_model, prep, image_prov = load_image_encoder(image)
    extras = {}
    if prompts:  # on the CPU in fp32, before the precision check moves the model
        zeroshot, extras["zeroshot/text"] = _prompts(prompts, tokenizer, text_model, text, text_prov)
    if image.runtime != "torch" and precision == AUTO:  # it runs fp32, faster than torch's bf16 (runtimes.py)
        precision, precision_choice = "fp32", {"requested": AUTO, "chosen": "fp32",
                                               "reason": f"--image-runtime {image.runtime} runs fp32"}
        log(f"precision auto: fp32 (--image-runtime {image.runtime} runs fp32)")
    else:
        precision, precision_choice = resolve_precision(precision, dev, ds.records, (tokenizer, text_model, text),
                                                        (image_model, prep, image), log)
    data_prov = {"format": ds.format, "root": str(Path(data_dir).resolve()), "split": ds.split,
                 "split_file": ds.split_file.name, "rows": len(ds.records),
                 "fingerprint": ds.fingerprint(), "fingerprint_method": ds.fingerprint_method,
                 "encodings": dict(ds.encodings),
                 "label_names": list(ds.label_names), "multilabel": ds.multilabel,
                 **({"columns": {"id": csv_format.id_col, "labels": csv_format.labels_col, "text": csv_format.text_col},
                     "label_sep": csv_format.label_sep, "images": str(Path(csv_format.images).resolve())}
                    if ds.format == "csv" else {}),
                 **({"options": ds.options, "files": [p.name for p in ds.sources]} if ds.sources else {})}
    # numerics of this run that change features slightly without changing what they are: resuming
    # under other ones would mix rows computed two ways, so they are part of the resume identity
    # the one-time TorchScript optimisation only where the split is long enough to pay for it
    image = dataclasses.replace(image, optimize=image.optimize and optimize_pays(len(records)))
    numerics = {"device": dev.type, "image_runtime": image.runtime if image.runtime != "torch" else
                "torchscript-optimized" if image.optimize and dev.type == "cpu" and precision == "fp32"
                and optimizable(image_model) else "eager",
                "channels_last": image.channels_last}
    provenance = {"text": text_prov, "image": image_prov, "data": data_prov, "precision": precision,
                  "precision_choice": precision_choice,
                  "store_dtype": store_dtype, "numerics": numerics, "versions": library_versions(),
                  "text_config": asdict(text), "image_config": asdict(image), "on_error": on_error,
                  "device": str(dev), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  **({"zeroshot": zeroshot} if class_prompts else {})}
    # the fingerprint method follows from the format: left out, so caches of older versions still resume
    identity_src = {"features": feature_identity(provenance), "numerics": numerics,
                    "data": {k: v for k, v in data_prov.items() if k != "fingerprint_method"},
                    **({"zeroshot": zeroshot} if class_prompts else {})}
    identity = hashlib.sha256(json.dumps(identity_src, sort_keys=True, default=str).encode()).hexdigest()
    spec = None
    if shard is not None:  # the shard's own identity (its resume key), and the whole's, which merge checks
        spec = {"rank": shard[0], "world": shard[1], "how": sharding, "total": len(ds.records), "identity": identity}
        identity = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    dims = {**text_prov["dims"], **image_prov["dims"]}
    writer = CacheWriter.open(out, guids=[r.guid for r in records], labels=ds.label_array()[whole],
                              label_names=ds.label_names, multilabel=ds.multilabel, skipped=skipped,
                              dims=dims, store_dtype=store_dtype, provenance=provenance,
                              identity=identity, overwrite=overwrite, shard=spec and {**spec, "rows": whole},
                              extras=extras)
    report = ExtractReport(out, len(records), [], dict(ds.encodings), False, whole=whole_out if shard else None)
    threads = torch.get_num_threads()
    try:
        if shard is not None and dev.type == "cpu":  # N processes on one machine share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", shard[1]))))
            log(f"shard {shard[0]} of {shard[1]}: {len(records)} rows, {torch.get_num_threads()} threads")
        pending = writer.pending("text")
        t0 = time.perf_counter()
        with tqdm(total=len(pending), desc=f"text  {text.model}", unit="text", disable=not progress) as bar:
            # length-sorted within blocks of TEXT_BLOCK rows: nearly all the padding saved, while the
            # buffered features stay bounded and each block fills whole cache chunks
            for block in np.unique(pending // TEXT_BLOCK):
                rows = pending[pending // TEXT_BLOCK == block]
                for pos, feats in encode_texts([records[i].text for i in rows], tokenizer, text_model,
                                               text, dev, precision, log):
                    writer.write("text", rows[pos], {f"text/{k}": v for k, v in feats.items()})
                    bar.update(len(pos))
        report.seconds["text"], report.computed["text"] = time.perf_counter() - t0, len(pending)

        rows = writer.pending("image")
        t0 = time.perf_counter()
        with tqdm(total=len(rows), desc=f"image {image.model}", unit="img", disable=not progress) as bar:
            for pos, feats, errors in encode_images([records[i].image_path for i in rows], image_model,
                                                     prep, image, dev, precision, log):
                for p, err in errors.items():
                    r = records[rows[p]]
                    if on_error == "raise":
                        raise DataError(f"cannot decode image of guid {r.guid}: {r.image_path}: {err}. "
                                        "Re-run with --on-error skip to skip it (the cache resumes), or replace "
                                        "the file and re-run with --overwrite.")
                    writer.skip(int(rows[p]), f"image unreadable: {r.image_path}: {err} ({r.source})")
                    log(f"skipping guid {r.guid}: image unreadable: {r.image_path}: {err}")
                ok = np.array([p not in errors for p in pos], bool)
                if ok.any():
                    writer.write("image", rows[pos[ok]], {f"image/{k}": v[ok] for k, v in feats.items()})
                bar.update(len(pos))
        report.seconds["image"], report.computed["image"] = time.perf_counter() - t0, len(rows)
        report.complete = writer.finish()
        if report.complete and shard is None and not (~writer.f["skipped"][:]).any():  # a shard may be all bad
            raise DataError(f"every row of {ds.split_file} was skipped: {out} holds no features")
        f = writer.f
        report.skipped = [(records[i].guid, f["skip_reason"][i].decode())
                          for i in np.flatnonzero(f["skipped"][:])]
    finally:
        writer.close()
        torch.set_num_threads(threads)
    return report


def _prompts(prompts: list[str], tokenizer, text_model, text: TextExtractorConfig, text_prov: dict):
    """(provenance entry, (C, D) embeddings) of the class prompts, by the two-tower text tower (fp32, CPU)."""
    if not hasattr(text_model, "features"):
        raise DataError(f"--class-prompts needs a two-tower text model (a CLIP or SigLIP checkpoint); {text.model} "
                        "is a text encoder only")
    emb = towers.encode_prompts(prompts, tokenizer, text_model)
    scale, bias = towers.logit_scale(text_model.model)
    return {"prompts": prompts, "logit_scale": scale, "logit_bias": bias, "model": text.model,
            "weights_sha256": text_prov.get("weights_sha256"), "source": text_prov.get("source"),
            "feature": "text/proj"}, emb


__all__ = ["extract", "ExtractReport", "TextExtractorConfig", "ImageExtractorConfig", "RUNTIMES"]
