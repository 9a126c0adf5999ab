"""Refit: the model a grid ships for a configuration (``best/``, an ensemble's members), either its k fold
models averaged, which are what CV scored, or one head refit on all rows."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import MmfuseError
from ..heads import BaggedHead, FeatureSet, Head, HeadConfig
from ..heads.registry import head_info
from ..heads.run import write_history
from ..multilabel import tune_thresholds
from ..outputs import folder_kind, new_folder, write_text_atomic
from ..splits import splits, stratified_split
from ._fit import VAL_FRACTION, _features, fold_fits
from ._spec import REFITS, row_config  # noqa: F401 - REFITS: read here by callers

# what best/ holds: the fold models averaged (the default) or one full refit (bench/experiments/refit.py)


def refit(cache, row: dict, out: Path, fold: np.ndarray, mode: str = "folds", oof: np.ndarray | None = None) -> Path:
    """Save the model to ship for a grid row into ``out``. ``cache``: the grid's cache path, or its Backbones
    (a grid over several caches: the row's backbone pair is read, and its heads record both provenances).

    ``folds`` (default): the row's k fold heads, refit exactly as CV fit them (same rows, seed and
    early stopping), averaged (a BaggedHead): the models whose out-of-fold predictions were scored.
    ``full``: one head on all rows with the fold fits' schedule in optimiser steps (the cosine over
    cfg.epochs of a fold fit's steps per epoch, stopped at its mean best epoch); multi-label, its
    thresholds tuned on the row's out-of-fold probabilities ``oof``.
    """
    import torch

    cfg = row_config(row)
    data = _features(cache, cfg.text_feature, None, cfg.image_feature, row.get("backbone") or "")
    out = Path(out)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CV fits ran: the same numbers, so the shipped folds are the scored ones
    try:  # written beside and renamed into place: a failed refit leaves the previous one whole
        with new_folder(out, GRID_BEST, overwrite=True, check=_only_a_grids_best) as tmp:
            _refit(data, cfg, row, tmp, fold, mode, oof)
            pick = {"config_id": row.get("config_id"), "refit": mode, "fusion": cfg.fusion,
                    **({"backbone": row["backbone"]} if row.get("backbone") else {})}
            write_text_atomic(tmp / "grid-pick.json", json.dumps(pick, indent=2) + "\n")
        return out
    finally:
        torch.set_num_threads(before)


GRID_BEST = "grid best/"
GRID_BEST_KINDS = ("grid best/", "grid best/ (fold models)")  # outputs.FOLDER_KINDS of what refit writes


def _only_a_grids_best(out: Path, kind: str, overwrite: bool, option: str) -> None:
    """best/ is replaced only when a grid wrote it (a run saved there by hand is kept)."""
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        raise MmfuseError(f"{out} is a file or a link, not a folder a grid wrote: it is not replaced; move it away "
                          "and re-run the same command (the grid's results are kept)")
    if out.is_dir() and any(out.iterdir()) and folder_kind(out) not in GRID_BEST_KINDS:
        raise MmfuseError(f"{out} holds files a grid did not write (a run saved there?): it is not replaced; move it "
                          "away and re-run the same command (the grid's results are kept)")


def _refit(data: FeatureSet, cfg: HeadConfig, row: dict, out: Path, fold: np.ndarray, mode: str,
           oof: np.ndarray | None) -> Path:
    if mode == "folds":
        bagged = BaggedHead([head for _, head, _, _ in fold_fits(data, cfg, fold)])
        bagged.save(out)
        metrics = {"fusion": cfg.fusion, "refit": "folds", "members": len(bagged.members),
                   "best_epochs": [h.best_epoch_ for h in bagged.members],
                   "modality_weights": bagged.modality_weights()}
    else:
        n_fit = np.mean([len(stratified_split(data.y[train], VAL_FRACTION, cfg.seed)[0]) for train, _ in splits(fold)])
        per_epoch = int(np.ceil(n_fit / cfg.batch_size))
        schedule = (cfg.epochs * per_epoch, max(1, int(round(row["best_epoch_mean"] * per_epoch))))
        head = Head(cfg).fit(data, schedule=None if head_info(cfg.fusion).training == "closed-form" else schedule)
        if head.multilabel_:
            if oof is None:
                raise MmfuseError("a multi-label full refit needs the row's out-of-fold probabilities")
            head.thresholds_ = tune_thresholds(data.y, oof, cfg.thresholds, cfg.min_labels)
        head.save(out)
        if head.history_:
            write_history(head.history_, out / "history.csv")
        metrics = {"fusion": cfg.fusion, "refit": "full", "train_rows": len(data), "schedule_steps": schedule[0],
                   "steps": schedule[1], "modality_weights": head.modality_weights()}
    metrics.update(text_feature=data.text_feature, image_feature=data.image_feature,
                   **({"backbone": row["backbone"]} if row.get("backbone") else {}))
    metrics["cv"] = {k: row[k] for k in row if k.endswith(("_mean", "_std"))}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out
