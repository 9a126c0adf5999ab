"""A fine-tune run folder: ``finetune()`` (the work folder, its lock, what ``--resume`` may continue),
the files a finished run holds (``_write_run``), and ``FineTunedRun``, which predicts from them."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import read_course
from ..errors import MmfuseError
from ..extract.common import resolve_device
from ..heads import HeadConfig
from ..heads.run import write_history
from ..metrics import classification_metrics
from ..plots import plot_confusion, plot_history
from ..outputs import TargetLock, check_folder_target, swap_into_place, tidy
from ..precision import choose_precision
from ..safe import load_state, load_tensors, read_json, reading
from .config import FineTuneConfig
from .data import PairLoader
from .loop import _save_atomic, setup, train
from .model import FineTuneModel, build_model, predict_loader


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
        tidy(final)  # a replacement killed midway: the old run back, or its half-removed copy gone
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
    run_spec = {"finetune": cfg.to_dict(), "head": asdict(head_cfg), "data": str(Path(data_dir).resolve()),
                "split": split, "val": None if val is None else [str(Path(val[0]).resolve()), val[1]]}
    if resume:
        if not (out / "checkpoint.pt").is_file() or not (out / "finetune.json").is_file():
            raise MmfuseError(f"nothing to resume in {out}: it needs checkpoint.pt and finetune.json "
                              "(run without --resume)")
        saved = read_json(out / "finetune.json", ("finetune",))
        with reading(out / "finetune.json"):  # nested, or the flat entry of a run an earlier version wrote
            saved_cfg = FineTuneConfig.from_dict(saved["finetune"])
        # what defines the run: the extractor configurations' extraction-only knobs are left out
        if saved_cfg.identity() != cfg.identity() or any(saved.get(k) != v for k, v in run_spec.items()
                                                         if k != "finetune"):
            raise MmfuseError(f"{out} was started with other options: resume with the same command, or choose another --out")
    job = setup(data_dir, cfg, head_cfg, split, val, dev, precision)
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        # the preprocessing trained with (a weights name's own transforms) goes with the run: predicting
        # and extracting from RUN/image.pt use it, not a file's generic resize
        (out / "finetune.json").write_text(json.dumps({**run_spec, "image_preprocessing": job.prep}, indent=2) + "\n")
    state = train(job, out, resume, progress, log)
    metrics = _write_run(out, job.model, job.image_model, job.tokenizer, job.valid, job.label_names, state, head_cfg,
                         job.provenance, precision, dev, len(job.train.records))
    return job.model, metrics


def _write_run(out: Path, model: FineTuneModel, image_model, tokenizer, valid: PairLoader, label_names,
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
            self.cfg = FineTuneConfig.from_dict(spec["finetune"])  # nested, or an earlier run's flat entry
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
