"""Hyperparameter grids over heads, scored by stratified k-fold CV, run in parallel.

Every configuration sees the same folds. The unit of work is one fit: a configuration on one split, whose
scores and held-out probabilities are kept in ``splits/{id}/{split}.npz``; a configuration with every
split done is appended to ``results.csv`` with its out-of-fold probabilities in ``oof/{id}.npy`` (for
stacking). Re-running the same grid skips finished splits and configurations, and successive halving
(``search="halving"``) runs only the first splits of most configurations. Local execution uses processes
(one torch thread each, features loaded once per process, the pool kept for the whole run);
``backend="dask"`` sends the same fits to a Dask cluster.

One file per job, as scikit-learn's ``model_selection``; import from ``mmfuse.grid``, not from them:

- ``_spec``: the axes, their defaults (DEFAULT_GRID), parsing, a grid file, expansion into configurations,
  their ids (config_id), and GridCell (a configuration on a backbone pair)
- ``_backbones``: a grid over several caches of the same rows: its (text cache, image cache) pairs, their names
- ``_precision``: the training precision chosen when none is given
- ``_store``: the grid folder (grid.json, configs.json, folds, splits/, results.csv, oof/) and reading it back
- ``_fit``: one configuration on one split, the workers that run fits, a batch of fits into the folder
- ``_successive_halving``: the rungs of successive halving over splits
- ``_select``: ranking, standard errors, the one-standard-error rule, the rows a pick ranks
- ``_refitting``: the model shipped for a configuration (``best/``, ensemble members)
- ``_summary``: summary.md, heatmaps.png, fusions.png
- ``_search``: GridConfig (the options and their defaults) and run_grid, which ties the others

The folds themselves live in :mod:`mmfuse.splits`.
"""
from __future__ import annotations

from .._lazy import attach

# imported on first use (mmfuse._lazy): the CLI reads a few constants without the whole package
__getattr__, __dir__, _names = attach(__name__, {
    "..splits": ["fold_fingerprint", "make_folds", "splits"],
    "._backbones": ["PAIRS", "Backbones", "open_backbones", "pair_dims"],
    "._fit": ["VAL_FRACTION", "Workers", "evaluate_split", "fit_split", "fold_fits", "_DATA", "_evaluate",
              "_features", "_sigint_ignored"],
    "._precision": ["BF16_SPEEDUP", "default_precision", "fast_precision"],
    "._refitting": ["refit", "_refit"],
    "._search": ["BACKENDS", "FILE_OPTIONS", "GridConfig", "GridResult", "grid_configs", "run_grid",
                 "_run_grid"],
    "._select": ["PICKS", "final_rows", "n_parameters", "one_se_pick", "primary", "ranked", "score",
                 "standard_error", "stopped_rows"],
    "._spec": ["REFITS", "SEARCHES", "CASTS", "DEFAULT_GRID", "LATER_FIELDS", "METRICS", "MULTILABEL_METRICS",
               "MULTILABEL_ONLY", "GridCell", "config_id", "expand_grid", "for_task", "load_grid_file", "parse_values", "row_cell",
               "row_config", "task_metrics", "_float_or_auto"],
    "._store": ["GRID_FILES", "SplitState", "read_results", "record_configs", "repair_results", "result_columns",
                "results_header", "writable_columns", "_check_folder", "_halving", "_state", "_write_json"],
    "._successive_halving": ["HALVING_FACTOR", "halving_note", "halving_plan", "rungs", "_rung_score"],
    "._summary": ["backbones_note", "heatmap_axis", "plot_backbones", "plot_grid", "varied_fields", "write_summary",
                  "_uses", "_varied"],
})
__all__ = [
    # the search
    "GridConfig", "GridResult", "grid_configs", "run_grid", "SEARCHES", "BACKENDS", "FILE_OPTIONS",
    # the spec
    "DEFAULT_GRID", "CASTS", "LATER_FIELDS", "METRICS", "MULTILABEL_METRICS", "MULTILABEL_ONLY", "GridCell",
    "config_id", "expand_grid", "for_task", "load_grid_file", "parse_values", "row_cell", "row_config",
    "task_metrics",
    # a grid over several caches
    "PAIRS", "Backbones", "open_backbones", "pair_dims",
    # precision
    "BF16_SPEEDUP", "default_precision", "fast_precision",
    # folds (their home: mmfuse.splits)
    "fold_fingerprint", "make_folds", "splits",
    # the folder
    "GRID_FILES", "SplitState", "read_results", "record_configs", "repair_results", "result_columns",
    "results_header", "writable_columns",
    # fits
    "VAL_FRACTION", "Workers", "evaluate_split", "fit_split", "fold_fits",
    # successive halving
    "HALVING_FACTOR", "halving_note", "halving_plan", "rungs",
    # selection
    "PICKS", "final_rows", "n_parameters", "one_se_pick", "primary", "ranked", "score", "standard_error",
    "stopped_rows",
    # refit
    "REFITS", "refit",
    # summary and plots
    "backbones_note", "heatmap_axis", "plot_backbones", "plot_grid", "varied_fields", "write_summary",
]
