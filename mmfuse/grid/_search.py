"""The search that ties a grid together: its options (:class:`GridConfig`, one set of defaults for
``mmfuse grid`` and Python callers), its configurations (:func:`grid_configs`) and :func:`run_grid`, which
fits them split by split, ranks them, writes the summary and plots and saves the pick in ``best/``."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..cache import FeatureCache, acquire_writer_lock, release_writer_lock
from ..errors import MmfuseError
from ..heads import HeadConfig
from ..safe import load_npy, read_json
from ..splits import splits
from ._backbones import Backbones, open_backbones, pair_dims
from ._fit import SHARED, Workers, _evaluate, release_shared
from ._precision import default_precision, fast_precision
from ._refitting import REFITS, refit
from ._select import PICKS, final_rows, n_parameters, one_se_pick, primary, stopped_rows
from ._spec import DEFAULT_GRID, SEARCHES, expand_grid, for_task, load_grid_file, parse_values, row_config
from ._store import _check_folder, record_configs, repair_results
from ._successive_halving import halving_note, halving_plan, rungs
from ._summary import backbones_note, plot_grid, write_summary

# full, the default; halving for grids too large to run in full (bench/experiments/selection.py)
BACKENDS = ("local", "dask")
FILE_OPTIONS = ("folds", "repeats", "seed", "jobs")  # what a grid file may set besides its axes


def _default_axes() -> dict[str, list]:
    return {**DEFAULT_GRID, "epochs": [20]}  # DEFAULT_GRID, up to 20 epochs (bench/experiments/selection.py)


@dataclass(frozen=True)
class GridConfig:
    """The options of a grid run, with the defaults of ``mmfuse grid`` and :func:`run_grid` alike (the
    measurements behind them: the bench scripts named, and the README)."""

    axes: dict[str, list] = field(default_factory=_default_axes)  # HeadConfig field -> values
    folds: int = 5  # stratified CV folds (bench/experiments/selection.py)
    repeats: int = 1  # repeated k-fold: reshuffle and run the folds R times
    seed: int = 0  # of the folds
    jobs: int = -1  # local processes; 0 or less: all cores (bench/speed/grid.py, bench/experiments/grid_batching.py)
    backend: str = "local"  # local processes, or dask (a dask.distributed cluster)
    scheduler: str | None = None  # a Dask scheduler's address; None: a local cluster
    refit_best: bool = True  # save the pick in best/
    refit_mode: str = "folds"  # best/: the fold models averaged, or one full refit (bench/experiments/refit.py)
    pick: str = "top"  # the top by mean, or one-se: the simplest within one standard error (bench/experiments/refit.py)
    search: str = "full"  # or halving over folds (bench/experiments/selection.py, halving_folds.py)
    pairs: str = "all"  # a grid over several caches: all (text cache, image cache) pairs, same (each cache's
    #                     own), or TEXT:IMAGE,... by cache stem or position (mmfuse.grid._backbones)

    @classmethod
    def from_options(cls, file: str | Path | None = None, axes: dict[str, str | None] | None = None,
                     **options) -> "GridConfig":
        """The options of ``mmfuse grid``: ``axes`` (field -> comma list text, None: not given) over a grid
        file's (:func:`load_grid_file`) over the default axes; folds, repeats, seed and jobs given over the
        file's over the defaults (a folds, repeats or jobs of 0 counts as not given); the other ``options``
        given (not None) over the defaults."""
        spec = load_grid_file(file) if file else {"grid": {}}
        given = dict(spec["grid"])
        given.update({k: parse_values(k, v) for k, v in (axes or {}).items() if v is not None})
        base = cls()
        values = {"axes": {**base.axes, **given}}
        for key in FILE_OPTIONS:
            value = options.pop(key, None)
            unset = value is None if key == "seed" else not value
            values[key] = spec.get(key, getattr(base, key)) if unset else value
        values.update({k: v for k, v in options.items() if v is not None})
        return cls(**values)

    def describe(self, n_configs: int, n_pairs: int = 0) -> str:
        """The line ``mmfuse grid`` prints before it starts: configurations (x backbone pairs, a grid over
        several caches) x splits, and the fits."""
        split = f"{self.folds} folds" + (f" x {self.repeats} repeats" if self.repeats > 1 else "")
        if n_pairs:
            split = f"{n_pairs} backbone pair{'s' if n_pairs > 1 else ''} x {split}"
        total = n_configs * max(1, n_pairs) * self.folds * self.repeats
        return (f"{n_configs} configurations x {split} = {total} fits" if self.search == "full" else
                f"{n_configs} configurations x {split}, successive halving over folds (a full search: {total} fits)")


def grid_configs(axes: dict[str, list] | None = None, out: str | Path | None = None,
                 log: Callable[[str], None] = print) -> list[HeadConfig]:
    """The configurations of a grid: ``axes`` over GridConfig's default axes, expanded (:func:`expand_grid`).
    Without a precision axis, the training precision is the one the grid folder ``out`` was started with
    (a resumed grid keeps its ids), else the faster one here (:func:`fast_precision`); the choice is logged."""
    axes = {**_default_axes(), **(axes or {})}
    if "precision" not in axes:
        chosen, reason = default_precision(out) if out is not None else fast_precision()
        axes["precision"] = [chosen]
        log(f"training precision {chosen}: {reason} (--precision to choose)")
    return expand_grid(axes)


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

    @property
    def metric_name(self) -> str:
        """The ranking metric as printed: macro-F1 or micro-F1."""
        return primary(self.rows[0]).replace("_f1", "-F1")

    def lines(self, config: GridConfig) -> list[str]:
        """What ``mmfuse grid`` prints when done: the fits and files, the top, and the pick."""
        out, fits, best, chosen = self.out, self.fits, self.rows[0], self.pick
        metric, name = primary(best), self.metric_name
        rule = "one-standard-error rule: the simplest tied one" if config.pick == "one-se" else "the top by mean"
        pairs = f", {out}/backbones.png" if best.get("backbone") else ""
        size = f", {chosen['parameters']:,} parameters"
        return [f"{fits} fits in {self.seconds:.1f} s ({fits / max(self.seconds, 1e-9):.2f} fits/s); "
                f"results in {out}/results.csv, {out}/summary.md, {out}/heatmaps.png, {out}/fusions.png{pairs}",
                f"top: {_what(best)} CV {name} {best[metric + '_mean']:.3f} ± "
                f"{best[metric + '_std']:.3f}; {len(self.tied)} configuration(s) within one standard error of it",
                f"picked ({rule}): {_what(chosen, size)} "
                f"CV {name} {chosen[metric + '_mean']:.3f}; saved ({config.refit_mode}) in {self.best_run}"]


def _what(row: dict, more: str = "") -> str:
    """A result row as the command prints it: its fusion (on its backbone pair) and id."""
    on = f" on {row['backbone']}" if row.get("backbone") else ""
    return f"{row['fusion']}{on} ({row['config_id']}{more})"


def _paths(cache) -> list[Path]:
    return [Path(c) for c in cache] if isinstance(cache, (list, tuple)) else [Path(cache)]


def run_grid(cache: str | Path | list[str | Path], configs: list[HeadConfig] | None, out: str | Path,
             config: GridConfig | None = None, *, progress: bool = True, log: Callable[[str], None] = print,
             **options) -> GridResult:
    """Score every configuration by stratified k-fold CV; write results, summary, plots and the best run.

    ``cache``: a labelled cache, or several caches of the same rows (a grid over backbones: each configuration
    on each backbone pair, text from one cache and images from another, ``config.pairs``; see
    :mod:`mmfuse.grid._backbones`). ``configs``: the configurations (:func:`expand_grid`), or None for
    :func:`grid_configs` of ``config.axes``. ``config``: the options (:class:`GridConfig`; None: its defaults),
    any of which a keyword overrides (``folds=3, jobs=1``).

    ``search="halving"``: successive halving over folds (see :mod:`mmfuse.grid._successive_halving`; 5 folds: rungs
    of 1, 2, 5). ``"full"``: every configuration on every split.

    ``repeats`` > 1: repeated stratified k-fold (``folds`` x ``repeats`` fits per configuration, each
    repeat reshuffled); scores are over all the splits, out-of-fold probabilities the mean over repeats."""
    config = replace(config or GridConfig(), **options)
    out, paths = Path(out), _paths(cache)
    if not paths:
        raise MmfuseError("give at least one feature cache")
    fc = FeatureCache(paths[0])
    if not fc.labelled:
        raise MmfuseError(f"{paths[0]} must be a labelled cache to run a grid on")
    backbones = open_backbones(paths, config.pairs)[0] if len(paths) > 1 else None
    if configs is None:
        configs = grid_configs(config.axes, out, log)
    if not configs:
        raise MmfuseError("the grid is empty: give at least one value per parameter")
    configs = for_task(configs, fc.multilabel)
    if backbones is not None:
        log(f"{len(backbones.pairs)} backbone pairs (text + image): {'; '.join(backbones.names)}")
        configs = backbones.cells(configs)
    if config.search not in SEARCHES:
        raise MmfuseError(f"unknown search {config.search!r}: choose {', '.join(SEARCHES)}")
    plan = halving_plan(config.folds * config.repeats, len(configs)) if config.search == "halving" else None
    lock = acquire_writer_lock(out / "grid", "grid run", "wait for it, or choose another --out")
    try:
        return _run_grid(fc, backbones or paths[0], configs, out, config, plan, progress, log)
    finally:
        release_shared(out / SHARED)  # the workers' shared features (a killed run leaves them for the next)
        release_writer_lock(out / "grid", lock)


def _run_grid(fc: FeatureCache, source: Path | Backbones, configs: list[HeadConfig], out: Path, config: GridConfig,
              plan: list[int] | None, progress: bool, log: Callable[[str], None]) -> GridResult:
    repair_results(out, log)
    backbones = source if isinstance(source, Backbones) else None
    fold = _check_folder(out, fc, config.folds, config.seed, sorted({c.precision for c in configs}), config.repeats,
                         backbones)
    record_configs(out, configs, plan, backbones)
    if backbones is not None:  # the pairs of this folder's earlier runs too (other --pairs): rows may name them
        pairs = read_json(out / "grid.json")["backbones"]["pairs"]
        source = backbones = replace(backbones, pairs=tuple((name, t, i) for name, (t, i) in pairs.items()))
    jobs = (os.cpu_count() or 1) if config.jobs <= 0 else config.jobs
    if config.backend not in BACKENDS:
        raise MmfuseError(f"unknown backend {config.backend!r}: local or dask")
    if config.refit_mode not in REFITS:
        raise MmfuseError(f"unknown refit {config.refit_mode!r}: choose {', '.join(REFITS)}")
    if config.pick not in PICKS:
        raise MmfuseError(f"unknown pick {config.pick!r}: choose {', '.join(PICKS)}")
    t0, n_splits = time.perf_counter(), len(splits(fold))
    share = out / SHARED if jobs > 1 and config.backend == "local" else None  # one copy of the features per machine
    with Workers(source, None if backbones else fc.identity, fold, jobs, config.backend, config.scheduler,
                 share) as workers:
        if plan:  # successive halving over splits; each rung's finished splits are kept for the next
            fits = rungs(fc, configs, plan, out, fold, workers, progress, log)
        else:
            fits = _evaluate(fc, configs, n_splits, out, fold, workers, progress, log)
    seconds = time.perf_counter() - t0
    rows = final_rows(out)
    opened = {str(fc.path): fc}
    for r in rows:  # the widths of the vectors each row's head read (its backbone pair's, in a grid over several)
        r["parameters"] = n_parameters(row_config(r), *pair_dims(source, r, opened), len(fc.label_names))
    simplest, tied = one_se_pick(rows, config.folds) if rows else (None, [])
    chosen = (simplest if config.pick == "one-se" else rows[0]) if rows else None
    stopped = stopped_rows(out) if plan else None
    note = "" if not plan else halving_note(plan, n_splits, len(rows), len(stopped))
    if backbones is not None:
        note = backbones_note(backbones) + note
    write_summary(out, rows, config.folds, pick=chosen, tied=tied, rule=config.pick, extra=note,
                  repeats=config.repeats, stopped=stopped)
    plot_grid(out, rows)
    best_run = None
    if config.refit_best and chosen:
        best_run = refit(source, chosen, out / "best", fold, config.refit_mode,
                         load_npy(out / "oof" / f"{chosen['config_id']}.npy"))
    return GridResult(out, rows, fits, seconds, best_run, chosen, tied, stopped or [])
