"""The ``mmfuse`` command line: parses options and calls the library; errors print as one line."""
from __future__ import annotations

import contextlib
import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .errors import MmfuseError
from .cache import SHARDINGS
from .extract import STORE_DTYPES
from .extract.common import PRECISIONS
from .finetune import FineTuneConfig
from .heads import HeadConfig, list_heads
from .heads.config import CLASS_WEIGHTS, COMBINES, LOSSES, MONITORS, TEXT_FEATURES, THRESHOLDS
from .grid import PICKS, REFITS, SEARCHES

app = typer.Typer(help="Image+text classification on cached features.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


@contextlib.contextmanager
def user_errors(interrupted: str = "nothing was written"):
    """Print library errors as one line and exit 1, instead of a traceback; Ctrl-C prints one line saying
    what was kept (``interrupted``) and exits 130."""
    try:
        yield
    except MmfuseError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.secho(f"interrupted: {interrupted}", fg="yellow", err=True)
        raise typer.Exit(130) from None


def choices(name: str, values) -> type[Enum]:
    """A str Enum of the library's own allowed values, so the CLI's choices cannot drift from them."""
    return Enum(name, {v: v for v in values}, type=str)


OnError = choices("OnError", ("raise", "skip"))
Precision = choices("Precision", PRECISIONS)
StoreDtype = choices("StoreDtype", STORE_DTYPES)
Loss = choices("Loss", LOSSES)
ClassWeight = choices("ClassWeight", CLASS_WEIGHTS)
TextFeature = choices("TextFeature", TEXT_FEATURES)
Zero = choices("Zero", ("text", "image"))
Refit = choices("Refit", REFITS)
Pick = choices("Pick", PICKS)
Search = choices("Search", SEARCHES)
Monitor = choices("Monitor", MONITORS)
Thresholds = choices("Thresholds", THRESHOLDS)
Combine = choices("Combine", COMBINES)
Sharding = choices("Sharding", SHARDINGS)
Fusion = choices("Fusion", list_heads())  # the registry's heads


@app.command()
def extract(
    data_dir: Path = typer.Argument(..., help="Course-format folder (train.txt, test_without_label.txt, data/), "
                                    "or a multi-label CSV (ImageID,Labels,Caption) with --images."),
    split: str = typer.Option("train", help="train or test (course format)."),
    out: Optional[Path] = typer.Option(None, help="Cache file to write [default: features/{split}.h5]."),
    text_model: str = typer.Option("bert-base-uncased", help="HF hub id, local folder, or 'minilm' (offline)."),
    image_model: str = typer.Option("resnet50", help="torchvision model name or efficientnet-lite0/1/2."),
    image_weights: str = typer.Option("DEFAULT", help="DEFAULT, a weights name, none (seeded init) or a file."),
    batch_size: int = typer.Option(0, help="Texts and images per forward pass [default: texts 64; images 8 on "
                                   "CPU, 64 on CUDA]."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    max_length: int = typer.Option(128, help="Max tokens per text."),
    precision: Precision = typer.Option(Precision("fp32"), help="Autocast the backbones (bf16 works on CPU too)."),
    store_dtype: StoreDtype = typer.Option(StoreDtype("float32"), help="dtype of the stored features."),
    num_workers: int = typer.Option(-1, help="Image decode processes [default: cores // 4 on CPU, "
                                    "min(8, cores) with CUDA]."),
    optimize: bool = typer.Option(True, help="CPU fp32: run the image model through TorchScript's "
                                  "optimize_for_inference (verified against eager)."),
    on_error: OnError = typer.Option(OnError("raise"), help="raise: stop at a bad record; skip: record and skip it."),
    overwrite: bool = typer.Option(False, help="Replace an existing cache (kept until the new one is complete)."),
    images: Optional[Path] = typer.Option(None, help="CSV data: the folder of the images named by the id column."),
    id_col: str = typer.Option("ImageID", help="CSV data: the image id column."),
    labels_col: str = typer.Option("Labels", help="CSV data: the labels column (absent: an unlabelled file)."),
    text_col: str = typer.Option("Caption", help="CSV data: the text column."),
    label_sep: str = typer.Option(" ", help="CSV data: separator between labels in a cell (' ': whitespace)."),
    label_names: Optional[str] = typer.Option(None, help="CSV data: the label set in column order, as a comma "
                                              "list (1,2,...,19) or a file with one name per line; use the "
                                              "same for train and test [default: the labels seen, sorted]."),
    shard: Optional[str] = typer.Option(None, help="RANK/WORLD: extract this share of the rows into "
                                        "OUT.shard-RANK-of-WORLD.h5 [default under torchrun: $RANK/$WORLD_SIZE]."),
    sharding: Sharding = typer.Option(Sharding("round-robin"), help="How rows are dealt to shards: round-robin "
                                      "(every WORLD-th row) or contiguous runs."),
    merge: bool = typer.Option(False, help="Under torchrun: once every shard is done, rank 0 merges them into OUT."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Run the text and image backbones once over a split and write the HDF5 feature cache."""
    from .data import CsvFormat, parse_label_names
    from .extract import ImageExtractorConfig, TextExtractorConfig
    from .extract import extract as run_extract
    from .extract.distributed import merge_after_barrier, parse_shard

    kept = (f"the rows computed so far are kept in {out or 'the cache'}.partial; re-run the same command to resume "
            "(nothing is computed twice)")
    with user_errors(kept):
        csv_format = None if images is None else CsvFormat(images, id_col, labels_col, text_col, label_sep,
                                                            parse_label_names(label_names))
        parts = parse_shard(shard)
        if merge and parts is None:
            raise MmfuseError("--merge merges the shards of a sharded run: give --shard or start it with torchrun")
        report = run_extract(
            data_dir, split, out, device=device, precision=precision.value, store_dtype=store_dtype.value,
            on_error=on_error.value, overwrite=overwrite, progress=progress, log=typer.echo, csv_format=csv_format,
            text=TextExtractorConfig(text_model, max_length, batch_size or TextExtractorConfig.batch_size),
            image=ImageExtractorConfig(image_model, image_weights, batch_size, num_workers, optimize=optimize),
            shard=parts, sharding=sharding.value)
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
    from .cache import merge_shards, shard_files

    with user_errors("the shards are kept; re-run the same command"):
        path = merge_shards(shards, out, overwrite, log=typer.echo)
    typer.echo(f"merged {len(shard_files(shards)[0])} shards into {path}")


@app.command()
def inspect(
    data_dir: Path = typer.Argument(..., help="Course-format folder (both splits and the leak check between them) "
                                    "or a multi-label CSV with --images."),
    out: Path = typer.Option(Path("eda"), help="Folder for the PNGs, summary.md and eda.json."),
    text_model: str = typer.Option("bert-base-uncased", help="Tokenizer to count tokens with: HF hub id, local "
                                   "folder or 'minilm' (the one you will extract with)."),
    max_length: int = typer.Option(128, help="The --max-length you will extract with: the share of texts it cuts."),
    images: Optional[Path] = typer.Option(None, help="CSV data: the folder of the images named by the id column."),
    id_col: str = typer.Option("ImageID", help="CSV data: the image id column."),
    labels_col: str = typer.Option("Labels", help="CSV data: the labels column (absent: an unlabelled file)."),
    text_col: str = typer.Option("Caption", help="CSV data: the text column."),
    label_sep: str = typer.Option(" ", help="CSV data: separator between labels in a cell."),
    label_names: Optional[str] = typer.Option(None, help="CSV data: the label set (comma list or a file)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    overwrite: bool = typer.Option(False, help="Replace an existing inspect folder at --out."),
):
    """Look at a data set before training: label balance, text lengths, image sizes, failures, duplicates, leaks."""
    from .data import CsvFormat, parse_label_names
    from .eda import inspect_data
    from .extract.text import load_tokenizer

    with user_errors():
        csv_format = None if images is None else CsvFormat(images, id_col, labels_col, text_col, label_sep,
                                                            parse_label_names(label_names))
        try:
            tokenizer, name = load_tokenizer(text_model), Path(text_model).name
        except MmfuseError as e:
            typer.secho(f"warning: {e}; counting words instead of tokens", fg="yellow", err=True)
            tokenizer, name = None, "whitespace words"
        summary = inspect_data(data_dir, out, csv_format=csv_format, tokenizer=tokenizer, tokenizer_name=name,
                               max_length=max_length, progress=progress, log=typer.echo, overwrite=overwrite)
    typer.echo(summary.read_text())


@app.command()
def report(
    paths: List[Path] = typer.Argument(..., help="Run folders, grid folders, caches, inspect folders, or a parent "
                                       "folder searched for them."),
    out: Path = typer.Option(Path("report.html"), help="The HTML file to write (self-contained: open it offline)."),
    title: str = typer.Option("mmfuse report", help="The page's title."),
    overwrite: bool = typer.Option(False, help="Replace an existing file at --out."),
):
    """One static HTML page of runs, grids, ensembles, fine-tune runs, caches and data, images embedded."""
    from .report import build_report

    with user_errors():
        path = build_report(paths, out, title, overwrite=overwrite)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)")


@app.command()
def info(path: Path = typer.Argument(..., help="A feature cache (.h5).")):
    """Print a cache's shapes, provenance, class balance and skipped rows."""
    from .cache import FeatureCache, lock_holder
    from .data import current_fingerprint

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
    for guid, reason in cache.skipped:
        typer.echo(f"skipped guid {guid}: {reason}")
    now = current_fingerprint(d)
    if now is None:
        typer.secho(f"note: the data set at {d['root']} cannot be read now, so it was not checked against the cache",
                    fg="yellow", err=True)
    elif now != d["fingerprint"]:
        typer.secho(f"warning: the data set at {d['root']} changed since this cache was extracted (fingerprint "
                    f"{now[:16]} now, {d['fingerprint'][:16]} then): re-extract it with --overwrite", fg="yellow", err=True)


D = HeadConfig()  # the CLI's defaults are the configs' defaults
FT = FineTuneConfig()


@app.command("train-head")
def train_head(
    cache: Path = typer.Argument(..., help="Training feature cache (.h5)."),
    fusion: Fusion = typer.Option(Fusion(D.fusion), help="The head (mmfuse.heads.list_heads())."),
    out: Path = typer.Option(..., help="Run folder to write (weights, config, metrics, plots)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run folder at --out (kept until the new run is "
                                   "complete)."),
    val_split: float = typer.Option(0.2, help="Stratified validation fraction (0: none) when --val is not given."),
    val: Optional[Path] = typer.Option(None, help="A separate labelled validation cache."),
    text_feature: TextFeature = typer.Option(TextFeature(D.text_feature), help="Cached text vector: cls, mean, or "
                                             "auto (the encoder's trained pooling where recorded, else cls)."),
    epochs: int = typer.Option(D.epochs, help="Maximum epochs."),
    lr: float = typer.Option(D.lr, help="AdamW peak learning rate."),
    weight_decay: float = typer.Option(D.weight_decay, help="AdamW weight decay."),
    hidden: int = typer.Option(D.hidden, help="MLP / projection width."),
    dropout: float = typer.Option(D.dropout, help="Dropout."),
    batch_size: int = typer.Option(D.batch_size, help="Rows per step."),
    loss: Loss = typer.Option(Loss(D.loss), help="ce (softmax cross-entropy) or hinge (multiclass SVM)."),
    class_weight: ClassWeight = typer.Option(ClassWeight(D.class_weight), help="balanced: inverse class frequency."),
    label_smoothing: float = typer.Option(D.label_smoothing, help="Cross-entropy label smoothing."),
    ema: float = typer.Option(D.ema, help="Decay per step of a moving average of the weights, which validation "
                              "scores and the run keeps (0: off; 0.99 tied the default on mvsa at 1.2x the time)."),
    patience: int = typer.Option(D.patience, help="Early stopping patience (epochs) on the --monitor score."),
    align_weight: float = typer.Option(D.align_weight, help="Contrastive loss weight (aligned)."),
    c: str = typer.Option(str(D.C), "--C", help="Inverse regularisation (logreg), or auto: searched by CV."),
    monitor: Monitor = typer.Option(Monitor(D.monitor), help="Early-stopping score: auto (macro_f1; multi-label "
                                    "micro_f1), or multi-label micro_f1, macro_f1, samples_f1, map."),
    thresholds: Thresholds = typer.Option(Thresholds(D.thresholds), help="Multi-label: global (one threshold "
                                          "tuned on the validation rows for micro-F1), per-label (one per label with "
                                          "5+ validation positives, else global) or fixed (0.5)."),
    min_labels: int = typer.Option(D.min_labels, help="Multi-label: 1 gives a row where nothing passes its top "
                                   "label; 0 allows none."),
    combine: Combine = typer.Option(Combine(D.combine), help="Late fusion, multi-label: mean of the two heads' "
                                    "probabilities, or union (a label either head predicts)."),
    seed: int = typer.Option(D.seed, help="Seed: same seed, same result."),
):
    """Train a fusion head on cached features in seconds; save a reusable run folder."""
    from .heads import train_head as run_train
    from .metrics import format_metrics, format_size

    with user_errors():
        cfg = HeadConfig(fusion=fusion.value, text_feature=text_feature.value, hidden=hidden, dropout=dropout,
                         align_weight=align_weight, epochs=epochs, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, loss=loss.value, class_weight=class_weight.value,
                         label_smoothing=label_smoothing, ema=ema, patience=patience, C=_number_or_auto(c, "--C"),
                         seed=seed, monitor=monitor.value, thresholds=thresholds.value, min_labels=min_labels,
                         combine=combine.value)
        head, metrics = run_train(cache, cfg, val_split=val_split, val=val, out=out, overwrite=overwrite)
    typer.echo(f"{fusion.value} on text/{metrics['text_feature']}: trained in {metrics['fit_seconds']:.1f} s "
               f"({metrics['epochs_run']} epochs, best {metrics['best_epoch']})")
    if metrics.get("modality_weights"):
        typer.echo("modality weights: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["modality_weights"].items()))
    if "validation" in metrics:
        typer.echo("validation: " + format_metrics(metrics["validation"]))
    if metrics.get("thresholds"):
        typer.echo("thresholds: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics["thresholds"].items()))
    typer.echo(f"saved run to {out} ({format_size(metrics['size_bytes'])} on disk)")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder (train-head, grid best/, ensemble, finetune)."),
    source: Path = typer.Argument(..., help="A labelled feature cache; for a fine-tune run, a data folder."),
    split: str = typer.Option("train", help="Fine-tune runs: the data folder's split to score."),
    zero: Optional[Zero] = typer.Option(None, help="Score with this modality's features set to zero (ablation)."),
):
    """Score a trained run on labelled data; saves eval-*.json into the run folder."""
    from .metrics import format_metrics
    from .runs import evaluate_run

    with user_errors():
        metrics = evaluate_run(run, source, zero=zero.value if zero else None, split=split,
                               log=lambda s: typer.secho(s, fg="yellow", err=True))
    typer.echo(f"{run} on {source}{f' (zero {zero.value})' if zero else ''}: " + format_metrics(metrics))


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder (train-head, grid best/, ensemble, finetune)."),
    source: Path = typer.Argument(..., help="Feature cache to predict; for a fine-tune run, a data folder."),
    out: Path = typer.Option(..., help="Predictions file, guid,tag rows in the course format."),
    split: str = typer.Option("test", help="Fine-tune runs: the data folder's split to predict."),
):
    """Write guid,tag predictions in the source's row order."""
    from .runs import predict_run

    with user_errors():
        path = predict_run(run, source, out, log=lambda s: typer.secho(s, fg="yellow", err=True), split=split)
    typer.echo(f"wrote {path}")


def _number_or_auto(value: str, option: str):
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise MmfuseError(f"{option} takes a number or 'auto', not {value!r}") from None


def _layers(value: str, option: str) -> int:
    if value == "all":
        return -1
    try:
        return int(value)
    except ValueError:
        raise MmfuseError(f"{option} takes a number or 'all', not {value!r}") from None


@app.command()
def finetune(
    data_dir: Path = typer.Argument(..., help="Course-format folder with a labelled train split."),
    out: Path = typer.Option(..., help="Run folder (checkpoint, metrics, plots, text/, image.pt)."),
    fusion: Fusion = typer.Option(Fusion("concat"), help="Any head trained by gradient "
                                  f"({', '.join(list_heads(training='gradient'))})."),
    text_model: str = typer.Option(FT.text_model, help="HF hub id, local folder, or 'minilm' (offline)."),
    image_model: str = typer.Option(FT.image_model, help="torchvision model name or efficientnet-lite0/1/2."),
    image_weights: str = typer.Option(FT.image_weights, help="DEFAULT, a weights name, none, or a state-dict file."),
    text_feature: TextFeature = typer.Option(TextFeature(D.text_feature), help="Text vector: cls, mean, or auto (the "
                                             "encoder's trained pooling where its folder says, else cls)."),
    unfreeze_text_layers: str = typer.Option(str(FT.unfreeze_text_layers), help="Train the last N encoder layers, or all."),
    unfreeze_image_blocks: str = typer.Option(str(FT.unfreeze_image_blocks), help="Train the last M image stages (ResNet: layer4 for 1), or all."),
    epochs: int = typer.Option(FT.epochs, help="Maximum epochs (early stopping on validation macro-F1)."),
    lr_backbone: float = typer.Option(FT.lr_backbone, help="AdamW peak lr of the unfrozen backbone layers."),
    lr_head: float = typer.Option(FT.lr_head, help="AdamW peak lr of the fusion head."),
    batch_size: int = typer.Option(FT.batch_size, help="Rows per forward pass."),
    grad_accum: int = typer.Option(FT.grad_accum, help="Forward passes per optimiser step (effective batch = product)."),
    max_length: int = typer.Option(FT.max_length, help="Max tokens per text."),
    val_split: float = typer.Option(FT.val_split, help="Stratified validation fraction when --val is not given."),
    val: Optional[str] = typer.Option(None, help="Validation data as DATA_DIR:SPLIT (e.g. data/dev:train)."),
    augment: bool = typer.Option(FT.augment, help="Train-only random resized crop, flip, colour jitter."),
    precision: str = typer.Option(FT.precision, help="auto (bf16 where the hardware has it natively; fp16 on older "
                                   "CUDA), fp32, bf16 or fp16 autocast."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, help="Start over: replace a run at --out (kept until the new one is "
                                   "complete) or an unfinished one."),
    hidden: int = typer.Option(D.hidden, help="Head MLP / projection width."),
    dropout: float = typer.Option(D.dropout, help="Head dropout."),
    loss: Loss = typer.Option(Loss(D.loss), help="ce or hinge."),
    class_weight: ClassWeight = typer.Option(ClassWeight(D.class_weight), help="balanced or none."),
    patience: int = typer.Option(FT.patience, help="Epochs without validation gain before stopping."),
    num_workers: int = typer.Option(FT.num_workers, help="Image decode processes."),
    seed: int = typer.Option(FT.seed, help="Seed."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Fine-tune the backbones end to end with a fusion head; save the tuned backbones for extract."""
    from .finetune import finetune as run_finetune
    from .metrics import format_metrics

    with user_errors(f"the last finished epoch's checkpoint is kept in {out}.partial (or {out}); re-run the same "
                     "command with --resume to continue"):
        val_pair = None
        if val is not None:
            folder, _, vsplit = val.rpartition(":")
            if not folder:
                raise MmfuseError(f"--val takes DATA_DIR:SPLIT (e.g. mydata:train), not {val!r}")
            val_pair = (folder, vsplit)
        cfg = FineTuneConfig(text_model=text_model, image_model=image_model, image_weights=image_weights,
                             max_length=max_length,
                             unfreeze_text_layers=_layers(unfreeze_text_layers, "--unfreeze-text-layers"),
                             unfreeze_image_blocks=_layers(unfreeze_image_blocks, "--unfreeze-image-blocks"),
                             epochs=epochs, lr_backbone=lr_backbone, lr_head=lr_head, batch_size=batch_size,
                             grad_accum=grad_accum, patience=patience, augment=augment, precision=precision,
                             val_split=val_split, num_workers=num_workers, seed=seed)
        head = HeadConfig(fusion=fusion.value, text_feature=text_feature.value, hidden=hidden, dropout=dropout,
                          loss=loss.value, class_weight=class_weight.value, lr=lr_head, seed=seed)
        _, metrics = run_finetune(data_dir, out, cfg, head, val=val_pair, device=device, resume=resume,
                                  overwrite=overwrite,
                                  progress=progress, log=typer.echo)
    typer.echo(f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}; validation: "
               + format_metrics(metrics["validation"]))
    typer.echo(f"saved run to {out}: tuned text model in {out}/text, image weights in {out}/image.pt "
               f"(mmfuse extract DATA --text-model {out}/text --image-model {image_model} "
               f"--image-weights {out}/image.pt)")


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="Run folders from train-head.")):
    """Print a table of the runs' validation metrics, best macro-F1 first."""
    from .heads.run import compare_runs

    with user_errors():
        typer.echo(compare_runs(runs))


@app.command()
def score(
    predictions: Path = typer.Argument(..., help="Predictions (from predict): guid,tag or ImageID,Labels rows."),
    truth: Path = typer.Argument(..., help="True labels in the same format."),
    label_names: Optional[str] = typer.Option(None, help="Multi-label: the label set (comma list or file) "
                                              "[default: every label in either file]."),
    id_col: str = typer.Option("ImageID", help="Multi-label: the id column."),
    labels_col: str = typer.Option("Labels", help="Multi-label: the labels column."),
):
    """Score a predictions file against a labels file: the course format (guid,tag), or multi-label
    ImageID,Labels files (micro-, macro-, samples-F1, per label)."""
    from .data import COURSE_TAGS, parse_label_names
    from .metrics import format_metrics
    from .runs import is_course_file, score_files, score_label_sets

    with user_errors():
        if not truth.is_file():
            raise MmfuseError(f"file not found: {truth}")
        if is_course_file(truth):
            m = score_files(predictions, truth, COURSE_TAGS)
        else:
            m = score_label_sets(predictions, truth, parse_label_names(label_names), id_col, labels_col)
    typer.echo(f"{predictions} vs {truth}: " + format_metrics(m))


@app.command()
def grid(
    cache: Path = typer.Argument(..., help="Labelled training feature cache (.h5)."),
    out: Path = typer.Option(..., help="Grid folder (results.csv, summary.md, PNGs, best/)."),
    fusion: Optional[str] = typer.Option(None, help=f"Comma list of {', '.join(list_heads())} [default: "
                                         "concat,weighted,gated,late]."),
    lr: Optional[str] = typer.Option(None, help="Comma list [default: 1e-4,3e-4,1e-3]."),
    weight_decay: Optional[str] = typer.Option(None, help="Comma list [default: 0.01]."),
    hidden: Optional[str] = typer.Option(None, help="Comma list."),
    dropout: Optional[str] = typer.Option(None, help="Comma list [default: 0.2]."),
    loss: Optional[str] = typer.Option(None, help="Comma list of ce, hinge."),
    class_weight: Optional[str] = typer.Option(None, help="Comma list of balanced, none."),
    text_feature: Optional[str] = typer.Option(None, help="Comma list of auto, cls, mean [default: auto]."),
    label_smoothing: Optional[str] = typer.Option(None, help="Comma list."),
    ema: Optional[str] = typer.Option(None, help="Comma list of weight-average decays (0: off) [default: 0]."),
    batch_size: Optional[str] = typer.Option(None, help="Comma list."),
    epochs: Optional[str] = typer.Option(None, help="Comma list [default: 20] (early stopping may end sooner)."),
    patience: Optional[str] = typer.Option(None, help="Comma list [default: 5]: epochs without a validation gain "
                                           "before stopping (3: faster, about the same score; "
                                           "bench/experiments/defaults.py)."),
    c: Optional[str] = typer.Option(None, "--C", help="Comma list of numbers or auto (logreg)."),
    align_weight: Optional[str] = typer.Option(None, help="Comma list (aligned)."),
    combine: Optional[str] = typer.Option(None, help="Comma list of mean, union (late fusion, multi-label)."),
    thresholds: Optional[str] = typer.Option(None, help="Comma list of per-label, global, fixed (multi-label)."),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16 training matmuls [default: bf16 where this "
                                            "CPU has native bf16 and runs it 1.5x faster than fp32, else fp32]."),
    config: Optional[Path] = typer.Option(None, help="TOML/YAML file with a [grid] table (options here override it)."),
    folds: Optional[int] = typer.Option(None, help="Stratified CV folds [default: 5]."),
    repeats: Optional[int] = typer.Option(None, help="Repeated stratified k-fold: reshuffle and run the folds R "
                                          "times (R x folds fits per configuration) [default: 1]."),
    seed: Optional[int] = typer.Option(None, help="Seed of the folds [default: 0]."),
    jobs: Optional[int] = typer.Option(None, help="Local processes [default: all cores]."),
    backend: str = typer.Option("local", help="local (processes) or dask (a dask.distributed cluster)."),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, e.g. tcp://host:8786."),
    refit: Refit = typer.Option(Refit("folds"), help="What best/ holds: folds (the best configuration's k "
                                "fold models, averaged: what CV scored) or full (one refit on all rows with the "
                                "fold fits' schedule in steps)."),
    search: Search = typer.Option(Search("full"), help="full: every configuration on every fold; halving: "
                                  "successive halving over folds (all on 1 fold, the best third on 2, the best "
                                  "third of those on all; finished folds kept): a third of the fits, for grids "
                                  "too large to run in full (bench/experiments/selection.py)."),
    pick: Pick = typer.Option(Pick("top"), help="What best/ holds: top (best mean CV macro-F1; it predicted "
                              "held-out rows better) or one-se (the simplest configuration within one standard "
                              "error of the top)."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
):
    """Score a grid of head configurations by stratified k-fold CV, in parallel; save the best."""
    from .grid import GridConfig, grid_configs, run_grid

    with user_errors(f"every finished fit is kept in {out}; re-run the same command to resume"):
        axes = {"fusion": fusion, "lr": lr, "weight_decay": weight_decay, "hidden": hidden, "dropout": dropout,
                "loss": loss, "class_weight": class_weight, "text_feature": text_feature,
                "label_smoothing": label_smoothing, "ema": ema, "batch_size": batch_size, "epochs": epochs,
                "patience": patience, "C": c, "align_weight": align_weight, "precision": precision,
                "combine": combine, "thresholds": thresholds}
        setup = GridConfig.from_options(config, axes, folds=folds, repeats=repeats, seed=seed, jobs=jobs,
                                        backend=backend, scheduler=scheduler, refit_mode=refit.value,
                                        pick=pick.value, search=search.value)
        configs = grid_configs(setup.axes, out, log=typer.echo)
        typer.echo(setup.describe(len(configs)))
        result = run_grid(cache, configs, out, setup, progress=progress, log=typer.echo)
    for line in result.lines(setup):
        typer.echo(line)
    name = result.metric_name
    from .ensemble import recommend_tied

    with user_errors():
        ens = recommend_tied(out, len(result.tied))
    if ens:
        d = ens["difference"]
        typer.echo(f"the {ens['members']} tied configurations averaged: CV {name} {ens['score']:.3f} vs the top's "
                   f"{ens['top']:.3f} (per fold {d['mean']:+.3f}, ahead on {d['ahead']} of {d['folds']}): "
                   + (f"recommended: mmfuse ensemble {out} --top {ens['members']} --out runs/ens" if ens["recommended"]
                      else f"not ahead on most folds, {result.best_run} stays the recommendation"))


@app.command()
def ensemble(
    grid_dir: Path = typer.Argument(..., help="A grid folder from mmfuse grid."),
    out: Path = typer.Option(..., help="Run folder for the ensemble (predict/evaluate accept it)."),
    top: int = typer.Option(8, help="Stack this many best configurations."),
    meta: str = typer.Option("mean", help="mean: average the members' probabilities (it beat lr on held-out "
                             "mvsa rows, +0.006 over 5 splits); lr: logistic regression on their out-of-fold "
                             "probabilities (C by inner CV)."),
    refit: Refit = typer.Option(Refit("folds"), help="Each member as its k fold models (folds) or one refit on "
                                "all rows (full)."),
    overwrite: bool = typer.Option(False, help="Replace an existing folder at --out (kept until the new ensemble is "
                                   "complete)."),
):
    """Stack a grid's top configurations with a logistic regression on their out-of-fold probabilities."""
    from .ensemble import build_ensemble

    with user_errors():
        _, m = build_ensemble(grid_dir, top, out, meta, refit.value, log=typer.echo, overwrite=overwrite)
    b = m["best_member"]
    metric = b["metric"]
    name = metric.replace("_f1", "-F1")
    typer.echo(f"best single configuration ({b['fusion']}): CV {name} {b[metric + '_mean']:.3f} ± "
               f"{b[metric + '_std']:.3f}, pooled out-of-fold {b['pooled']:.3f}")
    for kind, cv in {meta: m["cv"], **m["cv_other"]}.items():
        d = m["vs_best_member"][kind]
        typer.echo(f"ensemble of {len(m['members'])} ({'logistic regression' if kind == 'lr' else 'mean of probabilities'}"
                   f"{', saved' if kind == meta else ''}): CV {name} {cv[metric + '_mean']:.3f} ± "
                   f"{cv[metric + '_std']:.3f}, pooled {cv['pooled']:.3f}; vs the best member per fold "
                   f"{d['mean']:+.3f} ± {d['std']:.3f} (ahead on {d['ahead']} of {d['folds']} folds)")
    typer.echo("(members were chosen on these folds, so the ensemble's CV numbers are optimistic)")
    typer.echo(f"saved run to {out}")


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Folder to write the synthetic course-format data set into."),
    n_train: int = typer.Option(300, help="Labelled rows."),
    n_test: int = typer.Option(60, help="Unlabelled rows (true tags in test_labels.txt)."),
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(False, help="Replace a demo data set written before (never a real data set)."),
):
    """Write a small synthetic data set whose labels show partly in the texts, partly in the images."""
    from .demo import make_demo_data

    with user_errors():
        make_demo_data(out_dir, n_train, n_test, seed, overwrite)
    typer.echo(f"wrote {n_train} labelled and {n_test} unlabelled pairs to {out_dir}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
