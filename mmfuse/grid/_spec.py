"""What a grid is: its axes (HeadConfig fields, each a list of values), read from the command line or a
TOML/YAML file, expanded into configurations with stable ids, and the metrics every configuration is
scored by."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import MmfuseError
from ..heads import HeadConfig
from ..heads.registry import head_info

# fusion x lr, no weight-decay or dropout axis: chosen in nested CV by bench/experiments/selection.py
# (the numbers: docs/grids.md)
DEFAULT_GRID = {"fusion": ["concat", "weighted", "gated", "late"], "lr": [1e-4, 3e-4, 1e-3]}
METRICS = ("macro_f1", "accuracy", "weighted_f1", "balanced_accuracy")  # single-label; ranked by the first
MULTILABEL_METRICS = ("micro_f1", "macro_f1", "samples_f1", "map")  # multi-label; ranked by micro-F1
MULTILABEL_ONLY = ("thresholds", "min_labels", "combine")  # the decision rule of multi-label heads

SEARCHES = ("full", "halving")  # every configuration on every split, or successive halving over splits
REFITS = ("folds", "full")  # the shipped model: the k fold models, or one model refit on every row


def task_metrics(multilabel: bool) -> tuple[str, ...]:
    """The metrics a grid scores every split by, the first being the one it ranks by."""
    return MULTILABEL_METRICS if multilabel else METRICS


def _float_or_auto(v: str):
    return "auto" if str(v).strip() == "auto" else float(v)


_float_or_auto.__name__ = "number or auto"
CASTS = {"int": int, "float": float, "str": str, "float | str": _float_or_auto}  # by HeadConfig field type


# Fields added after grid folders were first saved, with their defaults: config_id leaves each out while it holds
# its default, so a configuration keeps the id an older grid folder knows it by (and that folder resumes).
# Add a new HeadConfig field here, never remove one.
LATER_FIELDS = {
    "image_feature": "auto",  # HeadConfig: the image vector (before it, heads read image/pooled: auto there)
    "zeroshot_from": "image",  # HeadConfig: the zeroshot head's embedding (added with it)
    "backbone": "",  # GridCell: the backbone pair of a grid over several caches ("": a grid over one cache)
}


@dataclass(frozen=True)
class GridCell(HeadConfig):
    """One cell of a grid over several caches (``mmfuse grid A.h5 B.h5``): a head configuration on a backbone
    pair, text from one cache and images from another, named in ``backbone`` (see :mod:`mmfuse.grid._backbones`).
    A Head built from it reads HeadConfig's fields only; :func:`config_id` includes the pair."""

    backbone: str = ""

    @property
    def head(self) -> HeadConfig:
        """The head's own configuration (the pair left out)."""
        return HeadConfig(**{f.name: getattr(self, f.name) for f in fields(HeadConfig)})


def config_id(cfg: HeadConfig) -> str:
    """A configuration's id: the first 12 hex digits of the SHA-1 of its fields as sorted JSON (those of
    LATER_FIELDS holding their default left out); a GridCell's includes its backbone pair."""
    data = asdict(cfg)
    for name, default in LATER_FIELDS.items():
        if name in data and data[name] == default:
            del data[name]
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


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
    base value, so a grid never fits the same model twice (logreg ignores lr; only aligned reads
    align_weight); no duplicates."""
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


def row_config(row: dict) -> HeadConfig:
    """The HeadConfig of a result row; fields an older grid did not have take their defaults."""
    return HeadConfig(**{f.name: row[f.name] for f in fields(HeadConfig) if f.name in row})


def row_cell(row: dict) -> HeadConfig:
    """The configuration of a result row or a configs.json entry as the grid ran it: a GridCell where it names
    a backbone pair (a grid over several caches), else a HeadConfig (:func:`row_config`)."""
    if not row.get("backbone"):
        return row_config(row)
    return GridCell(**{f.name: row[f.name] for f in fields(GridCell) if f.name in row})
