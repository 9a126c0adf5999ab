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
from .data import csv_records, guid_tag_rows, split_labels
from .errors import DataError, MmfuseError
from .heads.features import align_labels
from .metrics import classification_metrics, metrics_for, multilabel_metrics
from .outputs import write_text_atomic


class Predictor(Protocol):
    label_names_: tuple[str, ...]

    def predict_cache(self, cache, zero: str | None = None) -> tuple: ...


def load_run(run: str | Path) -> Predictor:
    """A saved head, bagged head (bagged.json), stacking ensemble (ensemble.json) or fine-tune run
    (finetune.json; it predicts from raw data, not from a cache)."""
    run = Path(run)
    if not run.is_dir():
        raise MmfuseError(f"run folder not found: {run}")
    if (run / "finetune.json").is_file():
        from .finetune import FineTunedRun
        return FineTunedRun(run)
    if (run / "ensemble.json").is_file():
        from .ensemble import StackedEnsemble
        return StackedEnsemble.load(run)
    from .heads.bagging import load_head
    return load_head(run)


def decide(model, proba: np.ndarray) -> np.ndarray:
    """A run's predictions from its probabilities: its own rule (multi-label thresholds), else argmax."""
    return model.decide(proba) if hasattr(model, "decide") else proba.argmax(1)


def _sources(source) -> list:
    """A cache, a data folder, or several caches of the same rows (a list): as a list."""
    return list(source) if isinstance(source, (list, tuple)) else [source]


def _is_data_folder(source) -> bool:
    return not isinstance(source, FeatureCache) and Path(source).is_dir()


def _name(source) -> str:
    return str(getattr(source, "path", source))


def _predict(model, source, split: str, zero: str | None):
    """(guids, probabilities, labels or None, name) of a cache (or several caches of the same rows, each modality
    read from the one extracted like the run's), or of a data folder's split for a fine-tune run."""
    sources = _sources(source)
    if not sources:
        raise MmfuseError("give a feature cache (or a data folder for a fine-tune run)")
    raw = hasattr(model, "predict_data")
    if len(sources) > 1 and (raw or any(_is_data_folder(s) for s in sources)):
        raise MmfuseError(f"{', '.join(map(_name, sources))}: give one data folder (a fine-tune run, with --split), "
                          "or one or more feature caches of the same rows (a run of heads)")
    source = sources[0] if len(sources) == 1 else sources
    is_dir = len(sources) == 1 and _is_data_folder(source)
    if raw and not is_dir:
        raise MmfuseError("a fine-tune run predicts from raw data: pass a data folder and --split, not "
                          f"{getattr(source, 'path', source)}")
    if is_dir and not raw:
        raise MmfuseError(f"{source} is a data folder, but this run reads cached features: extract it "
                          f"(mmfuse extract {source} ...) and pass the cache")
    if raw:
        if zero:
            raise MmfuseError("--zero works on cached features only")
        guids, proba, y = model.predict_data(source, split)
        return guids, proba, (None if (y < 0).any() else y), f"{Path(source).name}-{split}"
    X, proba = model.predict_cache(source, zero)
    X = align_labels(X, model.label_names_)  # a no-op where predict_cache aligned them; a stacking ensemble does not
    return X.guids, proba, X.y, "+".join(Path(_name(s)).stem for s in sources)


def evaluate_run(run: str | Path, source, zero: str | None = None,
                 save: bool = True, split: str = "train", log=print) -> dict:
    """Metrics of a saved run on a labelled cache, or several caches of the same rows (a list; see
    :func:`predict_run`), or for a fine-tune run a data folder's ``split``; saved as
    ``eval-{name}[-zero-{modality}].json`` (name: the caches' file stems)."""
    model = load_run(run)
    trained_on = getattr(model, "trained_on", None)
    if trained_on and not isinstance(source, (list, tuple)) and trained_on == (str(Path(str(source)).resolve()), split):
        log(f"warning: {run} was trained and validated on {source} split {split}: these metrics are in-sample")
    _, proba, y, name = _predict(model, source, split, zero)
    if y is None:
        raise MmfuseError(f"{source} has unlabelled rows: evaluate needs labels (use predict)")
    metrics = metrics_for(y, proba, model.label_names_, lambda p: decide(model, p))
    metrics.update(source=", ".join(map(_name, _sources(source))), zero=zero)
    if save:
        write_text_atomic(Path(run) / f"eval-{name}{f'-zero-{zero}' if zero else ''}.json",
                          json.dumps(metrics, indent=2) + "\n")
    return metrics


def write_tags(path: str | Path, guids: list[str], tags: list[str], header=("guid", "tag")) -> Path:
    """A ``guid,tag`` file written with csv (a guid holding a comma or quote is quoted, not split)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(header))
    w.writerows(zip(guids, tags))
    return write_text_atomic(path, buf.getvalue())  # a reader never sees half a predictions file


def write_label_sets(path: str | Path, ids: list[str], labels: list[list[str]], header=("ImageID", "Labels")) -> Path:
    """Multi-label predictions: ``ImageID,Labels`` rows, the label names space-separated."""
    return write_tags(path, ids, [" ".join(x) for x in labels], header)


def predict_run(run: str | Path, source: str | Path | FeatureCache, out: str | Path, log=print,
                split: str = "test") -> Path:
    """Write ``guid,tag`` rows in the source's order (the course format), tag names not numbers;
    multi-label: ``ImageID,Labels`` rows (the CSV's own column names), label names space-separated.
    ``source``: a feature cache, or several caches of the same rows (a list: a run trained on text from one
    cache and images from another reads each modality from the cache extracted like its own), or for a
    fine-tune run a data folder (its ``split``).

    Rows skipped at extraction have no features and so no prediction; ``log`` names them."""
    model = load_run(run)
    sources = _sources(source)
    if not hasattr(model, "predict_data") and sources and not any(_is_data_folder(s) for s in sources):
        sources = [s if isinstance(s, FeatureCache) else FeatureCache(s) for s in sources]
        for s in sources[:1]:  # several caches hold the same rows (else predict refuses them)
            if s.skipped:
                shown = "; ".join(f"{g} ({reason})" for g, reason in s.skipped[:5])
                log(f"warning: {len(s.skipped)} row(s) of {s.path} were skipped at extraction and get no "
                    f"prediction: {shown}{' ...' if len(s.skipped) > 5 else ''}")
        source = sources[0] if len(sources) == 1 else sources
    guids, proba, _, _ = _predict(model, source, split, None)
    pred = decide(model, proba)
    if pred.ndim == 2:
        first = sources[0] if sources else None
        cols = (first.provenance.get("data", {}).get("columns") or {}) if isinstance(first, FeatureCache) else {}
        names = np.array(model.label_names_)
        return write_label_sets(out, guids, [list(names[row > 0]) for row in pred],
                                (cols.get("id", "ImageID"), cols.get("labels", "Labels")))
    return write_tags(out, guids, [model.label_names_[p] for p in pred])


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


def read_label_sets(path: Path, id_col: str = "ImageID", labels_col: str = "Labels",
                    label_sep: str = " ", text_col: str = "Caption") -> dict[str, list[str]]:
    """``ImageID,Labels`` rows (labels space-separated) of a multi-label truth or predictions file (or a
    training CSV with its caption column); a line that cannot be parsed or a duplicate id is an error
    naming its line."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = [h.strip().strip('"').lower() for h in f.readline().split(",")]
    free = text_col if text_col.lower() in header else labels_col  # the column that may hold anything
    rows, _ = csv_records(path, free, (id_col, labels_col) if free != labels_col else (id_col,))
    out: dict[str, list[str]] = {}
    for line, fields, error, _ in rows:
        if error:
            raise DataError(f"{path} line {line}: {error}")
        key = fields[id_col]
        if key in out:
            raise DataError(f"{path} line {line}: duplicate {id_col} {key}")
        out[key] = split_labels(fields[labels_col], label_sep)
    return out


def score_label_sets(predictions: str | Path, truth: str | Path, label_names: tuple[str, ...] | None = None,
                     id_col: str = "ImageID", labels_col: str = "Labels", label_sep: str = " ") -> dict:
    """Multi-label metrics of a predictions file against a truth file (both ``ImageID,Labels``). The label
    set is ``label_names`` (a label outside it is an error naming the line), else every label seen."""
    from .data import _sort_labels

    predictions, truth = Path(predictions), Path(truth)
    pred, true = (read_label_sets(p, id_col, labels_col, label_sep) for p in (predictions, truth))
    missing = [g for g in true if g not in pred]
    if missing:
        raise DataError(f"{predictions} has no prediction for {len(missing)} id(s) of {truth}, e.g. "
                        f"{', '.join(missing[:3])}")
    names = tuple(label_names) if label_names else _sort_labels(x for d in (pred, true) for v in d.values() for x in v)
    index = {n: k for k, n in enumerate(names)}
    arrays = []
    for path, sets in ((truth, true), (predictions, pred)):
        y = np.zeros((len(true), len(names)), np.int8)
        for row, key in enumerate(true):
            unknown = [x for x in sets[key] if x not in index]
            if unknown:
                raise DataError(f"{path}: unknown label(s) {unknown} for {key} (the label names are {', '.join(names)})")
            y[row, [index[x] for x in sets[key]]] = 1
        arrays.append(y)
    return multilabel_metrics(arrays[0], arrays[1], names)


def is_course_file(path: str | Path) -> bool:
    """Whether a labels file is in the course's ``guid,tag`` format (else a multi-label CSV)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return [c.strip().lower() for c in f.readline().split(",")] == ["guid", "tag"]
