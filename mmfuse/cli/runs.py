"""Commands on cached features and run folders: train-head, evaluate, predict, compare, score, report."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import MmfuseError
from ..heads import HeadConfig
from ._common import (D, ClassWeight, ClassWeighting, Combine, DropoutRate, Fusion, Hidden, ImageFeature, ImageVector,
                      Loss, LossKind, Monitor, TextFeature, TextVector, Thresholds, Zero, ZeroshotFrom, _number_or_auto,
                      app,
                      user_errors)


@app.command("train-head")
def train_head(
    cache: Path = typer.Argument(..., help="Training feature cache (.h5)."),
    fusion: Fusion = typer.Option(Fusion(D.fusion), help="The head (mmfuse.heads.list_heads())."),
    out: Path = typer.Option(..., help="Run folder to write (weights, config, metrics, plots)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run folder at --out (kept until the new run is "
                                   "complete)."),
    val_split: float = typer.Option(0.2, help="Stratified validation fraction (0: none) when --val is not given."),
    val: Optional[Path] = typer.Option(None, help="A separate labelled validation cache."),
    text_feature: TextVector = TextFeature(D.text_feature),
    image_feature: ImageVector = ImageFeature(D.image_feature),
    epochs: int = typer.Option(D.epochs, help="Maximum epochs."),
    lr: float = typer.Option(D.lr, help="AdamW peak learning rate."),
    weight_decay: float = typer.Option(D.weight_decay, help="AdamW weight decay."),
    hidden: Hidden = D.hidden,
    dropout: DropoutRate = D.dropout,
    batch_size: int = typer.Option(D.batch_size, help="Rows per step."),
    loss: LossKind = Loss(D.loss),
    class_weight: ClassWeighting = ClassWeight(D.class_weight),
    label_smoothing: float = typer.Option(D.label_smoothing, help="Cross-entropy label smoothing."),
    ema: float = typer.Option(D.ema, help="Decay per step of a moving average of the weights, which validation "
                              "scores and the run keeps (0: off; bench/experiments/defaults.py)."),
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
    zeroshot_from: ZeroshotFrom = typer.Option(ZeroshotFrom(D.zeroshot_from), help="zeroshot: the embedding compared "
                                               "with the class prompts: image, text or both."),
    seed: int = typer.Option(D.seed, help="Seed: same seed, same result."),
):
    """Train a fusion head on cached features in seconds; save a reusable run folder."""
    from ..heads import train_head as run_train
    from ..metrics import format_metrics, format_size

    with user_errors():
        cfg = HeadConfig(fusion=fusion.value, text_feature=text_feature.value, image_feature=image_feature.value,
                         hidden=hidden, dropout=dropout,
                         align_weight=align_weight, epochs=epochs, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, loss=loss.value, class_weight=class_weight.value,
                         label_smoothing=label_smoothing, ema=ema, patience=patience, C=_number_or_auto(c, "--C"),
                         seed=seed, monitor=monitor.value, thresholds=thresholds.value, min_labels=min_labels,
                         combine=combine.value, zeroshot_from=zeroshot_from.value)
        head, metrics = run_train(cache, cfg, val_split=val_split, val=val, out=out, overwrite=overwrite)
    typer.echo(f"{fusion.value} on text/{metrics['text_feature']} and image/{metrics['image_feature']}: trained in "
               f"{metrics['fit_seconds']:.1f} s "
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
    source: List[Path] = typer.Argument(..., help="A labelled feature cache, or several of the same rows (a run "
                                        "trained on text from one cache and images from another: one for each); "
                                        "for a fine-tune run, a data folder."),
    split: str = typer.Option("train", help="Fine-tune runs: the data folder's split to score."),
    zero: Optional[Zero] = typer.Option(None, help="Score with this modality's features set to zero (ablation)."),
):
    """Score a trained run on labelled data; saves eval-*.json into the run folder."""
    from ..metrics import format_metrics
    from ..runs import evaluate_run

    with user_errors():
        metrics = evaluate_run(run, source[0] if len(source) == 1 else source, zero=zero.value if zero else None,
                               split=split, log=lambda s: typer.secho(s, fg="yellow", err=True))
    typer.echo(f"{run} on {' + '.join(map(str, source))}{f' (zero {zero.value})' if zero else ''}: "
               + format_metrics(metrics))


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder (train-head, grid best/, ensemble, finetune)."),
    source: List[Path] = typer.Argument(..., help="Feature cache to predict, or several of the same rows (a run "
                                        "trained on text from one cache and images from another: one for each); "
                                        "for a fine-tune run, a data folder."),
    out: Path = typer.Option(..., help="Predictions file, guid,tag rows in the course format."),
    split: str = typer.Option("test", help="Fine-tune runs: the data folder's split to predict."),
):
    """Write guid,tag predictions in the source's row order."""
    from ..runs import predict_run

    with user_errors():
        path = predict_run(run, source[0] if len(source) == 1 else source, out,
                           log=lambda s: typer.secho(s, fg="yellow", err=True), split=split)
    typer.echo(f"wrote {path}")


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="Run folders from train-head.")):
    """Print a table of the runs' validation metrics, best macro-F1 first."""
    from ..heads.run import compare_runs

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
    from ..data import COURSE_TAGS, parse_label_names
    from ..metrics import format_metrics
    from ..runs import is_course_file, score_files, score_label_sets

    with user_errors():
        if not truth.is_file():
            raise MmfuseError(f"file not found: {truth}")
        if is_course_file(truth):
            m = score_files(predictions, truth, COURSE_TAGS)
        else:
            m = score_label_sets(predictions, truth, parse_label_names(label_names), id_col, labels_col)
    typer.echo(f"{predictions} vs {truth}: " + format_metrics(m))


@app.command()
def report(
    paths: List[Path] = typer.Argument(..., help="Run folders, grid folders, caches, inspect folders, or a parent "
                                       "folder searched for them."),
    out: Path = typer.Option(Path("report.html"), help="The HTML file to write (self-contained: open it offline)."),
    title: str = typer.Option("mmfuse report", help="The page's title."),
    overwrite: bool = typer.Option(False, help="Replace an existing file at --out."),
):
    """One static HTML page of runs, grids, ensembles, fine-tune runs, caches and data, images embedded."""
    from ..report import build_report

    with user_errors():
        path = build_report(paths, out, title, overwrite=overwrite)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)")
