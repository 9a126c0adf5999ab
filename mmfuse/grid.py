"""Hyperparameter grids over heads, scored by stratified k-fold CV, run in parallel.

Every configuration sees the same folds. The unit of work is one fit: a configuration on one split, whose
scores and held-out probabilities are kept in ``splits/{id}/{split}.npz``; a configuration with every
split done is appended to ``results.csv`` with its out-of-fold probabilities in ``oof/{id}.npy`` (for
stacking). Re-running the same grid skips finished splits and configurations, and successive halving
(``search="halving"``) runs only the first splits of most configurations. Local execution uses processes
(one torch thread each, features loaded once per process, the pool kept for the whole run);
``backend="dask"`` sends the same fits to a Dask cluster.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import signal
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .cache import FeatureCache, acquire_writer_lock, release_writer_lock
from .errors import MmfuseError, write_failed
from .heads import BaggedHead, FeatureSet, Head, HeadConfig
from .heads.registry import head_info
from .heads.run import stratified_split, write_history
from .metrics import metrics_for
from .multilabel import iterative_stratification, tune_thresholds
from .outputs import new_folder, write_text_atomic
from .safe import load_npy, read_json

# fusion x lr: 12 configurations, 60 fits. The weight-decay axis (0, 1e-4, 1e-2) the default grid had gave 35 of
# its 36 configurations the same score as another to 4 decimals (AdamW's decoupled decay, lr x wd per step,
# hardly moves the weights), so two thirds of its fits repeated others. In nested CV on mvsa (bench/selection.py)
# this grid's tied set scored 0.612 and its top 8 0.616 on the outer folds, against 0.611 / 0.609 for the 36
# configurations with weight decay and 0.606 / 0.610 with dropout 0, 0.2, 0.5 as the third axis, in 429 s
# against 1365-2188 s
DEFAULT_GRID = {"fusion": ["concat", "weighted", "gated", "late"], "lr": [1e-4, 3e-4, 1e-3]}
METRICS = ("macro_f1", "accuracy", "weighted_f1", "balanced_accuracy")  # single-label; ranked by the first
MULTILABEL_METRICS = ("micro_f1", "macro_f1", "samples_f1", "map")  # multi-label; ranked by micro-F1
VAL_FRACTION = 0.15  # of each training part, for early stopping (the held-out fold is never seen)
# Fields that change nothing for a fusion are reset to the base value, so a grid never fits the same
# model twice (e.g. logreg ignores lr; only aligned reads align_weight).


def _float_or_auto(v: str):
    return "auto" if str(v).strip() == "auto" else float(v)


_float_or_auto.__name__ = "number or auto"
CASTS = {"int": int, "float": float, "str": str, "float | str": _float_or_auto}  # by HeadConfig field type


def config_id(cfg: HeadConfig) -> str:
    return hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def parse_values(name: str, text: str) -> list:
    """'1e-4,3e-4' -> [0.0001, 0.0003], typed by the HeadConfig field ``name``."""
    types = {f.name: f.type for f in fields(HeadConfig)}
    if name not in types:
        raise MmfuseError(f"unknown grid parameter {name!r}: choose from {', '.join(types)}")
    cast = CASTS[str(types[name])]
    try:
        return [cast(v.strip()) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise MmfuseError(f"--{name.replace('_', '-')}: cannot read {text!r} as {cast.__name__}s") from None


def load_grid_file(path: str | Path) -> dict:
    """A TOML or YAML file: a ``grid`` table of parameter lists, plus optional folds, repeats, seed, jobs."""
    path = Path(path)
    if not path.is_file():
        raise MmfuseError(f"grid file not found: {path}")
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(path.read_text())
        else:
            import yaml
            data = yaml.safe_load(path.read_text()) or {}
    except Exception as e:  # noqa: BLE001 - a parse error of either format gets one message
        raise MmfuseError(f"cannot read grid file {path}: {e}") from None
    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise MmfuseError(f"{path}: 'grid' must be a table of parameter lists")
    out = {"grid": {k: v if isinstance(v, list) else [v] for k, v in grid.items()}}
    for key in ("folds", "seed", "jobs", "repeats"):
        if key in data:
            out[key] = data[key]
    for name, values in out["grid"].items():
        parse_values(name, ",".join(map(str, values)))  # validates names and types
    return out


def expand_grid(values: dict[str, list], base: HeadConfig | None = None) -> list[HeadConfig]:
    """All combinations (scikit-learn's ParameterGrid order), with fields a fusion ignores reset to the
    base value; no duplicates."""
    from sklearn.model_selection import ParameterGrid

    base = base or HeadConfig()
    configs, seen = [], set()
    for combo in ParameterGrid({k: list(v) for k, v in values.items()}):
        cfg = base.replace(**combo)
        info = head_info(cfg.fusion)  # an axis the head does not use is reset, so it is not fit twice
        cfg = cfg.replace(**{f.name: getattr(base, f.name) for f in fields(HeadConfig) if not info.uses_field(f.name)})
        if config_id(cfg) not in seen:
            seen.add(config_id(cfg))
            configs.append(cfg)
    return configs


MULTILABEL_ONLY = ("thresholds", "min_labels", "combine")  # the decision rule of multi-label heads


def for_task(configs: list[HeadConfig], multilabel: bool) -> list[HeadConfig]:
    """Single-label: the multi-label-only fields reset to their defaults (they change nothing there), and
    the duplicates this makes dropped."""
    if multilabel:
        return configs
    base, out, seen = HeadConfig(), [], set()
    for cfg in configs:
        cfg = cfg.replace(**{f: getattr(base, f) for f in MULTILABEL_ONLY})
        if config_id(cfg) not in seen:
            seen.add(config_id(cfg))
            out.append(cfg)
    return out


def fast_precision() -> tuple[str, str]:
    """(precision, reason): bf16 only where the CPU has native bf16 (AVX512-BF16 or AMX) and a head-sized
    matmul, timed in 5 rounds of about 40 ms, runs at least 1.5x faster in bf16 (median); else fp32. A CPU
    without native bf16 always gets fp32, so the choice cannot flip with a noisy timing there."""
    import torch

    from .extract.common import native_bf16

    capability = torch.backends.cpu.get_cpu_capability()
    if not native_bf16():
        return "fp32", f"this CPU has no native bf16 (torch capability {capability})"
    x, w = torch.randn(64, 1664), torch.randn(1664, 256)
    ratios = []
    for _ in range(5):
        times = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = x.to(dtype), w.to(dtype)
            a @ b
            t0 = time.perf_counter()
            for _ in range(50):
                a @ b
            times[name] = time.perf_counter() - t0
        ratios.append(times["fp32"] / times["bf16"])
    ratio = float(np.median(ratios))
    if ratio >= 1.5:
        return "bf16", f"native bf16 (torch capability {capability}), measured {ratio:.1f}x fp32's matmul rate"
    return "fp32", f"native bf16 measured only {ratio:.1f}x fp32's matmul rate here"


def default_precision(out: str | Path) -> tuple[str, str]:
    """(precision, reason): the precision a grid folder was started with (so a resumed grid keeps its
    ids), else :func:`fast_precision`."""
    path = Path(out) / "grid.json"
    if path.is_file():
        stored = read_json(path).get("precision") or []
        if len(stored) == 1:
            return stored[0], f"the precision {path} was started with"
    return fast_precision()


def task_metrics(multilabel: bool) -> tuple[str, ...]:
    return MULTILABEL_METRICS if multilabel else METRICS


def primary(row: dict) -> str:
    """The metric a result row is ranked by: micro-F1 for a multi-label grid, else macro-F1."""
    return "micro_f1" if "micro_f1_mean" in row else "macro_f1"


def score(row: dict) -> float:
    return row[f"{primary(row)}_mean"]


def make_folds(y: np.ndarray, k: int, seed: int, repeats: int = 1) -> np.ndarray:
    """Fold index (0..k-1) of each row, stratified by label (multi-label (N, L): iterative stratification,
    see mmfuse.multilabel). ``repeats`` > 1: repeated stratified k-fold, an (repeats, N) array, one
    reshuffled k-fold split per row (repeat r seeded ``seed + r``)."""
    if repeats < 1:
        raise MmfuseError(f"--repeats must be at least 1, not {repeats}")
    if repeats > 1:
        return np.stack([make_folds(y, k, seed + r) for r in range(repeats)])  # (R, N)
    from sklearn.model_selection import StratifiedKFold

    if k < 2:
        raise MmfuseError(f"--folds must be at least 2, not {k}")
    if y.ndim == 2:
        if len(y) < 2 * k:
            raise MmfuseError(f"{len(y)} rows are too few for --folds {k}")
        return iterative_stratification(y, np.ones(k), seed)
    counts = np.bincount(y)
    if counts[counts > 0].min() < k:
        raise MmfuseError(f"a class has {counts[counts > 0].min()} rows, fewer than --folds {k}")
    fold = np.empty(len(y), np.int64)
    for i, (_, te) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y)):
        fold[te] = i
    return fold


_DATA: dict[tuple[str, str, str], FeatureSet] = {}  # per process: features loaded once, not once per fit


def _features(source, text_feature: str, identity: str | None = None) -> FeatureSet:
    """The features of ``source`` (a FeatureSet, or a cache path read once per process). Keyed by the
    cache's identity too, so a cache re-extracted to the same path is read again, never served stale."""
    if isinstance(source, FeatureSet):
        return source
    cache = None if identity else FeatureCache(source)
    identity = identity or cache.identity
    key = (str(source), identity, text_feature)
    if key not in _DATA:
        cache = cache or FeatureCache(source)
        if cache.identity != identity:
            raise MmfuseError(f"{source} was re-extracted while the grid ran: run the grid again")
        for old in [k for k in _DATA if k[0] == key[0]]:  # an older extraction of this path
            del _DATA[old]
        _DATA[key] = FeatureSet.from_cache(cache, text_feature)
    return _DATA[key]


def evaluate_split(source, cfg: dict, fold: np.ndarray, split: int, threads: int = 1,
                   identity: str | None = None) -> dict:
    """Fit one configuration on one split (see :func:`splits`) and score its held-out rows: the unit of work
    of every search and backend. Returns {config_id, split, scores (metric -> value), proba (held-out rows,
    C), seconds, best_epoch}."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # one thread per fit: the same numbers in every backend
    try:
        data, config = _features(source, cfg["text_feature"], identity), HeadConfig(**cfg)
        head, test, seconds = fit_split(data, config, fold, split)
        part = data.subset(test)
        proba = head.predict_proba(part)
        m = metrics_for(part.y, proba, data.label_names, head.decide)  # multi-label: the fold's thresholds
        return {"config_id": config_id(config), "split": split, "proba": proba.astype(np.float32),
                "scores": {name: m[name] for name in task_metrics(data.y.ndim == 2)},
                "seconds": seconds, "best_epoch": head.best_epoch_}
    finally:
        torch.set_num_threads(before)


def splits(fold: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of every split: k of them for an (N,) fold array, R x k for the (R, N)
    array of repeated k-fold (repeat by repeat)."""
    return [(np.flatnonzero(f != k), np.flatnonzero(f == k)) for f in np.atleast_2d(fold) for k in range(int(f.max()) + 1)]


def fit_split(data: FeatureSet, config: HeadConfig, fold: np.ndarray, split: int) -> tuple[Head, np.ndarray, float]:
    """(fitted head, held-out rows, seconds) of one split: the head is fit on the split's training rows,
    early-stopped on a stratified VAL_FRACTION of them (the held-out rows are never seen). A split's model
    depends on nothing but its configuration and its rows, so any subset of splits can run, in any order."""
    train, test = splits(fold)[split]
    fit, val = stratified_split(data.y[train], VAL_FRACTION, config.seed)
    t0 = time.perf_counter()
    head = Head(config).fit(data.subset(train[fit]), val=data.subset(train[val]))
    return head, test, time.perf_counter() - t0


def fold_fits(data: FeatureSet, config: HeadConfig, fold: np.ndarray):
    """Yield (split, fitted head, held-out rows, seconds) for every split. The grid scores these heads and
    ships them (``best/``), so what is shipped is what was scored."""
    for k in range(len(splits(fold))):
        yield (k, *fit_split(data, config, fold, k))


def fold_fingerprint(fold: np.ndarray) -> str:
    """A short hash of the fold assignment, stored with every finished split so a split file is never read
    against other folds (a grid.json deleted and the folder reused with another seed, say)."""
    return hashlib.sha1(np.ascontiguousarray(fold, np.int64).tobytes()).hexdigest()[:16]


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


def result_columns(multilabel: bool) -> list[str]:
    return (["config_id"] + [f.name for f in fields(HeadConfig)]
            + [f"{m}_{s}" for m in task_metrics(multilabel) for s in ("mean", "std")]
            + ["seconds_per_fit", "best_epoch_mean"])


def read_results(out: Path) -> list[dict]:
    """Finished rows of a grid folder (those whose out-of-fold file exists), typed."""
    path = Path(out) / "results.csv"
    if not path.is_file():
        return []
    types = {f.name: f.type for f in fields(HeadConfig)}
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


@dataclass
class GridResult:
    out: Path
    rows: list[dict]  # every finished configuration, best macro-F1 first
    fits: int  # fits run in this run (a resumed grid: fewer)
    seconds: float
    best_run: Path | None
    pick: dict | None = None  # the configuration saved in best/ (the top, or by the one-standard-error rule)
    tied: list[dict] | None = None  # the configurations within one standard error of the top
    stopped: list[dict] | None = None  # successive halving: the configurations that stopped early


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


GRID_FILES = ("configs.json", "results.csv", "folds.npy", "splits", "oof")  # a grid folder's, beside grid.json


def _check_folder(out: Path, cache: FeatureCache, folds: int, seed: int, precision: list[str],
                  repeats: int = 1) -> np.ndarray:
    """Create or reopen a grid folder; refuse one made from other features (another extraction of the
    same path included) or other folds."""
    meta = {"cache": str(cache.path), "identity": cache.identity, "feature_identity": cache.feature_identity,
            "rows": len(cache), "folds": folds, "seed": seed, "repeats": repeats}
    fold = make_folds(cache.labels, folds, seed, repeats)
    results = out / "results.csv"
    if results.is_file() and results.stat().st_size:
        with open(results, newline="") as f:
            header = next(csv.reader(f), [])
        if header != result_columns(cache.multilabel):
            raise MmfuseError(f"{results} was written by another version of mmfuse (other columns): "
                              "choose another --out")
    if (out / "grid.json").is_file():
        old = read_json(out / "grid.json")
        same = all(old.get(k, 1 if k == "repeats" else None) == meta[k]
                   for k in ("identity", "rows", "folds", "seed", "repeats"))
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


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT while worker processes start: a spawned Python that starts with SIGINT ignored keeps
    it ignored, so Ctrl-C stops the grid with one line instead of a traceback from every worker. (The
    processes start in milliseconds; a Ctrl-C within them is lost, the next one stops the grid.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class Workers:
    """Where a grid's fits run, kept for the whole run (every rung of successive halving): this process
    (jobs 1), a pool of ``jobs`` spawned processes (one torch thread each, the features loaded once per
    process), or a Dask cluster (the features broadcast to its workers once per text vector)."""

    def __init__(self, cache: Path, identity: str, fold: np.ndarray, jobs: int, backend: str = "local",
                 scheduler: str | None = None):
        self.cache, self.identity, self.fold, self.jobs = cache, identity, fold, jobs
        self.backend, self.scheduler = backend, scheduler
        self.pool = self.client = None
        self.data: dict = {}

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, kind, *exc) -> None:
        if self.pool is not None and kind is not None and issubclass(kind, KeyboardInterrupt):
            for process in list(getattr(self.pool, "_processes", {}).values()):  # Ctrl-C: stop now; finished
                process.terminate()  # splits are on disk, the fits in flight run again on the next run
            self.pool.shutdown(wait=False, cancel_futures=True)
        elif self.pool is not None:  # a failed fit: queued fits are cancelled, those running finish
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.client is not None:
            self.client.close()

    def run(self, todo: list[tuple[HeadConfig, int]]):
        """Yield :func:`evaluate_split`'s result of each (configuration, split) as it finishes."""
        if self.backend == "dask":
            yield from self._dask(todo)
        elif self.jobs == 1:
            for cfg, split in todo:
                yield evaluate_split(self.cache, asdict(cfg), self.fold, split, identity=self.identity)
        else:
            with _sigint_ignored():  # workers start (on submit) ignoring Ctrl-C: this process handles it alone
                if self.pool is None:
                    self.pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"))
                futures = [self.pool.submit(evaluate_split, str(self.cache), asdict(cfg), self.fold, split, 1,
                                            self.identity) for cfg, split in todo]
            try:
                for fut in as_completed(futures):
                    yield fut.result()
            finally:
                for fut in futures:
                    fut.cancel()

    def _dask(self, todo):
        try:
            from distributed import Client, as_completed as dask_completed
        except ImportError:
            raise MmfuseError("--backend dask needs dask.distributed: pip install 'mmfuse[grid]'") from None
        if self.client is None:
            self.client = (Client(self.scheduler) if self.scheduler
                           else Client(processes=True, threads_per_worker=1))
        for tf in sorted({c.text_feature for c, _ in todo} - set(self.data)):
            # the features travel once to every worker, so no shared filesystem is needed
            self.data[tf] = self.client.scatter(FeatureSet.from_cache(self.cache, tf), broadcast=True)
        futures = [self.client.submit(evaluate_split, self.data[c.text_feature], asdict(c), self.fold, split,
                                      pure=False) for c, split in todo]
        for fut in dask_completed(futures):
            yield fut.result()


# full is the default: the default grid (12 configurations) takes about a minute. Halving is for large grids: on
# mvsa's 36 configurations with dropout 0, 0.2, 0.5 it ran a third of the fits in 0.36-0.37x the time and, in
# nested CV (bench/selection.py), picked on every outer fold what the full search picked; on a grid whose
# configurations repeat each other (the former default's weight-decay axis) copies crowd its rungs and its pick
# scored 0.009 lower
SEARCHES = ("full", "halving")
HALVING_FACTOR = 3  # successive halving keeps the best third of a rung's configurations (bench/halving_folds.py on
#                     mvsa, picks within one SE of the top over the 5 fold orders: 1/3 5 of 5 on both 36-configuration
#                     grids; 1/4 5 of 5 with dropout, 3 of 5 with the former weight-decay axis)


def halving_plan(n_splits: int, n_configs: int, factor: int = HALVING_FACTOR) -> list[int]:
    """Splits per rung of successive halving over folds, the last being all ``n_splits``: each rung about
    half the next (5 folds: 1, 2, 5), at most as many rungs as keeping 1/factor takes n_configs to one."""
    plan = [n_splits]
    while plan[0] > 1 and len(plan) < 1 + math.ceil(math.log(max(n_configs, 2), factor)):
        plan.insert(0, max(1, plan[0] // 2))
    return plan


def _halving(out: Path) -> list[int] | None:
    """The folds-per-rung plan of a grid folder run with successive halving, else None."""
    path = Path(out) / "grid.json"
    return read_json(path).get("halving_splits") if path.is_file() else None


def final_rows(out: Path, rows: list[dict] | None = None) -> list[dict]:
    """A grid folder's configurations scored on every split, best first: what a pick, an ensemble or a
    report ranks. (Successive halving's configurations that stopped early: :func:`stopped_rows`.)"""
    rows = ranked(read_results(out) if rows is None else rows)
    plan = _halving(out)
    for r in rows:
        r["rung"] = len(plan) - 1 if plan else 0
    return rows


def stopped_rows(out: Path) -> list[dict]:
    """The configurations of the folder's last successive-halving run that stopped before its last rung,
    each scored on the splits it ran (``splits``) at the rung it reached (``rung``, from 0; a run killed in
    its first rung: 0): the last rungs first, then by score."""
    out = Path(out)
    info = read_json(out / "grid.json") if (out / "grid.json").is_file() else {}
    plan = info.get("halving_splits")
    if not plan:
        return []
    names = task_metrics(bool(info.get("multilabel")))
    done = {r["config_id"] for r in read_results(out)}
    configs = read_json(out / "configs.json") if (out / "configs.json").is_file() else {}
    fold = load_npy(out / "folds.npy")
    fingerprint, rows = fold_fingerprint(fold), []
    for cid in info.get("halving_ids", []):
        if cid in done or cid not in configs:
            continue
        state = SplitState(out, cid, fold, names, fingerprint)
        if not state.done.any():
            continue
        row = state.row(HeadConfig(**configs[cid]))
        row["splits"] = int(state.done.sum())
        row["rung"] = max([i for i, n in enumerate(plan) if n <= row["splits"]], default=0)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["rung"], -score(r), r["config_id"]))


def _write_json(path: Path, data) -> None:
    """Write JSON through a temporary file and a rename: a kill or a full disk leaves the old file whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def run_grid(cache: str | Path, configs: list[HeadConfig], out: str | Path, *, folds: int = 5, seed: int = 0,
             jobs: int = -1, backend: str = "local", scheduler: str | None = None, refit_best: bool = True,
             refit_mode: str = "folds", pick: str = "top", search: str = "full", repeats: int = 1,
             progress: bool = True, log: Callable[[str], None] = print) -> GridResult:
    """Score every configuration by stratified k-fold CV; write results, summary, plots and the best run.

    ``search="halving"``: successive halving over folds (scikit-learn's HalvingGridSearchCV with splits
    as the resource): every configuration is fit and scored on the first split, the best third (by mean
    score over the splits run) goes on to the first two, and so on until the survivors have all splits
    (5 folds: rungs of 1, 2, 5). A split's model does not depend on which other splits run, so the
    finished splits are kept, and a configuration that reaches the last rung has exactly the row and
    out-of-fold probabilities a full search gives it. ``"full"``: every configuration on every split.

    ``repeats`` > 1: repeated stratified k-fold (``folds`` x ``repeats`` fits per configuration, each
    repeat reshuffled); scores are over all the splits, out-of-fold probabilities the mean over repeats."""
    out, cache_path = Path(out), Path(cache)
    fc = FeatureCache(cache_path)
    if not fc.labelled:
        raise MmfuseError(f"{cache_path} must be a labelled cache to run a grid on")
    if not configs:
        raise MmfuseError("the grid is empty: give at least one value per parameter")
    configs = for_task(configs, fc.multilabel)
    if search not in SEARCHES:
        raise MmfuseError(f"unknown search {search!r}: choose {', '.join(SEARCHES)}")
    plan = halving_plan(folds * repeats, len(configs)) if search == "halving" else None
    lock = acquire_writer_lock(out / "grid", "grid run", "wait for it, or choose another --out")
    try:
        return _run_grid(fc, cache_path, configs, out, folds, seed, jobs, backend, scheduler, refit_best, refit_mode,
                         pick, progress, log, plan, repeats)
    finally:
        release_writer_lock(out / "grid", lock)


def _run_grid(fc, cache_path, configs, out, folds, seed, jobs, backend, scheduler, refit_best, refit_mode, pick,
              progress, log, plan=None, repeats=1) -> GridResult:
    repair_results(out, log)
    fold = _check_folder(out, fc, folds, seed, sorted({c.precision for c in configs}), repeats)
    meta = read_json(out / "grid.json")
    meta.pop("halving", None)  # an older version's halving over epochs
    _write_json(out / "grid.json", {**meta, "halving_splits": plan,
                                    "halving_ids": [config_id(c) for c in configs] if plan else None})
    known = read_json(out / "configs.json") if (out / "configs.json").is_file() else {}
    _write_json(out / "configs.json", {**known, **{config_id(c): asdict(c) for c in configs}})
    jobs = (os.cpu_count() or 1) if jobs <= 0 else jobs
    if backend not in ("local", "dask"):
        raise MmfuseError(f"unknown backend {backend!r}: local or dask")
    if refit_mode not in REFITS:
        raise MmfuseError(f"unknown refit {refit_mode!r}: choose {', '.join(REFITS)}")
    if pick not in PICKS:
        raise MmfuseError(f"unknown pick {pick!r}: choose {', '.join(PICKS)}")
    t0, n_splits = time.perf_counter(), len(splits(fold))
    with Workers(cache_path, fc.identity, fold, jobs, backend, scheduler) as workers:
        if not plan:
            fits = _evaluate(fc, configs, n_splits, out, fold, workers, progress, log)
        else:  # successive halving over splits; each rung's finished splits are kept for the next
            fits, survivors, extra = 0, list(configs), []
            for r, n in enumerate(plan):
                log(f"rung {r + 1} of {len(plan)}: {len(survivors)} configurations x {n} of {n_splits} splits")
                fits += _evaluate(fc, survivors, n, out, fold, workers, progress, log, resuming=r == 0)
                extra.append(f"{len(survivors)} x {n}")
                if r < len(plan) - 1:
                    survivors.sort(key=lambda c: (-_rung_score(out, fc, c, fold, n), config_id(c)))
                    survivors = survivors[:max(1, math.ceil(len(survivors) / HALVING_FACTOR))]
            log(f"successive halving: configurations x splits per rung {' -> '.join(extra)}: {fits} fits "
                f"against {len(configs) * n_splits} for the full grid")
    seconds = time.perf_counter() - t0
    rows = final_rows(out)
    for r in rows:
        r["parameters"] = n_parameters(row_config(r), fc.dims["text/cls"], fc.dims["image/pooled"], len(fc.label_names))
    simplest, tied = one_se_pick(rows, folds) if rows else (None, [])
    chosen = (simplest if pick == "one-se" else rows[0]) if rows else None
    stopped = stopped_rows(out) if plan else None
    note = ("" if not plan else f"\nSuccessive halving over splits: rungs of {', '.join(map(str, plan))} of "
            f"{n_splits} splits, keeping the best 1/{HALVING_FACTOR} of each rung; {len(rows)} configuration(s) ran "
            f"every split and compete for `best/`; the {len(stopped)} that stopped early are listed after them with "
            "the splits they ran (`splits`): their scores are over fewer splits, so noisier.\n")
    write_summary(out, rows, folds, pick=chosen, tied=tied, rule=pick, extra=note, repeats=repeats, stopped=stopped)
    plot_grid(out, rows)
    best_run = None
    if refit_best and chosen:
        best_run = refit(cache_path, chosen, out / "best", fold, refit_mode,
                         load_npy(out / "oof" / f"{chosen['config_id']}.npy"))
    return GridResult(out, rows, fits, seconds, best_run, chosen, tied, stopped or [])


def _state(out: Path, fc: FeatureCache, cfg: HeadConfig, fold: np.ndarray, fingerprint: str | None = None) -> SplitState:
    return SplitState(out, config_id(cfg), fold, task_metrics(fc.multilabel), fingerprint)


def _rung_score(out: Path, fc: FeatureCache, cfg: HeadConfig, fold: np.ndarray, n: int) -> float:
    """A configuration's mean score over the first ``n`` splits, what a halving rung ranks by; a configuration
    listed in results.csv without split files (a folder from before splits/ existed) by its row's score."""
    state = _state(out, fc, cfg, fold)
    if state.done[:n].all():
        return state.mean(n)
    row = next((r for r in read_results(out) if r["config_id"] == config_id(cfg)), None)
    if row is None:
        raise MmfuseError(f"{out}: configuration {config_id(cfg)} has neither its first {n} splits nor a row")
    return score(row)


def _evaluate(fc, configs, n_use, out, fold, workers: Workers, progress, log, resuming: bool = True) -> int:
    """Run the first ``n_use`` splits of each configuration that are not done yet; a configuration with every
    split done gets its row in results.csv (also one whose splits were all done before a crash or a torn
    line lost its row). Returns how many fits ran."""
    complete = {r["config_id"] for r in read_results(out)}
    n_splits = len(splits(fold))
    fingerprint = fold_fingerprint(fold)
    states = {config_id(c): _state(out, fc, c, fold, fingerprint) for c in configs if config_id(c) not in complete}
    todo = [(c, s) for c in configs if config_id(c) in states for s in range(n_use) if not states[config_id(c)].done[s]]
    unlisted = [c for c in configs if config_id(c) in states and states[config_id(c)].done.all()]
    # the slowest configurations first (by seconds per fit of their finished splits; none yet: first of all),
    # so a rung does not end waiting on one long fit while the other workers idle
    def slowest_first(cs: tuple[HeadConfig, int]) -> float:
        sec = states[config_id(cs[0])].seconds
        return -float(np.nanmean(sec)) if np.isfinite(sec).any() else -np.inf

    todo.sort(key=slowest_first)
    asked = len(configs) * n_use
    if len(todo) < asked:  # later rungs of successive halving: the splits of earlier rungs are done
        done = sum(config_id(c) not in states or states[config_id(c)].done[:n_use].all() for c in configs)
        log(("resuming " if resuming else "") + f"{out}: {done} of {len(configs)} configurations already done "
            f"({asked - len(todo)} of {asked} fits)")
    if not todo and not unlisted:
        return 0
    by_id = {config_id(c): c for c in configs}
    new_file = not (out / "results.csv").is_file() or (out / "results.csv").stat().st_size == 0
    results = workers.run(todo)
    metric = task_metrics(fc.multilabel)[0]
    best = max((score(r) for r in read_results(out)), default=float("nan"))
    with open(out / "results.csv", "a", newline="") as f, \
            tqdm(total=len(todo), desc="grid", unit="fit", disable=not progress) as bar:
        writer = csv.DictWriter(f, fieldnames=result_columns(fc.multilabel))
        if new_file:
            writer.writeheader()
            f.flush()

        def listed(cid: str) -> None:
            """Write the out-of-fold file, then the row: a listed row is always complete."""
            nonlocal best
            row = states[cid].row(by_id[cid])
            np.save(out / "oof" / f"{cid}.npy", states[cid].oof())
            writer.writerow(row)
            f.flush()
            best = np.nanmax([best, score(row)])
            bar.set_postfix({f"best_{metric}": f"{best:.3f}"})

        def saved(write, *args) -> None:
            try:
                write(*args)
            except OSError as e:  # a full disk: a row half written is dropped on the next run (repair_results)
                raise write_failed(out, e, f"The {len(read_results(out))} configurations listed in results.csv, "
                                           "and every finished split in splits/, are kept") from None

        for c in unlisted:
            saved(listed, config_id(c))
        for result in results:  # a fit's own error (not a write's) propagates as it is
            state = states[result["config_id"]]
            saved(state.add, result)
            if state.done.sum() == n_splits:
                saved(listed, result["config_id"])
            bar.update(1)
    return len(todo)


def standard_error(row: dict, folds: int) -> float:
    """Standard error of a row's mean fold score: its std (over the splits, ddof 0) / sqrt(k - 1). With
    repeated k-fold the std is over all R x k splits but the divisor stays k's: the repeats reuse the same
    rows, so they steady the mean without being R times the evidence (Nadeau and Bengio's corrected
    variance never falls below about std^2 / (k - 1) however many repeats)."""
    return row[f"{primary(row)}_std"] / math.sqrt(max(1, folds - 1))


def n_parameters(cfg: HeadConfig, text_dim: int, image_dim: int, n_classes: int) -> int:
    """Learned parameters of a configuration's head: the measure of "simpler" in the one-SE rule."""
    if head_info(cfg.fusion).training == "closed-form":  # a linear model: one weight per feature and class
        return (text_dim + image_dim + 1) * n_classes
    from .heads import create_head
    return sum(p.numel() for p in create_head(cfg.fusion, text_dim, image_dim, n_classes, cfg).parameters())


def one_se_pick(rows: list[dict], folds: int) -> tuple[dict, list[dict]]:
    """(pick, tied): the configurations whose mean CV macro-F1 is within one standard error of the top's
    are statistically tied with it; the pick is the simplest of them (fewest parameters; then rank).
    ``rows`` are ranked and carry "parameters"."""
    bar = score(rows[0]) - standard_error(rows[0], folds)
    tied = [r for r in rows if score(r) >= bar]
    return min(tied, key=lambda r: (r["parameters"], tied.index(r))), tied


def ranked(rows: list[dict]) -> list[dict]:
    """Best CV macro-F1 first; ties broken by config id, so the order never depends on finishing order."""
    return sorted(rows, key=lambda r: (-score(r), r["config_id"]))


def row_config(row: dict) -> HeadConfig:
    """The HeadConfig of a result row; fields an older grid did not have take their defaults."""
    return HeadConfig(**{f.name: row[f.name] for f in fields(HeadConfig) if f.name in row})


REFITS = ("folds", "full")
# what best/ holds: the top configuration by mean CV macro-F1, or the simplest within one standard error
# of it. On held-out mvsa rows (bench/refit.py, 5 splits) the top predicted better (0.599 vs 0.592), so
# it is the default; the summary marks the tied set either way.
PICKS = ("top", "one-se")


def refit(cache: Path, row: dict, out: Path, fold: np.ndarray, mode: str = "folds", oof: np.ndarray | None = None) -> Path:
    """Save the model to ship for a grid row into ``out``.

    ``folds`` (default): the row's k fold heads, refit exactly as CV fit them (same rows, seed and
    early stopping), averaged (a BaggedHead): the models whose out-of-fold predictions were scored.
    ``full``: one head on all rows with the fold fits' schedule in optimiser steps (the cosine over
    cfg.epochs of a fold fit's steps per epoch, stopped at its mean best epoch); multi-label, its
    thresholds tuned on the row's out-of-fold probabilities ``oof``.
    """
    import torch

    cfg = row_config(row)
    data = _features(cache, cfg.text_feature)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not any((out / m).is_file() for m in ("grid-pick.json", "bagged.json")):
        raise MmfuseError(f"{out} holds files a grid did not write (a run saved there?): it is not replaced; move it "
                          "away and re-run the same command (the grid's results are kept)")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CV fits ran: the same numbers, so the shipped folds are the scored ones
    try:  # written beside and renamed into place: a failed refit leaves the previous one whole
        with new_folder(out, "grid best/", overwrite=True, check=False) as tmp:
            _refit(data, cfg, row, tmp, fold, mode, oof)
            write_text_atomic(tmp / "grid-pick.json", json.dumps({"config_id": row.get("config_id"), "refit": mode,
                                                                  "fusion": cfg.fusion}, indent=2) + "\n")
        return out
    finally:
        torch.set_num_threads(before)


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
    metrics["cv"] = {k: row[k] for k in row if k.endswith(("_mean", "_std"))}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out


def _uses(fusion: str, field: str) -> bool:
    """Whether ``field`` changes the model of ``fusion`` (what the head declares in the registry)."""
    return head_info(fusion).uses_field(field)


def _varied(rows: list[dict]) -> list[str]:
    """The HeadConfig fields that differ between rows (the grid's axes); a field an older grid's rows
    lack is not an axis."""
    return [f.name for f in fields(HeadConfig) if len({r.get(f.name) for r in rows}) > 1]


def write_summary(out: Path, rows: list[dict], folds: int, top: int = 10, extra: str = "",
                  pick: dict | None = None, tied: list[dict] | None = None, rule: str = "top", repeats: int = 1,
                  stopped: list[dict] | None = None) -> Path:
    """summary.md: the top configurations (all tied ones included); after successive halving (``stopped``
    given, possibly empty), a ``rung`` and a ``splits`` column, and the best ``top`` of the configurations
    that stopped early below them."""
    axes = _varied(rows + (stopped or [])) or ["fusion"]
    tied_ids = {r["config_id"] for r in tied or []}
    metrics = task_metrics(bool(rows) and primary(rows[0]) == "micro_f1")
    titles = {"macro_f1": "macro-F1", "accuracy": "accuracy", "weighted_f1": "weighted-F1",
              "balanced_accuracy": "balanced acc.", "micro_f1": "micro-F1", "samples_f1": "samples-F1", "map": "mAP"}
    halving = stopped is not None
    n_splits = folds * repeats
    lines = [f"# Grid {out}: {len(rows) + len(stopped or [])} configurations, {folds}-fold stratified CV"
             + (f" repeated {repeats} times" if repeats > 1 else "")
             + (", successive halving" if halving else "")
             + (" (multi-label: iterative stratification; ranked by micro-F1)" if metrics[0] == "micro_f1" else "") + "\n",
             f"| rank | {' | '.join(axes)} | " + ("rung | splits | " if halving else "") + f"{titles[metrics[0]]} | ± SE | "
             + " | ".join(titles[m] for m in metrics[1:]) + " | s/fit | parameters | tied with the top |",
             "|---:|" + "---|" * len(axes) + ("---:|---:|" if halving else "") + "---:|---:|"
             + "---:|" * (len(metrics) - 1) + "---:|---:|:---:|"]
    shown, full_ids = rows[:max(top, len(tied_ids))] + (stopped or [])[:top], {r["config_id"] for r in rows}
    for i, r in enumerate(shown, 1):
        full = r["config_id"] in full_ids
        lines.append(f"| {i if full else '-'} | " + " | ".join(str(r[a]) if _uses(r["fusion"], a) else "-" for a in axes) + " | "
                     + (f"{r['rung']} | {n_splits if full else r['splits']} | " if halving else "")
                     + f"{score(r):.3f} ± {r[metrics[0] + '_std']:.3f} | "
                     + (f"{standard_error(r, folds):.3f} | " if full else "- | ")
                     + " | ".join(f"{r[m + '_mean']:.3f} ± {r[m + '_std']:.3f}" for m in metrics[1:])
                     + f" | {r['seconds_per_fit']:.2f} | {r.get('parameters', '')} | "
                     + ("yes" if r["config_id"] in tied_ids else "") + " |")
    if pick:
        lines.append(f"\n{len(tied_ids)} configuration(s) score within one standard error of the top "
                     f"({score(rows[0]):.3f} - {standard_error(rows[0], folds):.3f}): statistically tied. "
                     + ("Picked by the one-standard-error rule, the simplest of them (fewest parameters): "
                        if rule == "one-se" else "Picked: the top by mean (`--pick one-se` takes the simplest tied one): ")
                     + f"`{pick['config_id']}` ({', '.join(f'{a}={pick[a]}' for a in axes)}), saved in `best/` "
                     f"(use it with `mmfuse predict {out}/best ...`). `mmfuse ensemble {out}` stacks the top ones.")
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def heatmap_axis(rows: list[dict]) -> str:
    """The heatmaps' columns: the numeric field besides lr with the most values among the rows (the first in
    HeadConfig's order on a tie), weight_decay (one column) when none varies, as in the default grid."""
    numeric = [f for f in _varied(rows) if f not in ("lr", "seed") and
               all(isinstance(r[f], (int, float)) and not isinstance(r[f], bool) for r in rows)]
    return max(numeric, key=lambda f: len({r[f] for r in rows}), default="weight_decay")


def plot_grid(out: Path, rows: list[dict]) -> None:
    """heatmaps.png: lr x the grid's other main axis per fusion (the numeric field with the most values besides
    lr, see heatmap_axis; best macro-F1 over the remaining axes); fusions.png: best per fusion."""
    if not rows:
        return
    from .metrics import _plt

    plt = _plt()
    name = {"macro_f1": "macro-F1", "micro_f1": "micro-F1"}[primary(rows[0])]
    std = f"{primary(rows[0])}_std"
    fusions = sorted({r["fusion"] for r in rows}, key=lambda f: -max(score(r) for r in rows if r["fusion"] == f))
    best = {f: max((r for r in rows if r["fusion"] == f), key=score) for f in fusions}
    fig, ax = plt.subplots(figsize=(1.1 * len(fusions) + 3, 3.8))
    ax.bar(range(len(fusions)), [score(best[f]) for f in fusions],
           yerr=[best[f][std] for f in fusions], capsize=4, color="C0")
    ax.set_xticks(range(len(fusions)), fusions, rotation=30, ha="right")
    low = min(score(best[f]) - best[f][std] for f in fusions)
    ax.set_ylim(max(0, low - 0.05), None)
    ax.set_ylabel(f"CV {name} (best config, ± std over folds)")
    ax.set_title("best configuration per fusion")
    fig.tight_layout()
    fig.savefig(out / "fusions.png", dpi=110)
    plt.close(fig)

    torch_fusions = [f for f in fusions if head_info(f).training == "gradient"]  # the heads lr changes
    if not torch_fusions:
        return
    torch_rows = [r for r in rows if r["fusion"] in torch_fusions]
    lrs = sorted({r["lr"] for r in torch_rows})
    axis = heatmap_axis(torch_rows)
    label = axis.replace("_", " ")
    wds = sorted({r[axis] for r in torch_rows})
    cols = min(4, len(torch_fusions))
    nrows = -(-len(torch_fusions) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols + 1.2, 3.1 * nrows + 0.8), squeeze=False,
                             constrained_layout=True)
    vmin = min(score(r) for r in rows)
    vmax = max(score(r) for r in rows)
    for n, (ax, f) in enumerate(zip(axes.flat, torch_fusions)):
        grid = np.full((len(lrs), len(wds)), np.nan)
        for r in rows:
            if r["fusion"] == f:
                i, j = lrs.index(r["lr"]), wds.index(r[axis])
                grid[i, j] = np.nanmax([grid[i, j], score(r)])
        im = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(lrs)):
            for j in range(len(wds)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] < (vmin + vmax) / 2 else "black")
        ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
        ax.set_yticks(range(len(lrs)), [f"{v:g}" for v in lrs] if n % cols == 0 else [])
        ax.set_xlabel(label)
        if n % cols == 0:
            ax.set_ylabel("learning rate")
        ax.set_title(f)
    for ax in list(axes.flat)[len(torch_fusions):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=f"CV {name}")
    fig.suptitle(f"CV {name} by learning rate and {label} (best over other axes)")
    fig.savefig(out / "heatmaps.png", dpi=110)
    plt.close(fig)
