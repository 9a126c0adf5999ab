"""Commands that read data sets and write caches: extract, merge, inspect, info, demo-data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import MmfuseError
from ..extract import RUNTIMES, ImageExtractorConfig, TextExtractorConfig
from ..precision import AUTO_PRECISIONS
from ._common import (IdCol, ImageCol, Images, LabelNames, LabelSep, LabelsCol, OnError, Progress, Sharding,
                      StoreDtype, TextCol, app, choices, csv_format, table_columns, user_errors)

T, I = TextExtractorConfig(), ImageExtractorConfig()  # the CLI's defaults are the configs' defaults
ExtractPrecision = choices("ExtractPrecision", AUTO_PRECISIONS)
ImageRuntime = choices("ImageRuntime", RUNTIMES)


@app.command()
def extract(
    data_dir: Path = typer.Argument(..., help="Course-format folder (train.txt, test_without_label.txt, data/), "
                                    "a multi-label CSV (ImageID,Labels,Caption) with --images, WebDataset tar shards "
                                    "('DIR/{00000..00009}.tar', a folder of .tar or one .tar), Parquet (a file or a "
                                    "folder), or a Hugging Face datasets folder (save_to_disk, or images with "
                                    "metadata.jsonl|csv)."),
    split: str = typer.Option("train", help="train or test (course format); the DatasetDict split or the files "
                              "named after it (other formats)."),
    out: Optional[Path] = typer.Option(None, help="Cache file to write [default: features/{split}.h5]."),
    text_model: str = typer.Option(T.model, help="HF hub id or local folder (BERT-family, sentence-transformers, "
                                   "or a CLIP/SigLIP checkpoint's text tower), or 'minilm' (offline)."),
    image_model: str = typer.Option(I.model, help="torchvision name, efficientnet-lite0/1/2, timm:NAME, or a HF "
                                    "vision / CLIP / SigLIP checkpoint (hub id or local folder)."),
    model: Optional[str] = typer.Option(None, help="One two-tower checkpoint (CLIP, SigLIP: hub id or folder) for "
                                        "both towers; replaces --text-model and --image-model."),
    class_prompts: Optional[str] = typer.Option(None, help="Two-tower text model: store one prompt per class for "
                                                "the zeroshot head: a template ('a photo that feels {}') or a "
                                                "file with one prompt per line, in label order."),
    image_weights: str = typer.Option(I.weights, help="DEFAULT, a weights name, none (seeded init) or a file "
                                      "(torchvision and timm)."),
    batch_size: int = typer.Option(0, help="Texts and images per forward pass [default: texts 64; images 8 on "
                                   "CPU, 64 on CUDA]."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    max_length: int = typer.Option(T.max_length, help="Max tokens per text."),
    precision: ExtractPrecision = typer.Option(ExtractPrecision("auto"), help="Autocast the backbones: auto = bf16 "
                                               "where the CPU has native bf16 (AVX512-BF16/AMX) or on CUDA (fp16 on "
                                               "older GPUs), checked against fp32 on the first rows; else fp32."),
    store_dtype: StoreDtype = typer.Option(StoreDtype("float32"), help="dtype of the stored features."),
    num_workers: int = typer.Option(I.num_workers, help="Image decode processes [default: cores // 4 on CPU, "
                                    "min(8, cores) with CUDA]."),
    optimize: bool = typer.Option(I.optimize, help="CPU fp32, 512+ images: run the image model through "
                                  "TorchScript's optimize_for_inference (verified against eager). Off by default: "
                                  "eager was as fast or faster on the CPUs measured (docs/benchmarks.md)."),
    image_runtime: ImageRuntime = typer.Option(ImageRuntime(I.runtime), help="Run the image model (torchvision, "
                                               "EfficientNet-Lite) on CPU in fp32 through OpenVINO or ONNX Runtime "
                                               "(pip install 'mmfuse[openvino]' or '[onnxruntime]'), the same vectors: "
                                               "Lite0 2.5-3.5x, ResNet-50 1.1-1.5x torch's fp32; pays on "
                                               "hundreds of images (docs/extraction.md#cpu-runtimes)."),
    on_error: OnError = typer.Option(OnError("raise"), help="raise: stop at a bad record; skip: record and skip it."),
    overwrite: bool = typer.Option(False, help="Replace an existing cache (kept until the new one is complete)."),
    images: Images = None,
    id_col: IdCol = None,
    labels_col: LabelsCol = None,
    text_col: TextCol = None,
    label_sep: LabelSep = None,
    label_names: LabelNames = None,
    image_col: ImageCol = None,
    shard: Optional[str] = typer.Option(None, help="RANK/WORLD: extract this share of the rows into "
                                        "OUT.shard-RANK-of-WORLD.h5 [default under torchrun: $RANK/$WORLD_SIZE]."),
    sharding: Sharding = typer.Option(Sharding("round-robin"), help="How rows are dealt to shards: round-robin "
                                      "(every WORLD-th row), contiguous runs, or whole-files (every WORLD-th input "
                                      "tar / Parquet file: each rank reads only its own files)."),
    merge: bool = typer.Option(False, help="Under torchrun: once every shard is done, rank 0 merges them into OUT."),
    progress: Progress = True,
):
    """Run the text and image backbones once over a split and write the HDF5 feature cache."""
    from ..extract import extract as run_extract
    from ..extract.distributed import merge_after_barrier, parse_shard

    kept = (f"the rows computed so far are kept in {out or 'the cache'}.partial; re-run the same command to resume "
            "(nothing is computed twice)")
    with user_errors(kept):
        csv = csv_format(images, id_col, labels_col, text_col, label_sep, label_names)
        columns = table_columns(id_col, labels_col, text_col, label_sep, label_names, image_col)
        parts = parse_shard(shard)
        if merge and parts is None:
            raise MmfuseError("--merge merges the shards of a sharded run: give --shard or start it with torchrun")
        if model:
            text_model = image_model = model
        report = run_extract(
            data_dir, split, out, class_prompts=class_prompts, device=device, precision=precision.value, store_dtype=store_dtype.value,
            on_error=on_error.value, overwrite=overwrite, progress=progress, log=typer.echo, csv_format=csv,
            text=TextExtractorConfig(text_model, max_length, batch_size or T.batch_size),
            image=ImageExtractorConfig(image_model, image_weights, batch_size, num_workers, optimize=optimize,
                                       runtime=image_runtime.value),
            shard=parts, sharding=sharding.value, columns=columns)
    speed = ", ".join(f"{m} {report.computed[m]} in {s:.1f} s ({report.computed[m] / max(s, 1e-9):.1f}/s)"
                      for m, s in report.seconds.items())
    typer.echo(f"wrote {report.path}: {report.rows} rows, {len(report.skipped)} skipped; computed {speed}")
    if merge:
        with user_errors("the shards are kept; run the merge again (mmfuse merge ...)"):
            merged = merge_after_barrier(report.whole, parts, overwrite)
        if merged:
            typer.echo(f"merged {parts[1]} shards into {merged}")


@app.command("merge")
def merge_cmd(
    shards: List[Path] = typer.Argument(..., help="The shard caches of one extraction (OUT.shard-*-of-N.h5)."),
    out: Path = typer.Option(..., help="The merged cache."),
    overwrite: bool = typer.Option(False, help="Replace an existing cache at --out (kept until the merged one is "
                                   "complete)."),
):
    """Merge the shards of a sharded extraction into one cache, in the data set's order. Other files among
    SHARDS (a glob's locks or unfinished .partial files) are named and ignored."""
    from ..shards import merge_shards, shard_files

    with user_errors("the shards are kept; re-run the same command"):
        path = merge_shards(shards, out, overwrite, log=typer.echo)
    typer.echo(f"merged {len(shard_files(shards)[0])} shards into {path}")


@app.command()
def inspect(
    data_dir: Path = typer.Argument(..., help="Course-format folder (both splits and the leak check between them), "
                                    "a multi-label CSV with --images, or WebDataset / Parquet / datasets data (as for "
                                    "extract; one split)."),
    out: Path = typer.Option(Path("eda"), help="Folder for the PNGs, summary.md and eda.json."),
    text_model: str = typer.Option(T.model, help="Tokenizer to count tokens with: HF hub id, local folder or "
                                   "'minilm' (the one you will extract with)."),
    max_length: int = typer.Option(T.max_length, help="The --max-length you will extract with: the share of texts "
                                   "it cuts."),
    images: Images = None,
    id_col: IdCol = None,
    labels_col: LabelsCol = None,
    text_col: TextCol = None,
    label_sep: LabelSep = None,
    label_names: LabelNames = None,
    image_col: ImageCol = None,
    progress: Progress = True,
    overwrite: bool = typer.Option(False, help="Replace an existing inspect folder at --out."),
):
    """Look at a data set before training: label balance, text lengths, image sizes, failures, duplicates, leaks."""
    from ..eda import inspect_data
    from ..extract.text import load_tokenizer

    with user_errors():
        csv = csv_format(images, id_col, labels_col, text_col, label_sep, label_names)
        columns = table_columns(id_col, labels_col, text_col, label_sep, label_names, image_col)
        try:
            tokenizer, name = load_tokenizer(text_model), Path(text_model).name
        except MmfuseError as e:
            typer.secho(f"warning: {e}; counting words instead of tokens", fg="yellow", err=True)
            tokenizer, name = None, "whitespace words"
        summary = inspect_data(data_dir, out, csv_format=csv, columns=columns, tokenizer=tokenizer, tokenizer_name=name,
                               max_length=max_length, progress=progress, log=typer.echo, overwrite=overwrite)
    typer.echo(summary.read_text())


@app.command()
def info(path: Path = typer.Argument(..., help="A feature cache (.h5).")):
    """Print a cache's shapes, provenance, class balance and skipped rows."""
    from ..cache import FeatureCache, lock_holder
    from ..data import current_fingerprint

    with user_errors():
        holder = lock_holder(path)
        if holder:  # an extraction is writing it: show its progress
            pr = FeatureCache.progress(path, holder)
            typer.echo(f"{path}: being written by pid {pr['writer'].get('pid')} (since "
                       f"{pr['writer'].get('started')}): text {pr['text']}/{pr['rows']}, image {pr['image']}/"
                       f"{pr['rows']} rows done, {pr['skipped']} skipped")
            return
        cache = FeatureCache(path, allow_incomplete=True)
    p = cache.provenance
    typer.echo(f"{path}: {len(cache)} rows ({len(cache.skipped)} skipped)"
               f"{'' if cache.complete else f'  INCOMPLETE: re-run the extract command to resume (rows kept in {cache.path.name})'}")
    for name in cache.feature_names:
        typer.echo(f"  {name:14s} ({len(cache)}, {cache.dims[name]}) {cache.dtypes[name]}")
    counts = cache.class_counts()
    if cache.multilabel:
        rows = cache.labels if cache.labelled else cache.labels[:0]
        if not len(rows):
            typer.echo(f"labels: none (unlabelled rows); label names {', '.join(cache.label_names) or 'not given'}")
        else:
            typer.echo("labels (rows carrying each): " + ", ".join(f"{k} {v} ({100 * v / len(rows):.0f}%)"
                                                                   for k, v in counts.items()))
            per_row = rows.sum(1)
            spread = ", ".join(f"{k}: {int((per_row == k).sum())}" for k in range(min(3, int(per_row.max()) + 1)))
            more = int((per_row >= 3).sum())
            typer.echo(f"labels per row: mean {per_row.mean():.2f} ({spread}{f', 3+: {more}' if more else ''})")
    else:
        total = max(sum(counts.values()), 1)
        typer.echo("classes: " + ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in counts.items()))
    typer.echo(f"text:  {p['text']['model']} ({p['text']['source']}), max_length {p['text']['max_length']}")
    typer.echo(f"image: {p['image']['model']}, weights {json.dumps(p['image']['weights'])}")
    typer.echo(f"       preprocessing {json.dumps(p['image']['preprocessing'])}")
    d = p["data"]
    typer.echo(f"data:  {d['root']} split {d['split']}, fingerprint {d['fingerprint'][:16]}, "
               f"text encodings {json.dumps(d['encodings'])}")
    typer.echo(f"built: {p['created']} on {p['device']}, precision {p['precision']}, "
               f"versions {json.dumps(p['versions'])}")
    if p.get("zeroshot"):
        typer.echo(f"zeroshot prompts ({p['zeroshot']['model']}): " + "; ".join(p["zeroshot"]["prompts"]))
    for guid, reason in cache.skipped:
        typer.echo(f"skipped guid {guid}: {reason}")
    now = current_fingerprint(d)
    if now is None:
        typer.secho(f"note: the data set at {d['root']} cannot be read now, so it was not checked against the cache",
                    fg="yellow", err=True)
    elif now != d["fingerprint"]:
        typer.secho(f"warning: the data set at {d['root']} changed since this cache was extracted (fingerprint "
                    f"{now[:16]} now, {d['fingerprint'][:16]} then): re-extract it with --overwrite", fg="yellow", err=True)


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Folder to write the synthetic course-format data set into."),
    n_train: int = typer.Option(300, help="Labelled rows."),
    n_test: int = typer.Option(60, help="Unlabelled rows (true tags in test_labels.txt)."),
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(False, help="Replace a demo data set written before (never a real data set)."),
):
    """Write a small synthetic data set whose labels show partly in the texts, partly in the images."""
    from ..demo import make_demo_data

    with user_errors():
        make_demo_data(out_dir, n_train, n_test, seed, overwrite)
    typer.echo(f"wrote {n_train} labelled and {n_test} unlabelled pairs to {out_dir}")
