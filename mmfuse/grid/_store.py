"""A grid folder on disk, and reading it back.

``grid.json`` (the cache, its folds and seed, the precision and metric; successive halving's plan),
``folds.npy`` (the fold of each row), ``configs.json`` (every configuration by id), ``splits/{id}/{split}.npz``
(one finished fit each: scores, seconds, best epoch, held-out probabilities), ``results.csv`` (one row per
configuration with every split done) and ``oof/{id}.npy`` (its out-of-fold probabilities, written before
its row, so a listed row is always complete). Every file is written through a temporary file and a rename,
or appended a whole line at a time; a torn last line is dropped on the next run (:func:`repair_results`).
"""
from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

import numpy as np

from ..cache import FeatureCache
from ..errors import MmfuseError
from ..heads import HeadConfig
from ..safe import load_npy, read_json
from ..splits import fold_fingerprint, make_folds, splits
from ._spec import CASTS, LATER_FIELDS, GridCell, config_id, task_metrics

GRID_FILES = ("configs.json", "results.csv", "folds.npy", "splits", "oof")  # a grid folder's, beside grid.json


def _write_json(path: Path, data) -> None:
    """Write JSON through a temporary file and a rename: a kill or a full disk leaves the old file whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


class SplitState:
    """What is known of one configuration, split by split: ``splits/{config_id}/{split}.npz`` in the grid folder,
    one small file per finished fit (its scores, seconds, best epoch and held-out probabilities; arrays only,
    loaded without pickle, written atomically), so a grid resumes at the split and successive halving ranks
    configurations on their first n splits. A file that cannot be read, or was written for other folds, counts
    as not done (that split runs again)."""

    def __init__(self, out: Path, cid: str, fold: np.ndarray, names: tuple[str, ...], fingerprint: str | None = None):
        self.folder, self.names, self.fold = Path(out) / "splits" / cid, names, fold
        self.fingerprint = fingerprint or fold_fingerprint(fold)
        n = len(splits(fold))
        self.done = np.zeros(n, bool)
        self.scores = np.full((n, len(names)), np.nan)  # (splits, metrics)
        self.seconds, self.epochs = np.full(n, np.nan), np.full(n, np.nan)
        for path in self.folder.glob("*.npz") if self.folder.is_dir() else ():
            try:
                split = int(path.stem)
                with np.load(path, allow_pickle=False) as z:  # proba is read only when the oof is built
                    if str(z["fold"]) != self.fingerprint or z["scores"].shape != (len(names),) or not 0 <= split < n:
                        continue
                    self.scores[split], self.seconds[split], self.epochs[split] = z["scores"], z["seconds"], z["epoch"]
                self.done[split] = True
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # torn, truncated, foreign: rerun
                continue

    def add(self, result: dict) -> None:
        s = result["split"]
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{s}.npz.tmp"
        scores = np.array([result["scores"][m] for m in self.names], np.float64)
        with open(tmp, "wb") as f:
            np.savez(f, scores=scores, seconds=np.float64(result["seconds"]), epoch=np.float64(result["best_epoch"]),
                     proba=result["proba"], fold=np.str_(self.fingerprint))
        tmp.replace(self.folder / f"{s}.npz")
        self.done[s], self.scores[s] = True, scores
        self.seconds[s], self.epochs[s] = result["seconds"], result["best_epoch"]

    def mean(self, n: int) -> float:
        """Mean primary score over the first ``n`` splits (all of them must be done)."""
        return float(self.scores[:n, 0].mean())

    def row(self, config: HeadConfig) -> dict:
        """A results.csv row over the splits done: mean and std (ddof 0) of each metric."""
        done = self.scores[self.done]
        row = {"config_id": config_id(config), **asdict(config)}
        for j, name in enumerate(self.names):
            row[f"{name}_mean"], row[f"{name}_std"] = float(done[:, j].mean()), float(done[:, j].std())
        row.update(seconds_per_fit=float(np.mean(self.seconds[self.done])),
                   best_epoch_mean=float(np.mean(self.epochs[self.done])))
        return row

    def oof(self) -> np.ndarray:
        """Out-of-fold probabilities (N, C) once every split is done: each row predicted only by heads fit
        without it (repeated k-fold: the mean of its repeats' predictions, repeat by repeat)."""
        folds2d = np.atleast_2d(self.fold)
        tests = [test for _, test in splits(self.fold)]
        k = len(tests) // len(folds2d)
        proba = None
        for s, test in enumerate(tests):
            with np.load(self.folder / f"{s}.npz", allow_pickle=False) as z:
                p = z["proba"]
            if proba is None:
                proba = np.zeros((len(folds2d), folds2d.shape[1], p.shape[1]), np.float32)  # (R, N, C)
            proba[s // k, test] = p
        return proba.mean(0)


def _state(out: Path, fc: FeatureCache, cfg: HeadConfig, fold: np.ndarray, fingerprint: str | None = None) -> SplitState:
    return SplitState(out, config_id(cfg), fold, task_metrics(fc.multilabel), fingerprint)


def result_columns(multilabel: bool, backbone: bool = False) -> list[str]:
    """results.csv's columns; ``backbone``: a grid over several caches (the backbone pair of each row)."""
    return (["config_id"] + (["backbone"] if backbone else []) + [f.name for f in fields(HeadConfig)]
            + [f"{m}_{s}" for m in task_metrics(multilabel) for s in ("mean", "std")]
            + ["seconds_per_fit", "best_epoch_mean"])


def results_header(out: Path) -> list[str] | None:
    """The columns of a grid folder's results.csv, None before its first row."""
    path = Path(out) / "results.csv"
    if not path.is_file() or not path.stat().st_size:
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def writable_columns(out: Path, configs: list[HeadConfig], multilabel: bool) -> list[str]:
    """The columns new rows are written with: results.csv's own (an older grid's lacks the fields added since,
    LATER_FIELDS: its configurations, holding their defaults there, are written without them), else today's."""
    header = results_header(out) or result_columns(multilabel, any(isinstance(c, GridCell) for c in configs))
    for c in configs:
        lost = [f for f, default in LATER_FIELDS.items() if f not in header and getattr(c, f, default) != default]
        if lost:
            option, default = lost[0].replace("_", "-"), LATER_FIELDS[lost[0]]
            raise MmfuseError(f"{out}/results.csv was written by an older mmfuse, without the {lost[0]} column: a "
                              f"grid with --{option} other than {default} needs a new --out")
    return header


def read_results(out: Path) -> list[dict]:
    """Finished rows of a grid folder (those whose out-of-fold file exists), typed."""
    path = Path(out) / "results.csv"
    if not path.is_file():
        return []
    types = {f.name: f.type for f in fields(GridCell)}  # HeadConfig's fields, and a grid cell's backbone pair
    rows = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            if not (Path(out) / "oof" / f"{row.get('config_id')}.npy").is_file():
                continue
            typed = {}
            for k, v in row.items():
                t = str(types.get(k, "float" if k != "config_id" else "str"))
                try:
                    typed[k] = CASTS[t](v)
                except (TypeError, ValueError, KeyError):
                    raise MmfuseError(f"{path} line {line}: {k} is {v!r}, not a {t}: the file was edited or "
                                      "damaged; delete that line and re-run the same grid command (it computes "
                                      "that configuration again from its finished splits)") from None
            rows.append(typed)
    return rows


def repair_results(out: Path, log: Callable[[str], None] = print) -> None:
    """Drop a torn last line of ``results.csv`` (a run killed mid-write, or a crash before the disk had
    it): the file is cut after its last newline, so the next append starts a line of its own and that
    configuration is listed again from its finished splits (``splits/``), or computed again without them. Rows listed twice (two runs that raced) keep their first copy."""
    path = out / "results.csv"
    if not path.is_file() or not path.stat().st_size:
        return
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    keep, seen = [], set()
    for i, line in enumerate(lines):
        if not line.endswith("\n"):
            log(f"{path}: dropped a torn last line (its configuration is listed again from its finished splits, "
                f"or runs again): {line[:60]!r}")
            continue
        key = line.split(",", 1)[0]
        if i and key in seen:
            log(f"{path}: dropped a second row of configuration {key}")
            continue
        seen.add(key)
        keep.append(line)
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        tmp.replace(path)


def _check_folder(out: Path, cache: FeatureCache, folds: int, seed: int, precision: list[str],
                  repeats: int = 1, backbones=None) -> np.ndarray:
    """Create or reopen a grid folder; refuse one made from other features (another extraction of the
    same path included) or other folds. ``backbones``: a grid over several caches (grid.Backbones; ``cache``
    is the first), whose caches must be the same, in the same order (the pairs of every run are kept)."""
    meta = {"cache": str(cache.path), "identity": cache.identity, "feature_identity": cache.feature_identity,
            "rows": len(cache), "folds": folds, "seed": seed, "repeats": repeats}
    if backbones is not None:
        meta["backbones"] = backbones.to_json()
    fold = make_folds(cache.labels, folds, seed, repeats)
    results = out / "results.csv"
    header = results_header(out)
    if header is not None:
        current = result_columns(cache.multilabel, backbones is not None)
        if header != [c for c in current if c in header or c not in LATER_FIELDS]:  # today's, less fields added later
            other = ("backbone" in header) != (backbones is not None)
            by = f"a grid over {'several caches' if 'backbone' in header else 'one cache'}" if other else \
                "another version of mmfuse"
            raise MmfuseError(f"{results} was written by {by} (other columns): choose another --out")
    if (out / "grid.json").is_file():
        old = read_json(out / "grid.json")
        same = all(old.get(k, 1 if k == "repeats" else None) == meta[k]
                   for k in ("identity", "rows", "folds", "seed", "repeats"))
        caches = [(m.get("backbones") or {}).get("identities") for m in (old, meta)]
        same = same and caches[0] == caches[1]  # a grid over several caches: the same ones, in the same order
        if not same or not np.array_equal(load_npy(out / "folds.npy"), fold):
            raise MmfuseError(f"{out} holds a grid of another cache or other folds ({old.get('cache')}, "
                              f"{old.get('folds')} folds x {old.get('repeats', 1)} repeats, seed {old.get('seed')}): "
                              "choose another --out")
    else:
        if out.is_dir() and any(p.name != "grid.lock" for p in out.iterdir()) and not any(
                (out / name).exists() for name in GRID_FILES):
            raise MmfuseError(f"{out} holds files that are not a grid's (no grid.json): a grid writes into its "
                              "folder, so choose another --out (an empty or new folder)")
        out.mkdir(parents=True, exist_ok=True)
        (out / "oof").mkdir(exist_ok=True)
        np.save(out / "folds.npy", fold)
        _write_json(out / "grid.json", {**meta, "label_names": list(cache.label_names), "multilabel": cache.multilabel,
                                        "precision": precision, "metric": task_metrics(cache.multilabel)[0]})
    return fold


def record_configs(out: Path, configs: list[HeadConfig], plan: list[int] | None, backbones=None) -> None:
    """Record this run in its folder: grid.json's successive-halving plan and ids (None for a full search),
    and every configuration by id in configs.json (those of earlier runs kept); a grid over several caches,
    its backbone pairs in grid.json (those of earlier runs kept)."""
    meta = read_json(out / "grid.json")
    meta.pop("halving", None)  # an older version's halving over epochs
    if backbones is not None:
        pairs = backbones.to_json()["pairs"]
        meta["backbones"] = {**meta["backbones"], "pairs": {**meta["backbones"].get("pairs", {}), **pairs}}
    _write_json(out / "grid.json", {**meta, "halving_splits": plan,
                                    "halving_ids": [config_id(c) for c in configs] if plan else None})
    known = read_json(out / "configs.json") if (out / "configs.json").is_file() else {}
    _write_json(out / "configs.json", {**known, **{config_id(c): asdict(c) for c in configs}})


def _halving(out: Path) -> list[int] | None:
    """The folds-per-rung plan of a grid folder run with successive halving, else None."""
    path = Path(out) / "grid.json"
    return read_json(path).get("halving_splits") if path.is_file() else None

