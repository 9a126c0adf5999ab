"""Using any saved run folder: a head, a bagged head (a grid's ``best/``) or a stacking ensemble.

This module sits above ``heads``, ``grid`` and ``ensemble`` (it imports them; none imports it), so
imports flow one way. Every run kind offers the same small interface: ``label_names_``,
``predict_cache(cache, zero)`` -> (features, probabilities).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Protocol

import numpy as np

from .cache import FeatureCache
from .data import guid_tag_rows
from .errors import DataError, MmfuseError
from .metrics import classification_metrics


class Predictor(Protocol):
    label_names_: tuple[str, ...]

    def predict_cache(self, cache, zero: str | None = None) -> tuple: ...


def load_run(run: str | Path) -> Predictor:
    """A saved head, bagged head (bagged.json) or stacking ensemble (ensemble.json)."""
    run = Path(run)
    if not run.is_dir():
        raise MmfuseError(f"run folder not found: {run}")
    if (run / "ensemble.json").is_file():
        from .ensemble import StackedEnsemble
        return StackedEnsemble.load(run)
    if (run / "bagged.json").is_file():
        from .heads.bagging import BaggedHead
        return BaggedHead.load(run)
    from .heads import Head
    return Head.load(run)


def evaluate_run(run: str | Path, cache: str | Path | FeatureCache, zero: str | None = None,
                 save: bool = True) -> dict:
    """Metrics of a saved run on a labelled cache, saved as ``eval-{cache}[-zero-{modality}].json``."""
    model = load_run(run)
    X, proba = model.predict_cache(cache, zero)
    if X.y is None:
        raise MmfuseError(f"{X.source} has unlabelled rows: evaluate needs a labelled cache (use predict)")
    metrics = classification_metrics(X.y, proba.argmax(1), model.label_names_)
    metrics.update(cache=X.source, zero=zero)
    if save:
        name = f"eval-{Path(X.source).stem}{f'-zero-{zero}' if zero else ''}.json"
        (Path(run) / name).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def write_tags(path: str | Path, guids: list[str], tags: list[str]) -> Path:
    """A ``guid,tag`` file written with csv (a guid holding a comma or quote is quoted, not split)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["guid", "tag"])
    w.writerows(zip(guids, tags))
    path.write_text(buf.getvalue())
    return path


def predict_run(run: str | Path, cache: str | Path | FeatureCache, out: str | Path, log=print) -> Path:
    """Write ``guid,tag`` rows in the cache's order (the course format), tag names not numbers.

    Rows skipped at extraction have no features and so no prediction; ``log`` names them."""
    model = load_run(run)
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    if cache.skipped:
        shown = "; ".join(f"{g} ({reason})" for g, reason in cache.skipped[:5])
        log(f"warning: {len(cache.skipped)} row(s) of {cache.path} were skipped at extraction and get no "
            f"prediction: {shown}{' ...' if len(cache.skipped) > 5 else ''}")
    X, proba = model.predict_cache(cache)
    return write_tags(out, X.guids, [model.label_names_[p] for p in proba.argmax(1)])


def score_files(predictions: str | Path, truth: str | Path, label_names: tuple[str, ...]) -> dict:
    """Metrics of a ``guid,tag`` predictions file against a labels file. A tag outside ``label_names``
    in either file, a duplicate guid, or a guid of the truth with no prediction is an error naming it."""
    def read(path: Path) -> dict[str, str]:
        if not path.is_file():
            raise DataError(f"file not found: {path}")
        tags: dict[str, str] = {}
        for lineno, guid, tag in guid_tag_rows(path):
            if tag not in label_names:
                raise DataError(f"{path} line {lineno}: unknown tag {tag!r} for guid {guid} "
                                f"(expected one of {', '.join(label_names)})")
            if guid in tags:
                raise DataError(f"{path} line {lineno}: duplicate guid {guid}")
            tags[guid] = tag
        return tags

    predictions, truth = Path(predictions), Path(truth)
    pred, true = read(predictions), read(truth)
    missing = [g for g in true if g not in pred]
    if missing:
        raise DataError(f"{predictions} has no prediction for {len(missing)} guid(s) of {truth}, "
                        f"e.g. {', '.join(missing[:3])}")
    index = {n: i for i, n in enumerate(label_names)}
    return classification_metrics(np.array([index[true[g]] for g in true]),
                                  np.array([index[pred[g]] for g in true]), label_names)
