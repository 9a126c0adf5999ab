"""Stacking ensemble of a grid's best configurations.

A logistic-regression meta-classifier reads the members' out-of-fold probabilities (never
in-fold predictions) and is scored by the grid's own folds; the plain mean of the members'
probabilities is scored beside it (``--meta mean`` saves that instead). The saved run holds every member
refitted on all rows plus the meta-classifier, and ``predict`` / ``evaluate`` accept it.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from .cache import FeatureCache
from .errors import MmfuseError
from .grid import METRICS, ranked, read_results, refit
from .heads import FeatureSet, Head
from .metrics import classification_metrics


def _meta_features(probas: list[np.ndarray]) -> np.ndarray:
    return np.hstack(probas)  # (N, k * C): the members' probabilities side by side


class MeanOfMembers:
    """The unweighted mean of the members' probabilities (``--meta mean``): nothing to fit."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def fit(self, Z, y):
        return self

    def predict_proba(self, Z: np.ndarray) -> np.ndarray:
        return Z.reshape(len(Z), -1, self.n_classes).mean(1)  # (N, k, C) -> (N, C)

    def predict(self, Z: np.ndarray) -> np.ndarray:
        return self.predict_proba(Z).argmax(1)


def _meta_model(kind: str, n_classes: int, seed: int):
    """``lr``: balanced logistic regression, C chosen by inner 3-fold CV on macro-F1."""
    if kind == "mean":
        return MeanOfMembers(n_classes)
    if kind != "lr":
        raise MmfuseError(f"unknown meta-classifier {kind!r}: lr or mean")
    from sklearn.linear_model import LogisticRegressionCV

    return LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1.0], cv=3, scoring="f1_macro", class_weight="balanced",
                                max_iter=3000, random_state=seed)


class StackedEnsemble:
    """Members (saved heads) + a meta LogisticRegression; the run-folder interface of ``Head``."""

    def __init__(self, members: list[Head], meta, label_names: tuple[str, ...]):
        self.members, self.meta_, self.label_names_ = members, meta, tuple(label_names)
        self.classes_ = np.arange(len(self.label_names_))

    def predict_cache(self, cache, zero: str | None = None) -> tuple[FeatureSet, np.ndarray]:
        cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        sets: dict[str, FeatureSet] = {}  # features read once per text vector, not once per member
        probas = []
        for head in self.members:
            tf = head.config.text_feature
            if tf not in sets:
                sets[tf] = FeatureSet.from_cache(cache, tf)
            X = sets[tf]
            head.check_compatible(X)
            probas.append(head.predict_proba(X, zero))
        return X, self.meta_.predict_proba(_meta_features(probas))

    @classmethod
    def load(cls, folder: str | Path) -> "StackedEnsemble":
        folder = Path(folder)
        meta = json.loads((folder / "ensemble.json").read_text())
        members = [Head.load(folder / "members" / m) for m in meta["members"]]
        return cls(members, pickle.loads((folder / "meta.pkl").read_bytes()), meta["label_names"])


def _fit(model, Z: np.ndarray, y: np.ndarray):
    """Fit quietly: scikit-learn's FutureWarnings about LogisticRegressionCV's defaults say nothing
    to a user here, and pinning the new defaults would break older scikit-learn."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(Z, y)


def _cv(kind: str, Z: np.ndarray, y: np.ndarray, fold: np.ndarray, label_names, seed: int) -> dict:
    """Scores of a meta-classifier on the grid's own folds: fit on the other folds' rows, score this one."""
    scores: dict[str, list[float]] = {m: [] for m in METRICS}
    for k in range(int(fold.max()) + 1):
        tr, te = fold != k, fold == k
        pred = _fit(_meta_model(kind, len(label_names), seed), Z[tr], y[tr]).predict(Z[te])
        m = classification_metrics(y[te], pred, label_names)
        for name in METRICS:
            scores[name].append(m[name])
    return {f"{n}_{s}": float(f(scores[n])) for n in METRICS for s, f in (("mean", np.mean), ("std", np.std))}


def build_ensemble(grid: str | Path, top: int = 8, out: str | Path | None = None, meta: str = "lr",
                   log=print) -> tuple[StackedEnsemble | None, dict]:
    """Stack the ``top`` configurations of a grid folder; CV-score it; with ``out``, save the run.

    ``meta="lr"`` fits the linear meta-classifier; ``"mean"`` averages the members' probabilities.
    Both are scored; the chosen one is saved.
    """
    grid = Path(grid)
    if not (grid / "grid.json").is_file():
        raise MmfuseError(f"{grid} is not a grid folder (grid.json missing): run mmfuse grid first")
    info = json.loads((grid / "grid.json").read_text())
    rows = ranked(read_results(grid))[:top]
    if len(rows) < 2:
        raise MmfuseError(f"{grid} has {len(rows)} finished configuration(s): stacking needs at least 2")
    cache = Path(info["cache"])
    fc = FeatureCache(cache)
    if fc.identity != info.get("identity") or len(fc) != info.get("rows"):
        raise MmfuseError(f"{cache} no longer holds the features grid {grid} was run on (re-extracted?): "
                          "run the grid again")
    y = fc.labels
    fold = np.load(grid / "folds.npy")
    Z = _meta_features([np.load(grid / "oof" / f"{r['config_id']}.npy") for r in rows])
    names = info["label_names"]
    metrics = {"members": [r["config_id"] for r in rows], "folds": int(fold.max()) + 1, "meta": meta,
               "cv": _cv(meta, Z, y, fold, names, info["seed"]),
               "cv_other": {other: _cv(other, Z, y, fold, names, info["seed"]) for other in ("lr", "mean") if other != meta},
               "best_member": {"config_id": rows[0]["config_id"], "fusion": rows[0]["fusion"],
                               **{f"{n}_{s}": rows[0][f"{n}_{s}"] for n in METRICS for s in ("mean", "std")}}}
    if out is None:
        return None, metrics
    out = Path(out)
    members = []
    for r in rows:
        log(f"refitting member {r['config_id']} ({r['fusion']}) on all {len(y)} rows")
        members.append(Head.load(refit(cache, r, out / "members" / r["config_id"])))
    model = _fit(_meta_model(meta, len(names), info["seed"]), Z, y)
    (out / "meta.pkl").write_bytes(pickle.dumps(model))
    (out / "ensemble.json").write_text(json.dumps({"members": metrics["members"], "label_names": names,
                                                   "grid": str(grid), "meta": meta}, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return StackedEnsemble(members, model, names), metrics
