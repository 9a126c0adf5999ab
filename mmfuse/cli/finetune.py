"""End-to-end fine-tuning: finetune."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from ..errors import MmfuseError
from ..finetune import FineTuneConfig
from ..heads import HeadConfig, list_heads
from ._common import (D, FT, ClassWeight, ClassWeighting, DropoutRate, Fusion, Hidden, Loss, LossKind, TextFeature,
                      TextVector, _layers, app, user_errors)


@app.command()
def finetune(
    data_dir: Path = typer.Argument(..., help="Course-format folder with a labelled train split."),
    out: Path = typer.Option(..., help="Run folder (checkpoint, metrics, plots, text/, image.pt)."),
    fusion: Fusion = typer.Option(Fusion("concat"), help="Any head trained by gradient "
                                  f"({', '.join(list_heads(training='gradient'))})."),
    text_model: str = typer.Option(FT.text.model, help="HF hub id, local folder, or 'minilm' (offline)."),
    image_model: str = typer.Option(FT.image.model, help="torchvision model name or efficientnet-lite0/1/2."),
    image_weights: str = typer.Option(FT.image.weights, help="DEFAULT, a weights name, none, or a state-dict file."),
    text_feature: TextVector = TextFeature(D.text_feature),
    unfreeze_text_layers: str = typer.Option(str(FT.unfreeze_text_layers), help="Train the last N encoder layers, or all."),
    unfreeze_image_blocks: str = typer.Option(str(FT.unfreeze_image_blocks), help="Train the last M image stages (ResNet: layer4 for 1), or all."),
    epochs: int = typer.Option(FT.epochs, help="Maximum epochs (early stopping on validation macro-F1)."),
    lr_backbone: float = typer.Option(FT.lr_backbone, help="AdamW peak lr of the unfrozen backbone layers."),
    lr_head: float = typer.Option(FT.lr_head, help="AdamW peak lr of the fusion head."),
    batch_size: int = typer.Option(FT.batch_size, help="Rows per forward pass."),
    grad_accum: int = typer.Option(FT.grad_accum, help="Forward passes per optimiser step (effective batch = product)."),
    max_length: int = typer.Option(FT.text.max_length, help="Max tokens per text."),
    val_split: float = typer.Option(FT.val_split, help="Stratified validation fraction when --val is not given."),
    val: Optional[str] = typer.Option(None, help="Validation data as DATA_DIR:SPLIT (e.g. data/dev:train)."),
    augment: bool = typer.Option(FT.augment, help="Train-only random resized crop, flip, colour jitter."),
    precision: str = typer.Option(FT.precision, help="auto (bf16 where the hardware has it natively; fp16 on older "
                                   "CUDA), fp32, bf16 or fp16 autocast."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, help="Start over: replace a run at --out (kept until the new one is "
                                   "complete) or an unfinished one."),
    hidden: Hidden = D.hidden,
    dropout: DropoutRate = D.dropout,
    loss: LossKind = Loss(D.loss),
    class_weight: ClassWeighting = ClassWeight(D.class_weight),
    patience: int = typer.Option(FT.patience, help="Epochs without validation gain before stopping."),
    num_workers: int = typer.Option(FT.num_workers, help="Image decode processes."),
    seed: int = typer.Option(FT.seed, help="Seed."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Fine-tune the backbones end to end with a fusion head; save the tuned backbones for extract."""
    from ..finetune import finetune as run_finetune
    from ..metrics import format_metrics

    with user_errors(f"the last finished epoch's checkpoint is kept in {out}.partial (or {out}); re-run the same "
                     "command with --resume to continue"):
        val_pair = None
        if val is not None:
            folder, _, vsplit = val.rpartition(":")
            if not folder:
                raise MmfuseError(f"--val takes DATA_DIR:SPLIT (e.g. mydata:train), not {val!r}")
            val_pair = (folder, vsplit)
        cfg = FineTuneConfig(text=replace(FT.text, model=text_model, max_length=max_length),
                             image=replace(FT.image, model=image_model, weights=image_weights),
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
