"""End-to-end fine-tuning: the text and image backbones with a fusion head on top, on raw data.

Nothing here is a copy: the backbones come from the extraction loaders (hub ids, local folders,
torchvision names, the efficientnet-lite aliases, weight files), the text vector is pooled as in
extraction (``pool_text``), the fusion module is the registered head class that trains on cached
features, and the loss, class weights, schedule, metrics and run-folder files are the heads' own.
The tuned backbones are saved in the forms ``extract`` reads (``RUN/text/``: a Hugging Face
folder with its tokenizer; ``RUN/image.pt``: the image model's state dict), so a cache of tuned
features, and every head and grid on it, is one ``extract`` away.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import resource
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .data import DataSet, open_image, read_course
from .errors import DataError, MmfuseError
from .extract.common import native_bf16, resolve_device
from .extract.image import ImageExtractorConfig, ImageFiles, feature_extractor, load_image_model
from .extract.text import TextExtractorConfig, load_text_encoder, pool_text, resolve_text_feature, tokenize
from .heads import HeadConfig, create_head
from .heads.registry import get_head_class
from .heads.estimator import class_weights, loss_fn, warmup_cosine
from .heads.run import stratified_split, write_history
from .metrics import classification_metrics, plot_confusion, plot_history
from .outputs import TargetLock, check_folder_target, swap_into_place
from .safe import load_state, load_tensors, read_json, reading

ALL = -1  # --unfreeze-... all
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class FineTuneConfig:
    text_model: str = "bert-base-uncased"  # as extract --text-model: hub id, local folder, or minilm
    image_model: str = "resnet50"  # as extract --image-model: torchvision name or efficientnet-lite0/1/2
    image_weights: str = "DEFAULT"  # as extract --image-weights: DEFAULT, a weights name, none, or a file
    max_length: int = 128  # tokens per text, as in extraction
    unfreeze_text_layers: int = 2  # the last N encoder layers train (-1: all, embeddings included)
    unfreeze_image_blocks: int = 1  # the last M image stages train (ResNet layer4 for 1; -1: all)
    epochs: int = 5  # maximum epochs (early stopping on validation macro-F1)
    lr_backbone: float = 2e-5  # AdamW peak lr of the unfrozen backbone layers (BERT fine-tuning range)
    lr_head: float = 1e-3  # AdamW peak lr of the fusion head (it starts from random weights)
    weight_decay: float = 1e-2  # AdamW weight decay
    batch_size: int = 16  # rows per forward pass
    grad_accum: int = 2  # forward passes per optimiser step: effective batch 32 where 16 fits
    warmup: float = 0.1  # fraction of optimiser steps with linear warm-up, then cosine decay to 0
    clip: float = 1.0  # gradient norm clipping
    patience: int = 2  # epochs without validation macro-F1 gain before stopping
    augment: bool = False  # train-only random resized crop, flip, colour jitter
    precision: str = "auto"  # auto: bf16 on CUDA with bf16 and on CPUs with AVX512-BF16/AMX, fp16 on
    #                          older CUDA (with a GradScaler), else fp32
    val_split: float = 0.2  # stratified validation fraction when no --val is given
    num_workers: int = 0  # image decode processes (0 on 2 cores: workers only take the model's cores)
    seed: int = 0  # seeds the head's init, the split, batch order, dropout and augmentation

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise MmfuseError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.unfreeze_text_layers == 0 and self.unfreeze_image_blocks == 0:
            raise MmfuseError("--unfreeze-text-layers 0 and --unfreeze-image-blocks 0 train only the head: that is "
                              "mmfuse extract + mmfuse train-head, which is far faster")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise MmfuseError("--batch-size, --grad-accum and --epochs must be at least 1")


def choose_precision(requested: str, device: torch.device) -> str:
    """The autocast precision: bf16 where the hardware runs it natively, else fp16 on CUDA, else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_bf16() else "fp32"


# --- freezing -----------------------------------------------------------------------------------------
def text_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (BERT: encoder.layer)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise MmfuseError(f"cannot find the {n} transformer layers of {type(model).__name__} to unfreeze")


def image_stages(model: nn.Module, features: nn.Module) -> list[tuple[str, ...]]:
    """The image model's stages in order, each as module names: ResNet stem, layer1..layer4;
    EfficientNet-Lite stem, each of ``_blocks`` (the head convs with the last); torchvision
    ``features.N``; else the top-level children. Only modules the feature extractor uses count."""
    used = {k.split(".")[0] for k in features.state_dict()}
    kids = [n for n, m in model.named_children() if n in used and any(True for _ in m.parameters())]
    if all(f"layer{i}" in kids for i in range(1, 5)):
        return [tuple(k for k in kids if not k.startswith("layer"))] + [(f"layer{i}",) for i in range(1, 5)]
    for seq in ("_blocks", "features"):
        if seq in kids:
            i = kids.index(seq)
            blocks = [(f"{seq}.{name}",) for name, m in getattr(model, seq).named_children()
                      if any(True for _ in m.parameters())]
            stages = ([tuple(kids[:i])] if i else []) + blocks
            stages[-1] = stages[-1] + tuple(kids[i + 1:])
            return stages
    return [(k,) for k in kids]


def freeze(text_model: nn.Module, image_model: nn.Module, image_features: nn.Module, cfg: FineTuneConfig
           ) -> tuple[list[nn.Module], list[nn.Module]]:
    """Set requires_grad so that only the last N text layers and M image stages (and the head) train.
    Returns (frozen modules, which stay in eval mode: fixed BatchNorm statistics, no dropout;
    the trainable image stages' modules)."""
    frozen: list[nn.Module] = []
    layers = text_layers(text_model)
    n = len(layers) if cfg.unfreeze_text_layers == ALL else min(cfg.unfreeze_text_layers, len(layers))
    text_model.requires_grad_(cfg.unfreeze_text_layers == ALL)
    if cfg.unfreeze_text_layers != ALL:
        for layer in list(layers)[len(layers) - n:]:
            layer.requires_grad_(True)
        frozen += [m for name, m in text_model.named_children() if not any(p.requires_grad for p in m.parameters())]
        frozen += list(layers)[:len(layers) - n]
    stages = image_stages(image_model, image_features)
    m = len(stages) if cfg.unfreeze_image_blocks == ALL else min(cfg.unfreeze_image_blocks, len(stages))
    image_features.requires_grad_(cfg.unfreeze_image_blocks == ALL)  # all: parameters outside stages too
    if cfg.unfreeze_image_blocks == ALL:
        return frozen, [image_features]
    trainable = []
    for i, stage in enumerate(stages):
        modules = [image_features.get_submodule(name) for name in stage]
        for module in modules:
            module.requires_grad_(i >= len(stages) - m)
        (frozen if i < len(stages) - m else trainable).extend(modules)
    return frozen, trainable


# --- the model ------------------------------------------------------------------------------------------
class FineTuneModel(nn.Module):
    """Text encoder + image feature extractor + a registered fusion head. Features are standardised
    with fixed statistics of the first training rows, as the cached-feature heads standardise theirs."""

    def __init__(self, text: nn.Module, image: nn.Module, head: nn.Module, text_feature: str,
                 text_dim: int, image_dim: int):
        super().__init__()
        self.text, self.image, self.head, self.text_feature = text, image, head, text_feature
        for name, dim in (("text", text_dim), ("image", image_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (text (B, Dt), image (B, Di)) vectors, as extraction computes them."""
        text_in = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.text(**text_in).last_hidden_state  # (B, T, Dt)
        cls, mean = pool_text(hidden, batch["attention_mask"])
        return (cls if self.text_feature == "cls" else mean), self.image(batch["pixels"])["pooled"].flatten(1)

    def forward(self, batch: dict):
        t, i = self.features(batch)
        return self.head((t.float() - self.text_mean) / self.text_std, (i.float() - self.image_mean) / self.image_std)


class AugmentedImages(ImageFiles):
    """Training images with random resized crop, horizontal flip and colour jitter."""

    def __init__(self, paths, resize, crop, draft):
        super().__init__(paths, resize, crop, draft)
        self.augment = v2.Compose([v2.RandomResizedCrop(crop, scale=(0.5, 1.0), antialias=True),
                                   v2.RandomHorizontalFlip(), v2.ColorJitter(0.3, 0.3, 0.3)])

    def __getitem__(self, i: int):
        try:
            img = open_image(self.paths[i], self.resize if self.draft else None)
            return i, v2.functional.pil_to_tensor(self.augment(img)), ""
        except Exception as e:  # noqa: BLE001 - reported by the caller with the guid
            return i, torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), f"{type(e).__name__}: {e}"


class Batches:
    """Length-bucketed batches as in extraction: shuffled (a generator seeded per epoch) and sorted by
    token count within pools of 32 batches, so padding stays small; ``shuffle=False``: fully sorted."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0):
        self.lengths, self.batch_size, self.shuffle, self.seed, self.epoch = lengths, batch_size, shuffle, seed, 0

    def __iter__(self):
        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i])
            yield from (order[s:s + self.batch_size] for s in range(0, n, self.batch_size))
            return
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm, pool, batches = torch.randperm(n, generator=g).tolist(), 32 * self.batch_size, []
        for s in range(0, n, pool):
            chunk = sorted(perm[s:s + pool], key=lambda i: self.lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        yield from (batches[k] for k in torch.randperm(len(batches), generator=g).tolist())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


class PairLoader:
    """Batches of tokenised texts + preprocessed images (+ labels) of one split's records."""

    def __init__(self, ds: DataSet, rows: np.ndarray, tokenizer, prep: dict, cfg: FineTuneConfig, *,
                 train: bool, device: torch.device):
        self.records = [ds.records[i] for i in rows]
        self.y = ds.label_array()[rows]
        self.enc = tokenize(tokenizer, [r.text for r in self.records], cfg.max_length)  # long texts cut first
        self.keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in self.enc]
        self.tokenizer, self.device = tokenizer, device
        images = (AugmentedImages if train and cfg.augment else ImageFiles)(
            [r.image_path for r in self.records], prep["resize"], prep["crop"], True)
        self.sampler = Batches([len(ids) for ids in self.enc["input_ids"]], cfg.batch_size, train, cfg.seed)
        self.loader = DataLoader(images, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                 pin_memory=device.type == "cuda")
        self.mean = torch.tensor(prep["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(prep["std"], device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for pos, x, errors in self.loader:
            bad = [(int(p), e) for p, e in zip(pos, errors) if e]
            if bad:
                r = self.records[bad[0][0]]
                raise DataError(f"cannot decode image of guid {r.guid}: {r.image_path}: {bad[0][1]} ({r.source})")
            batch = self.tokenizer.pad({k: [self.enc[k][i] for i in pos] for k in self.keys}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            batch["pixels"] = x.to(self.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
            yield pos.numpy(), batch, torch.from_numpy(self.y[pos.numpy()]).to(self.device)


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def predict_loader(model: FineTuneModel, loader: PairLoader, precision: str, device: torch.device) -> np.ndarray:
    """Logits (N, C) in the loader's record order."""
    model.eval()
    out = np.zeros((len(loader.records), model.head_classes), np.float32)
    with torch.inference_mode(), _autocast(device, precision):
        for pos, batch, _ in loader:
            out[pos] = model(batch).logits.float().cpu().numpy()
    return out


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- building and saving --------------------------------------------------------------------------------
def build_model(cfg: FineTuneConfig, head_cfg: HeadConfig, n_classes: int, *, text_source: str | None = None,
                image_weights: str | None = None):
    """(model, tokenizer, prep, text provenance, image provenance, image model) with the head's init
    seeded; the backbones from the extraction loaders (or a run's saved ones)."""
    if getattr(get_head_class(head_cfg.fusion), "kind", "module") != "module":
        raise MmfuseError(f"--fusion {head_cfg.fusion} is not a torch module and cannot be fine-tuned end to end: "
                          "use one of the torch heads (concat, weighted, attention, gated, aligned, late, text, image)")
    text_cfg = TextExtractorConfig(text_source or cfg.text_model, cfg.max_length)
    tokenizer, text_model, text_prov = load_text_encoder(text_cfg)
    image_cfg = ImageExtractorConfig(cfg.image_model, image_weights or cfg.image_weights, seed=cfg.seed)
    image_model, prep, weights = load_image_model(image_cfg)
    features, node = feature_extractor(image_model)
    with torch.no_grad():
        dim = features.eval()(torch.zeros(1, 3, prep["crop"], prep["crop"]))["pooled"].flatten(1).shape[1]
    torch.manual_seed(cfg.seed)
    head = create_head(head_cfg.fusion, text_prov["hidden_size"], dim, n_classes, head_cfg)
    text_feature = resolve_text_feature(head_cfg.text_feature, text_prov)  # auto: the encoder's own pooling
    model = FineTuneModel(text_model, features, head, text_feature, text_prov["hidden_size"], dim)
    model.head_classes = n_classes
    image_prov = {"model": cfg.image_model, "weights": weights, "node": node, "dim": int(dim), "preprocessing": prep}
    return model, tokenizer, prep, text_prov, image_prov, image_model


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training can change: trainable parameters and every buffer (a copy, on the CPU)."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in keep}


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    tmp.replace(path)  # a killed save never leaves a torn checkpoint under the real name


def finetune(data_dir: str | Path, out: str | Path, cfg: FineTuneConfig | None = None,
             head_cfg: HeadConfig | None = None, *, split: str = "train", val: tuple[str | Path, str] | None = None,
             device: str = "auto", resume: bool = False, overwrite: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> tuple[FineTuneModel, dict]:
    """Fine-tune backbones + fusion head on a course-format split; write the run folder ``out``.

    Validation: ``val=(data_dir, split)``, else a stratified ``cfg.val_split`` of the training split.
    A checkpoint is written after every epoch; ``resume=True`` continues from it bit for bit. The run
    is written in ``{out}.partial`` and renamed to ``out`` when it is complete; an existing ``out`` is
    replaced only with ``overwrite`` (and kept until then). Returns (model with the best epoch restored,
    metrics).
    """
    cfg, head_cfg = cfg or FineTuneConfig(), head_cfg or HeadConfig()
    if head_cfg.ema:
        raise MmfuseError("ema (a moving average of the head's weights) applies to heads trained on cached "
                          "features; fine-tuning keeps the best epoch's weights: set ema=0")
    final = Path(out)
    with TargetLock(final, "fine-tune").acquire("wait for it to finish, or choose another --out"):
        work = _work_folder(final, resume, overwrite)
        model, metrics = _finetune(data_dir, work, cfg, head_cfg, split, val, device, resume, progress, log)
        if work != final:
            swap_into_place(work, final)
    return model, metrics


def _work_folder(out: Path, resume: bool, overwrite: bool) -> Path:
    """Where the run is written: ``{out}.partial`` (renamed to ``out`` when complete), or ``out`` itself to
    resume a run an earlier mmfuse version wrote in place."""
    partial = out.with_name(out.name + ".partial")
    if resume:
        if (partial / "checkpoint.pt").is_file():
            return partial
        return out  # resumed in place (checked below); a finished run resumes to the same files
    if (partial / "checkpoint.pt").is_file() and not overwrite:
        raise MmfuseError(f"{partial} holds an unfinished fine-tune run: pass --resume to continue it, or "
                          "--overwrite to start a new one in its place")
    if (out / "checkpoint.pt").is_file() and not overwrite:
        raise MmfuseError(f"{out} holds a fine-tune run already: pass --resume to continue it, --overwrite to "
                          "replace it, or choose another --out")
    check_folder_target(out, "fine-tune run", overwrite)
    if os.path.lexists(partial):
        if not (partial.is_dir() and (not any(partial.iterdir()) or (partial / "finetune.json").is_file())):
            raise MmfuseError(f"{partial} is in the way and is not an unfinished fine-tune run: move it away")
        shutil.rmtree(partial)
    return partial


def _finetune(data_dir, out: Path, cfg: FineTuneConfig, head_cfg: HeadConfig, split: str, val, device: str,
              resume: bool, progress: bool, log) -> tuple[FineTuneModel, dict]:
    dev = resolve_device(device)
    precision = choose_precision(cfg.precision, dev)
    run_spec = {"finetune": asdict(cfg), "head": asdict(head_cfg), "data": str(Path(data_dir).resolve()),
                "split": split, "val": None if val is None else [str(Path(val[0]).resolve()), val[1]]}
    ckpt_path = out / "checkpoint.pt"
    if resume:
        if not ckpt_path.is_file() or not (out / "finetune.json").is_file():
            raise MmfuseError(f"nothing to resume in {out}: it needs checkpoint.pt and finetune.json "
                              "(run without --resume)")
        saved = read_json(out / "finetune.json")
        if {k: saved.get(k) for k in run_spec} != run_spec:
            raise MmfuseError(f"{out} was started with other options: resume with the same command, or choose another --out")
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
    state = {"epoch": 0, "history": [], "best": -1.0, "best_epoch": 0, "best_state": None, "stopped": False}
    if resume:
        ckpt = load_tensors(ckpt_path, map_location=dev)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())  # map_location moved it; RNG states live on the CPU
        if dev.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), dev)
        state = {k: ckpt[k] for k in state}
        log(f"resuming {out} after epoch {state['epoch']} of {cfg.epochs}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        # the preprocessing trained with (a weights name's own transforms) goes with the run: predicting
        # and extracting from RUN/image.pt use it, not a file's generic resize
        (out / "finetune.json").write_text(json.dumps({**run_spec, "image_preprocessing": prep}, indent=2) + "\n")
        _fit_standardiser(model, train, precision, dev)
        torch.manual_seed(cfg.seed)  # dropout and augmentation draw from here on
    log(f"fine-tuning {sum(p.numel() for p in backbone) / 1e6:.2f}M backbone + "
        f"{sum(p.numel() for p in model.head.parameters()) / 1e6:.2f}M head parameters on {dev} ({precision}); "
        f"{len(train.records)} training, {len(valid.records)} validation rows")

    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if state["stopped"]:  # an early stop recorded before an interruption stays a stop
            break
        _train_mode(model, parts, image_prov["node"])
        train.sampler.epoch = epoch
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(train, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress)
        for k, (_, batch, y) in enumerate(bar):
            with _autocast(dev, precision):
                outp = model(batch)
                loss = criterion(outp.logits.float(), y)
                if outp.aux is not None:
                    loss = loss + head_cfg.align_weight * outp.aux.float()
            scaler.scale(loss / cfg.grad_accum).backward()
            if (k + 1) % cfg.grad_accum == 0 or k + 1 == len(train):
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        logits = predict_loader(model, valid, precision, dev)
        m = classification_metrics(valid.y, logits.argmax(1), ds.label_names)
        row = {"epoch": epoch, "train_loss": loss_sum / seen,
               "val_loss": criterion(torch.from_numpy(logits).to(dev), torch.from_numpy(valid.y).to(dev)).item(),
               "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"], "lr_head": sched.get_last_lr()[1],
               "seconds": time.perf_counter() - t0, "seconds_per_step": (time.perf_counter() - t0) / len(train),
               "peak_memory_mb": _peak_memory_mb(dev)}
        state["history"].append(row)
        log(f"epoch {epoch}: train loss {row['train_loss']:.4f}, validation macro-F1 {row['val_macro_f1']:.3f}, "
            f"{row['seconds']:.0f} s, peak memory {row['peak_memory_mb']:.0f} MiB")
        if row["val_macro_f1"] > state["best"]:
            state.update(best=row["val_macro_f1"], best_epoch=epoch, best_state=_trainable_state(model))
        state["epoch"] = epoch
        stop = state["stopped"] = epoch - state["best_epoch"] >= cfg.patience
        _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "scaler": scaler.state_dict(), **state,
                      "rng": {"torch": torch.get_rng_state(),
                              "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}}, ckpt_path)
        if stop:
            log(f"no validation gain for {cfg.patience} epoch(s): stopping")
            break
    model.load_state_dict(state["best_state"], strict=False)  # the best epoch's trainable weights
    metrics = _write_run(out, model, image_model, tokenizer, valid, ds.label_names, state, head_cfg,
                         {"text": text_prov, "image": image_prov}, precision, dev, len(train.records))
    return model, metrics


def _train_mode(model: FineTuneModel, parts: tuple[list[nn.Module], list[nn.Module]], pooled_node: str) -> None:
    """Training mode for what trains, eval mode (fixed BatchNorm statistics, no dropout) for the frozen
    modules. The traced image model runs its eval graph, then its trainable stages are put back in
    training mode: its training graph bakes functional dropout and drop-connect (EfficientNet-Lite) into
    every block, frozen ones included, while BatchNorm and Dropout modules follow their own flags. The
    pooled feature's dropout stays off, so the head sees what extraction computes."""
    frozen, image_trainable = parts
    model.train()
    model.image.train(False)  # a DualGraphModule switches graphs in train(), not by its flag
    for module in image_trainable:
        module.train()
    for module in frozen:
        module.eval()
    if pooled_node in dict(model.image.named_modules()):
        model.image.get_submodule(pooled_node).eval()


@torch.no_grad()
def _fit_standardiser(model: FineTuneModel, train: PairLoader, precision: str, dev: torch.device,
                      rows: int = 256) -> None:
    """Mean and std of the untuned features over the first ``rows`` training rows (fixed from then on)."""
    model.eval()
    ts, ims, seen = [], [], 0
    with _autocast(dev, precision):
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


def _write_run(out: Path, model: FineTuneModel, image_model: nn.Module, tokenizer, valid: PairLoader, label_names,
               state: dict, head_cfg: HeadConfig, provenance: dict, precision: str, dev: torch.device,
               train_rows: int) -> dict:
    logits = predict_loader(model, valid, precision, dev)
    metrics = {"fusion": head_cfg.fusion, "text_feature": model.text_feature, "best_epoch": state["best_epoch"],
               "epochs_run": len(state["history"]),
               "precision": precision, "device": str(dev), "train_rows": train_rows,
               "validation": classification_metrics(valid.y, logits.argmax(1), label_names)}
    try:  # our own output says what was saved; no per-shard bars
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    except ImportError:
        pass
    model.text.save_pretrained(out / "text")
    tokenizer.save_pretrained(out / "text")
    _save_atomic(image_model.state_dict(), out / "image.pt")
    _save_atomic({"head": model.head.state_dict(), **{k: v for k, v in model.state_dict().items()
                                                       if k.endswith(("_mean", "_std")) and "." not in k}},
                 out / "head.pt")
    head_cfg.to_json(out / "config.json")
    (out / "head.json").write_text(json.dumps({"label_names": list(label_names), "provenance": provenance,
                                               "best_epoch": state["best_epoch"]}, indent=2, default=str) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_history(state["history"], out / "history.csv")
    plot_history(state["history"], out / "curves.png", f"fine-tune, {head_cfg.fusion} head (dotted: best epoch)",
                 state["best_epoch"])
    plot_confusion(metrics["validation"], out / "confusion.png",
                   f"fine-tune: validation macro-F1 {metrics['validation']['macro_f1']:.3f}")
    return metrics


class FineTunedRun:
    """A saved fine-tune run, predicting from raw data (``predict_data``)."""

    def __init__(self, folder: str | Path, device: str = "auto"):
        folder = Path(folder)
        missing = [n for n in ("finetune.json", "config.json", "head.json", "head.pt", "image.pt", "text")
                   if not (folder / n).exists()]
        if missing:
            raise MmfuseError(f"{folder} is not a finished fine-tune run ({', '.join(missing)} missing): "
                              "resume it with mmfuse finetune ... --resume")
        spec = read_json(folder / "finetune.json", ("finetune", "data", "split"))
        with reading(folder / "finetune.json"):
            self.cfg = FineTuneConfig(**{f.name: spec["finetune"][f.name] for f in fields(FineTuneConfig)})
        with reading(folder / "config.json"):
            self.head_cfg = HeadConfig.from_json(folder / "config.json")
        self.label_names_ = tuple(read_json(folder / "head.json", ("label_names",))["label_names"])
        self.dev = resolve_device(device)
        self.trained_on = (spec["data"], spec["split"])
        self.precision = choose_precision(self.cfg.precision, self.dev)
        with torch.random.fork_rng(devices=[]):  # building seeds the head's init; leave the caller's RNG alone
            self.model, self.tokenizer, self.prep, *_ = build_model(
                self.cfg, self.head_cfg, len(self.label_names_), text_source=str(folder / "text"),
                image_weights=str(folder / "image.pt"))
        saved = load_tensors(folder / "head.pt")
        with reading(folder / "head.pt"):
            load_state(self.model.head, saved.pop("head"), folder / "head.pt")
            for k, v in saved.items():
                getattr(self.model, k).copy_(v)
        self.model.to(self.dev).eval()

    def predict_data(self, data_dir: str | Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(guids, probabilities (N, C), labels (N,), -1 where unlabelled) of a split, in file order."""
        ds = read_course(data_dir, split)
        ds.check("raise")
        loader = PairLoader(ds, np.arange(len(ds.records)), self.tokenizer, self.prep, self.cfg, train=False,
                            device=self.dev)
        logits = predict_loader(self.model, loader, self.precision, self.dev)
        return [r.guid for r in ds.records], torch.from_numpy(logits).softmax(1).numpy(), loader.y
