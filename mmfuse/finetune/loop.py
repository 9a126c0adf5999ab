"""The fine-tune loop on one screen (``train``). ``setup`` builds what it trains with (data, model,
optimiser, schedule, loss) into a ``Job``; the steps it takes once per run or per epoch (standardiser,
restore, validation row, checkpoint) follow it."""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import read_course
from ..errors import DataError
from ..heads import HeadConfig
from ..heads.train import class_weights, loss_fn, warmup_cosine
from ..heads.run import stratified_split
from ..metrics import classification_metrics
from ..precision import autocast
from ..safe import load_tensors
from .config import FineTuneConfig
from .data import PairLoader
from .model import FineTuneModel, _train_mode, build_model, freeze, predict_loader


@dataclass
class Job:
    """What one fine-tune run trains with."""
    cfg: FineTuneConfig
    head_cfg: HeadConfig
    dev: torch.device
    precision: str  # chosen: fp32, bf16 or fp16
    model: FineTuneModel
    image_model: nn.Module  # the image model the extractor wraps (its state dict is what image.pt holds)
    parts: tuple[list[nn.Module], list[nn.Module]]  # freeze(): (frozen modules, trainable image stages)
    tokenizer: object
    prep: dict  # the image preprocessing trained with
    provenance: dict  # {"text": ..., "image": ...} of the backbones
    label_names: tuple
    train: PairLoader
    valid: PairLoader
    backbone: list[nn.Parameter]  # the backbones' trainable parameters
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: Callable


def train(job: Job, out: Path, resume: bool, progress: bool, log: Callable[[str], None]) -> dict:
    """Train epoch by epoch from the start (or from ``out``'s checkpoint), checkpointing every epoch and
    stopping early on validation macro-F1; returns the state with the best epoch's weights loaded."""
    cfg, model, dev, precision = job.cfg, job.model, job.dev, job.precision
    opt, sched, scaler = job.opt, job.sched, job.scaler
    state = {"epoch": 0, "history": [], "best": -1.0, "best_epoch": 0, "best_state": None, "stopped": False}
    if resume:
        state = _restore(job, out / "checkpoint.pt", state)
        log(f"resuming {out} after epoch {state['epoch']} of {cfg.epochs}")
    else:
        _fit_standardiser(model, job.train, precision, dev)
        torch.manual_seed(cfg.seed)  # dropout and augmentation draw from here on
    log(f"fine-tuning {sum(p.numel() for p in job.backbone) / 1e6:.2f}M backbone + "
        f"{sum(p.numel() for p in model.head.parameters()) / 1e6:.2f}M head parameters on {dev} ({precision}); "
        f"{len(job.train.records)} training, {len(job.valid.records)} validation rows")

    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if state["stopped"]:  # an early stop recorded before an interruption stays a stop
            break
        _train_mode(model, job.parts, job.provenance["image"]["node"])
        job.train.sampler.epoch = epoch
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(job.train, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress)
        for k, (_, batch, y) in enumerate(bar):
            with autocast(dev, precision):
                outp = model(batch)
                loss = job.criterion(outp.logits.float(), y)
                if outp.aux is not None:
                    loss = loss + job.head_cfg.align_weight * outp.aux.float()
            scaler.scale(loss / cfg.grad_accum).backward()
            if (k + 1) % cfg.grad_accum == 0 or k + 1 == len(job.train):
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        row = _validate(job, epoch, loss_sum / seen, t0)
        state["history"].append(row)
        log(f"epoch {epoch}: train loss {row['train_loss']:.4f}, validation macro-F1 {row['val_macro_f1']:.3f}, "
            f"{row['seconds']:.0f} s, peak memory {row['peak_memory_mb']:.0f} MiB")
        if row["val_macro_f1"] > state["best"]:
            state.update(best=row["val_macro_f1"], best_epoch=epoch, best_state=_trainable_state(model))
        state["epoch"] = epoch
        stop = state["stopped"] = epoch - state["best_epoch"] >= cfg.patience
        _checkpoint(job, state, out / "checkpoint.pt")
        if stop:
            log(f"no validation gain for {cfg.patience} epoch(s): stopping")
            break
    model.load_state_dict(state["best_state"], strict=False)  # the best epoch's trainable weights
    return state


def setup(data_dir, cfg: FineTuneConfig, head_cfg: HeadConfig, split: str, val, dev: torch.device,
          precision: str) -> Job:
    """Read the training (and validation) split, build and freeze the model, and its optimiser,
    schedule, scaler and loss."""
    if Path(data_dir).is_file():
        raise DataError(f"{data_dir} is a file: fine-tuning reads single-label course-format folders (multi-label "
                        "CSVs train heads on extracted features: mmfuse extract DATA.csv --images DIR ...)")
    ds = read_course(data_dir, split)
    ds.check("raise")
    y_all = ds.label_array()
    if (y_all < 0).any():
        raise DataError(f"{ds.split_file} has unlabelled rows: fine-tune on a labelled split")
    if val is not None:
        val_ds = read_course(val[0], val[1])
        val_ds.check("raise")
        tr_rows, va_rows = np.arange(len(ds.records)), None
    else:
        val_ds = ds
        tr_rows, va_rows = stratified_split(y_all, cfg.val_split, cfg.seed)
    model, tokenizer, prep, text_prov, image_prov, image_model = build_model(cfg, head_cfg, len(ds.label_names))
    parts = freeze(model.text, image_model, model.image, cfg)
    model.to(dev)
    train = PairLoader(ds, np.sort(tr_rows), tokenizer, prep, cfg, train=True, device=dev)
    valid = PairLoader(val_ds, np.arange(len(val_ds.records)) if va_rows is None else np.sort(va_rows), tokenizer,
                       prep, cfg, train=False, device=dev)
    if (valid.y < 0).any():
        raise DataError(f"validation split {val_ds.split_file} has unlabelled rows")

    backbone = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": backbone, "lr": cfg.lr_backbone},
                             {"params": list(model.head.parameters()), "lr": cfg.lr_head}],
                            weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train) / cfg.grad_accum)
    sched = warmup_cosine(opt, steps, max(1, int(cfg.warmup * steps)))
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16" and dev.type == "cuda")
    weight = class_weights(train.y, len(ds.label_names), head_cfg.class_weight)
    criterion = loss_fn(head_cfg, None if weight is None else torch.tensor(weight, dtype=torch.float32, device=dev))
    return Job(cfg, head_cfg, dev, precision, model, image_model, parts, tokenizer, prep,
               {"text": text_prov, "image": image_prov}, ds.label_names, train, valid, backbone, opt, sched, scaler,
               criterion)


# --- once per run -------------------------------------------------------------------------------------
@torch.no_grad()
def _fit_standardiser(model: FineTuneModel, train: PairLoader, precision: str, dev: torch.device,
                      rows: int = 256) -> None:
    """Mean and std of the untuned features over the first ``rows`` training rows (fixed from then on)."""
    model.eval()
    ts, ims, seen = [], [], 0
    with autocast(dev, precision):
        for _, batch, _ in train:
            t, i = model.features(batch)
            ts.append(t.float())
            ims.append(i.float())
            seen += len(t)
            if seen >= rows:
                break
    for name, x in (("text", torch.cat(ts)), ("image", torch.cat(ims))):
        getattr(model, f"{name}_mean").copy_(x.mean(0))
        # floored at 5% of the features' RMS: a dimension that barely varies in eval mode (a random or
        # saturated encoder's [CLS]) would otherwise blow up once training moves it (seen: loss 9.5 vs 1.1)
        getattr(model, f"{name}_std").copy_(x.std(0).nan_to_num(0.0).clamp_min(0.05 * float(x.pow(2).mean().sqrt()) + 1e-6))


def _restore(job: Job, ckpt_path: Path, state: dict) -> dict:
    """Load the checkpoint's model, optimiser, schedule, scaler and RNG states; return its loop state."""
    ckpt = load_tensors(ckpt_path, map_location=job.dev)
    job.model.load_state_dict(ckpt["model"])
    job.opt.load_state_dict(ckpt["optimizer"])
    job.sched.load_state_dict(ckpt["scheduler"])
    job.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())  # map_location moved it; RNG states live on the CPU
    if job.dev.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), job.dev)
    return {k: ckpt[k] for k in state}


# --- once per epoch -----------------------------------------------------------------------------------
def _validate(job: Job, epoch: int, train_loss: float, t0: float) -> dict:
    """The epoch's history row: its training loss, validation loss and scores, time and peak memory."""
    dev, valid = job.dev, job.valid
    logits = predict_loader(job.model, valid, job.precision, dev)
    m = classification_metrics(valid.y, logits.argmax(1), job.label_names)
    return {"epoch": epoch, "train_loss": train_loss,
            "val_loss": job.criterion(torch.from_numpy(logits).to(dev), torch.from_numpy(valid.y).to(dev)).item(),
            "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"], "lr_head": job.sched.get_last_lr()[1],
            "seconds": time.perf_counter() - t0, "seconds_per_step": (time.perf_counter() - t0) / len(job.train),
            "peak_memory_mb": _peak_memory_mb(dev)}


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training can change: trainable parameters and every buffer (a copy, on the CPU)."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in keep}


def _checkpoint(job: Job, state: dict, path: Path) -> None:
    """Everything ``--resume`` needs to continue bit for bit after this epoch."""
    dev = job.dev
    _save_atomic({"model": job.model.state_dict(), "optimizer": job.opt.state_dict(),
                  "scheduler": job.sched.state_dict(), "scaler": job.scaler.state_dict(), **state,
                  "rng": {"torch": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}}, path)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    tmp.replace(path)  # a killed save never leaves a torn checkpoint under the real name


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
