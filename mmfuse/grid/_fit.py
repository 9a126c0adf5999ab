"""Fitting: one configuration on one split (the unit of work of every search and backend), where the fits
run (:class:`Workers`: this process, a pool of processes, or a Dask cluster), and running a batch of them
into the grid folder (:func:`_evaluate`)."""
from __future__ import annotations

import contextlib
import csv
import shutil
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cache import FeatureCache
from ..errors import MmfuseError, write_failed
from ..heads import FeatureSet, Head, HeadConfig
from ..metrics import metrics_for
from ..splits import fold_fingerprint, splits, stratified_split
from ._backbones import Backbones
from ._select import score
from ._spec import config_id, row_cell, task_metrics
from ._store import _state, read_results, writable_columns

VAL_FRACTION = 0.15  # of each training part, for early stopping (the held-out fold is never seen)
SHARED = "shared"  # the grid folder's folder of features shared by its worker processes (removed at the end)

_DATA: dict[tuple, FeatureSet] = {}  # per process: features loaded once, not once per fit


def _features(source, text_feature: str = "auto", identity: str | None = None, image_feature: str = "auto",
              backbone: str = "", shared: str | Path | None = None) -> FeatureSet:
    """The features of ``source`` (a FeatureSet; a cache path read once per process; or a grid's Backbones,
    of which the pair named ``backbone`` is read: text from one cache, images from another). Keyed by the
    caches' identities too, so a cache re-extracted to the same path is read again, never served stale.
    ``shared``: a folder where they are kept as float32 ``.npy`` copies that every process memory-maps
    (:meth:`FeatureCache.shared`), so a machine's worker processes hold one copy between them; features this
    process read without it are replaced by those."""
    if isinstance(source, FeatureSet):
        return source
    sides = source.sides(backbone) if isinstance(source, Backbones) else ((str(source), identity),) * 2
    opened: dict[str, FeatureCache] = {}
    for path, known in sides:
        if not known and path not in opened:
            opened[path] = FeatureCache(path)
    (tp, tid), (ip, iid) = ((p, known or opened[p].identity) for p, known in sides)
    key = (tp, tid, ip, iid, text_feature, image_feature)
    if key not in _DATA or (shared is not None and not _mapped_from(_DATA[key], shared)):
        for path, known in ((tp, tid), (ip, iid)):
            if path not in opened:
                opened[path] = FeatureCache(path)
            if opened[path].identity != known:
                raise MmfuseError(f"{path} was re-extracted while the grid ran: run the grid again")
        for old in [k for k in _DATA if (k[0], k[2]) == (tp, ip) and (k[1], k[3]) != (tid, iid)]:
            del _DATA[old]  # an older extraction of these paths
        _DATA[key] = FeatureSet.from_caches(opened[tp], opened[ip], text_feature, image_feature, shared)
    return _DATA[key]


def _mapped_from(data: FeatureSet, folder: str | Path) -> bool:
    """Whether ``data``'s features are memory-mapped from files in ``folder``."""
    return all(isinstance(a, np.memmap) and Path(a.filename).parent.resolve() == Path(folder).resolve()
               for a in (data.text, data.image))


def release_shared(folder: Path) -> None:
    """Forget the features this process memory-mapped from ``folder`` and remove it: a grid's shared copies,
    once its fits and its refit are done (a killed grid leaves them; the next run reuses them)."""
    for key in [k for k, data in _DATA.items() if _mapped_from(data, folder)]:
        del _DATA[key]
    shutil.rmtree(folder, ignore_errors=True)


def evaluate_split(source, cfg: dict, fold: np.ndarray, split: int, threads: int = 1,
                   identity: str | None = None, shared: str | None = None) -> dict:
    """Fit one configuration on one split (see :func:`mmfuse.splits.splits`) and score its held-out rows: the
    unit of work of every search and backend. Returns {config_id, split, scores (metric -> value), proba
    (held-out rows, C), seconds, best_epoch}. ``shared``: see :func:`_features`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # one thread per fit: the same numbers in every backend
    try:
        data = _features(source, cfg["text_feature"], identity, cfg.get("image_feature", "auto"),
                         cfg.get("backbone", ""), shared)
        config = row_cell(cfg)  # a HeadConfig, or a GridCell (a configuration on a backbone pair)
        head, test, seconds = fit_split(data, config, fold, split)
        part = data.view(test)
        proba = head.predict_proba(part)
        m = metrics_for(part.y, proba, data.label_names, head.decide)  # multi-label: the fold's thresholds
        return {"config_id": config_id(config), "split": split, "proba": proba.astype(np.float32),
                "scores": {name: m[name] for name in task_metrics(data.y.ndim == 2)},
                "seconds": seconds, "best_epoch": head.best_epoch_}
    finally:
        torch.set_num_threads(before)


def fit_split(data: FeatureSet, config: HeadConfig, fold: np.ndarray, split: int) -> tuple[Head, np.ndarray, float]:
    """(fitted head, held-out rows, seconds) of one split: the head is fit on the split's training rows,
    early-stopped on a stratified VAL_FRACTION of them (the held-out rows are never seen). A split's model
    depends on nothing but its configuration and its rows, so any subset of splits can run, in any order.
    The parts are views of ``data`` (:meth:`FeatureSet.view`): a fit copies no features."""
    train, test = splits(fold)[split]
    fit, val = stratified_split(data.y[train], VAL_FRACTION, config.seed)
    t0 = time.perf_counter()
    head = Head(config).fit(data.view(train[fit]), val=data.view(train[val]))
    return head, test, time.perf_counter() - t0


def fold_fits(data: FeatureSet, config: HeadConfig, fold: np.ndarray):
    """Yield (split, fitted head, held-out rows, seconds) for every split. The grid scores these heads and
    ships them (``best/``), so what is shipped is what was scored."""
    for k in range(len(splits(fold))):
        yield (k, *fit_split(data, config, fold, k))


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


def _vectors(c: HeadConfig) -> tuple[str, str, str]:
    """What a configuration reads: its backbone pair (a grid over several caches) and its two vectors."""
    return getattr(c, "backbone", ""), c.text_feature, c.image_feature


class Workers:
    """Where a grid's fits run, kept for the whole run (every rung of successive halving): this process
    (jobs 1), a pool of ``jobs`` spawned processes (one torch thread each), or a Dask cluster (the features
    broadcast to its workers once per pair and vectors). ``cache``: a cache path, or a grid's
    :class:`Backbones` (``identity`` None: they carry their own). The pool's processes read the features
    once each, or with ``share`` (a folder) memory-map the float32 copies this process writes there once
    (:func:`_features`): one copy per machine, in the page cache."""

    def __init__(self, cache: Path | Backbones, identity: str | None, fold: np.ndarray, jobs: int,
                 backend: str = "local", scheduler: str | None = None, share: Path | None = None):
        self.cache, self.identity, self.fold, self.jobs = cache, identity, fold, jobs
        self.backend, self.scheduler, self.share = backend, scheduler, share
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
            source = self.cache if isinstance(self.cache, Backbones) else str(self.cache)
            shared = None if self.share is None else str(self.share)
            for backbone, tf, vf in sorted({_vectors(c) for c, _ in todo} if shared else ()):
                _features(self.cache, tf, self.identity, vf, backbone, shared)  # the copies written once, here
            with _sigint_ignored():  # workers start (on submit) ignoring Ctrl-C: this process handles it alone
                if self.pool is None:
                    self.pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"))
                futures = [self.pool.submit(evaluate_split, source, asdict(cfg), self.fold, split, 1,
                                            self.identity, shared) for cfg, split in todo]
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
        for k in sorted({_vectors(c) for c, _ in todo} - set(self.data)):
            # the features travel once to every worker, so no shared filesystem is needed
            data = _features(self.cache, k[1], self.identity, k[2], k[0])
            self.data[k] = self.client.scatter(data, broadcast=True)
        futures = [self.client.submit(evaluate_split, self.data[_vectors(c)], asdict(c), self.fold, split,
                                      pure=False) for c, split in todo]
        for fut in dask_completed(futures):
            yield fut.result()


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
    columns = writable_columns(out, configs, fc.multilabel)  # an older grid's results.csv: its own columns
    results = workers.run(todo)
    metric = task_metrics(fc.multilabel)[0]
    best = max((score(r) for r in read_results(out)), default=float("nan"))
    with open(out / "results.csv", "a", newline="") as f, \
            tqdm(total=len(todo), desc="grid", unit="fit", disable=not progress) as bar:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
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
