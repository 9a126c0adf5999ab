"""Stacking ensemble of a grid's best configurations.

A logistic-regression meta-classifier reads the members' out-of-fold probabilities (never
in-fold predictions) and is scored by the grid's own folds; the plain mean of the members'
probabilities is scored beside it (``--meta mean`` saves that instead). Each saved member is, by
default, its k fold models averaged (the models whose out-of-fold probabilities the meta-classifier
was fit on), and ``predict`` / ``evaluate`` accept the run.

The scores are paired with the best member's on the same folds (per-fold differences) and pooled
over all out-of-fold rows. The members are chosen by these same folds' scores, so the ensemble's
CV score is optimistic by the selection; only a nested CV removes that.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cache import FeatureCache
from .errors import MmfuseError
from .grid import REFITS, Backbones, final_rows, refit, task_metrics
from .heads import FeatureSet, Head
from .heads.features import open_cache, pick_caches
from .heads.bagging import load_head
from .heads.linear import fit_per_label, linear_arrays, load_linear, save_linear
from .metrics import task_metrics_of
from .multilabel import decide, tune_thresholds
from .outputs import new_folder
from .safe import load_npy, read_json


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


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


class PerLabelStack:
    """Multi-label stacking: per label, a logistic regression on the logits of the members' probabilities
    of that label (k inputs; logits, because a one-vs-rest member's probabilities can sit in a narrow
    band around 0.5); saved as a (L, k) coefficient matrix."""

    def __init__(self, n_labels: int, seed: int = 0):
        self.n_labels, self.seed = n_labels, seed

    def fit(self, Z: np.ndarray, Y: np.ndarray) -> "PerLabelStack":
        from sklearn.linear_model import LogisticRegression

        L = self.n_labels
        self.coef_, self.intercept_ = fit_per_label(
            lambda label: _logit(Z[:, label::L]), Y, lambda: LogisticRegression(C=1.0, max_iter=1000, random_state=self.seed))
        self.classes_ = np.arange(L)
        return self

    def predict_proba(self, Z: np.ndarray) -> np.ndarray:
        L = self.n_labels
        logits = np.stack([_logit(Z[:, label::L]) @ self.coef_[label] for label in range(L)], 1) + self.intercept_  # (N, L)
        return 1 / (1 + np.exp(-logits))

    @classmethod
    def load(cls, path: Path) -> "PerLabelStack":
        coef, intercept, classes = linear_arrays(path)
        model = cls(len(intercept))
        model.coef_, model.intercept_, model.classes_ = coef, intercept, classes
        return model


def _meta_model(kind: str, n_classes: int, seed: int, multilabel: bool = False):
    """``lr``: balanced logistic regression, C chosen by inner 3-fold CV on macro-F1 (multi-label: one
    logistic regression per label, :class:`PerLabelStack`)."""
    if kind == "mean":
        return MeanOfMembers(n_classes)
    if kind != "lr":
        raise MmfuseError(f"unknown meta-classifier {kind!r}: lr or mean")
    if multilabel:
        return PerLabelStack(n_classes, seed)
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer

    # a scorer of our own: LogisticRegressionCV rebuilds a "f1_macro" scorer with pos_label twice on two
    # classes (scikit-learn's _log_reg_scoring_path: TypeError); one without a labels argument is left alone
    return LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1.0], cv=3, scoring=make_scorer(_macro_f1),
                                class_weight="balanced", max_iter=3000, random_state=seed)


def _macro_f1(y_true, y_pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro"))


class StackedEnsemble:
    """Members (saved heads) + a meta-classifier; the run-folder interface of ``Head``. Multi-label:
    ``thresholds`` (tuned on the out-of-fold rows) turn its probabilities into label sets."""

    def __init__(self, members: list[Head], meta, label_names: tuple[str, ...], thresholds=None,
                 min_labels: int = 1):
        self.members, self.meta_, self.label_names_ = members, meta, tuple(label_names)
        self.classes_ = np.arange(len(self.label_names_))
        self.thresholds_ = None if thresholds is None else np.asarray(thresholds)
        self.min_labels = min_labels

    def decide(self, proba: np.ndarray) -> np.ndarray:
        return decide(proba, self.thresholds_, self.min_labels)

    def predict_cache(self, cache, zero: str | None = None) -> tuple[FeatureSet, np.ndarray]:
        """(features, probabilities) of a cache, or of several caches of the same rows: each member reads
        each modality from the cache extracted like its own training features (members of a grid over
        several caches may read other backbones)."""
        caches = [cache] if isinstance(cache, (str, Path, FeatureCache)) else list(cache)
        caches = [open_cache(c) for c in caches]
        sets: dict[tuple, FeatureSet] = {}  # features read once per pair of caches and vectors, not per member
        probas = []
        for head in self.members:
            text, image = pick_caches(head.provenance_, caches)
            vectors = (head.text_feature_ or head.config.text_feature, head.image_feature_ or head.config.image_feature)
            key = (str(text.path), str(image.path), *vectors)
            if key not in sets:
                sets[key] = FeatureSet.from_caches(text, image, *vectors)
            X = head.check_compatible(sets[key])  # a cache lacking a rare label: its labels mapped by name
            probas.append(head.predict_proba(X, zero))
        p = self.meta_.predict_proba(_meta_features(probas))
        if p.shape[1] < len(self.label_names_):  # the meta-classifier never saw a class: its column is 0
            full = np.zeros((len(p), len(self.label_names_)), p.dtype)
            full[:, self.meta_.classes_] = p
            p = full
        return X, p

    @classmethod
    def load(cls, folder: str | Path) -> "StackedEnsemble":
        folder = Path(folder)
        meta = read_json(folder / "ensemble.json", ("members", "label_names", "meta"))
        members = [load_head(folder / "members" / m) for m in meta["members"]]
        multilabel = meta.get("thresholds") is not None
        model = (MeanOfMembers(len(meta["label_names"])) if meta["meta"] == "mean"
                 else PerLabelStack.load(folder / "meta.npz") if multilabel else load_linear(folder / "meta.npz"))
        return cls(members, model, meta["label_names"], meta.get("thresholds"), meta.get("min_labels", 1))



def _fit(model, Z: np.ndarray, y: np.ndarray):
    """Fit quietly: scikit-learn's FutureWarnings about LogisticRegressionCV's defaults say nothing
    to a user here, and pinning the new defaults would break older scikit-learn."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(Z, y)


def _scores(y: np.ndarray, pred: np.ndarray, fold: np.ndarray, label_names, proba: np.ndarray | None = None) -> dict:
    """Per-fold metrics (mean, std, the primary score of each fold: macro-F1, multi-label micro-F1) and the
    primary score pooled over all rows."""
    names = task_metrics(y.ndim == 2)
    per = [task_metrics_of(y[fold == k], pred[fold == k], label_names, None if proba is None else proba[fold == k])
           for k in range(int(fold.max()) + 1)]
    out = {f"{n}_{s}": float(f([m[n] for m in per])) for n in names if n in per[0]
           for s, f in (("mean", np.mean), ("std", np.std))}
    out.update(metric=names[0], fold_scores=[m[names[0]] for m in per],
               pooled=task_metrics_of(y, pred, label_names)[names[0]])
    return out


def _cv(kind: str, Z: np.ndarray, y: np.ndarray, fold: np.ndarray, label_names, seed: int,
        thresholds: str = "global", min_labels: int = 1) -> dict:
    """Scores of a meta-classifier on the grid's own folds: fit on the other folds' rows, predict this one.
    Multi-label: the thresholds are tuned on the other folds' rows too."""
    multilabel = y.ndim == 2
    pred = np.empty(y.shape if multilabel else len(y), np.int64)
    proba = np.zeros(y.shape, float) if multilabel else None
    for k in range(int(fold.max()) + 1):
        tr, te = fold != k, fold == k
        model = _fit(_meta_model(kind, len(label_names), seed, multilabel), Z[tr], y[tr])
        if multilabel:
            t = tune_thresholds(y[tr], model.predict_proba(Z[tr]), thresholds, min_labels)
            proba[te] = model.predict_proba(Z[te])
            pred[te] = decide(proba[te], t, min_labels)
        else:
            pred[te] = model.predict(Z[te])
    return _scores(y, pred, fold, label_names, proba)


def paired(a: dict, b: dict) -> dict:
    """Per-fold differences a - b of the primary score on the same folds: mean, std, folds where a is ahead."""
    d = np.array(a["fold_scores"]) - np.array(b["fold_scores"])
    return {"mean": float(d.mean()), "std": float(d.std()), "ahead": int((d > 0).sum()), "folds": len(d),
            "pooled": a["pooled"] - b["pooled"]}


def build_ensemble(grid: str | Path, top: int = 8, out: str | Path | None = None, meta: str = "mean",
                   refit_mode: str = "folds", log=print, compare: tuple[str, ...] = ("lr", "mean"),
                   overwrite: bool = False) -> tuple[StackedEnsemble | None, dict]:
    """Stack the ``top`` configurations of a grid folder; CV-score it; with ``out``, save the run.

    ``meta="lr"`` fits the linear meta-classifier; ``"mean"`` averages the members' probabilities.
    Both are scored against the best member, fold by fold; the chosen one is saved. ``refit_mode``:
    how each member is saved (see :func:`mmfuse.grid.refit`). ``compare``: the meta-classifiers scored.
    ``out`` is written beside itself and renamed into place when complete; an existing one is replaced
    only with ``overwrite``.
    """
    grid = Path(grid)
    if not (grid / "grid.json").is_file():
        raise MmfuseError(f"{grid} is not a grid folder (grid.json missing): run mmfuse grid first")
    if refit_mode not in REFITS:
        raise MmfuseError(f"unknown refit {refit_mode!r}: choose {', '.join(REFITS)}")
    info = read_json(grid / "grid.json", ("cache", "label_names", "seed"))
    rows = final_rows(grid)[:top]  # configurations scored on every split (halving: those of the last rung)
    if len(rows) < 2:
        raise MmfuseError(f"{grid} has {len(rows)} finished configuration(s): stacking needs at least 2")
    cache = Path(info["cache"])
    fc = FeatureCache(cache)
    if fc.identity != info.get("identity") or len(fc) != info.get("rows"):
        raise MmfuseError(f"{cache} no longer holds the features grid {grid} was run on (re-extracted?): "
                          "run the grid again")
    if info.get("backbones"):  # a grid over several caches: the members' backbone pairs are read from them
        cache = Backbones.from_json(info["backbones"])
        cache.check(grid)
    y = fc.labels
    folds = load_npy(grid / "folds.npy")  # (N,), or (R, N) for repeated k-fold
    fold = np.atleast_2d(folds)[0]  # the ensembles are scored on the first repeat's folds
    oofs = [load_npy(grid / "oof" / f"{r['config_id']}.npy") for r in rows]
    for r, o in zip(rows, oofs):
        if len(o) != len(y) or len(fold) != len(y):
            bad = grid / "oof" / f"{r['config_id']}.npy" if len(o) != len(y) else grid / "folds.npy"
            raise MmfuseError(f"{bad} does not match {info['cache']} ({len(y)} rows): the grid folder is damaged; "
                              "run the grid again into a new folder")
    Z = _meta_features(oofs)
    names = info["label_names"]
    multilabel = y.ndim == 2
    rule = {"thresholds": rows[0]["thresholds"], "min_labels": int(rows[0]["min_labels"])} if multilabel else {}
    # (the members' own decision rule: per-label or global thresholds, and min_labels)
    # the best member scored like the ensembles (multi-label: thresholds from the other folds' rows)
    best = {"config_id": rows[0]["config_id"], "fusion": rows[0]["fusion"],
            **(_cv("mean", oofs[0], y, fold, names, info["seed"], **rule) if multilabel
               else _scores(y, oofs[0].argmax(1), fold, names))}
    cv = {kind: _cv(kind, Z, y, fold, names, info["seed"], **rule) for kind in sorted({*compare, meta})}
    metrics = {"members": [r["config_id"] for r in rows], "folds": int(fold.max()) + 1, "meta": meta,
               "refit": refit_mode, "cv": cv[meta], "cv_other": {k: v for k, v in cv.items() if k != meta},
               "best_member": best, "vs_best_member": {k: paired(v, best) for k, v in cv.items()},
               "note": "members are chosen by these folds' scores: the ensemble's CV score is optimistic"}
    if out is None:
        return None, metrics
    with new_folder(out, "ensemble", overwrite) as tmp:
        model = _save_ensemble(tmp, grid, cache, rows, folds, Z, y, names, info, meta, refit_mode, rule, metrics, log)
    return model, metrics


def _save_ensemble(out: Path, grid: Path, cache: Path, rows, folds, Z, y, names, info, meta, refit_mode, rule,
                   metrics, log) -> StackedEnsemble:
    multilabel = y.ndim == 2
    members = []
    for r in rows:
        on = f" on {r['backbone']}" if r.get("backbone") else ""
        kind = "its fold models" if refit_mode == "folds" else "refit on all rows"
        log(f"saving member {r['config_id']} ({r['fusion']}{on}, {kind})")
        members.append(load_head(refit(cache, r, out / "members" / r["config_id"], folds, refit_mode,
                                       load_npy(grid / "oof" / f"{r['config_id']}.npy"))))
    model = _fit(_meta_model(meta, len(names), info["seed"], multilabel), Z, y)
    thresholds = (tune_thresholds(y, model.predict_proba(Z), rule["thresholds"], rule["min_labels"]).tolist()
                  if multilabel else None)
    if meta == "lr":
        save_linear(model, out / "meta.npz")
    (out / "ensemble.json").write_text(json.dumps({"members": metrics["members"], "label_names": names,
                                                   "grid": str(grid), "meta": meta, "refit": refit_mode,
                                                   "thresholds": thresholds,
                                                   "min_labels": rule.get("min_labels", 1)}, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return StackedEnsemble(members, model, names, thresholds, rule.get("min_labels", 1))


def score_tied_ensemble(out: Path, n_tied: int) -> dict | None:
    """The mean of the ``n_tied`` top configurations' out-of-fold probabilities, scored on the grid's folds
    and paired fold by fold with the top configuration (``mmfuse ensemble``'s numbers, nothing saved);
    None for fewer than two tied configurations. ``recommended``: it is ahead of the top on average and on
    most folds."""
    if n_tied < 2:
        return None
    _, m = build_ensemble(out, top=n_tied, meta="mean", compare=("mean",))
    d, metric = m["vs_best_member"]["mean"], m["cv"]["metric"]
    return {"members": n_tied, "metric": metric, "score": m["cv"][f"{metric}_mean"], "std": m["cv"][f"{metric}_std"],
            "top": m["best_member"][f"{metric}_mean"], "difference": d,
            "recommended": d["mean"] > 0 and d["ahead"] > d["folds"] / 2}


def recommend_tied(out: str | Path, n_tied: int) -> dict | None:
    """Score the tied set's mean (:func:`score_tied_ensemble`) and add the result, with the recommendation,
    to the grid's ``summary.md``."""
    out = Path(out)
    ens = score_tied_ensemble(out, n_tied)
    if ens is None:
        return None
    d = ens["difference"]
    verdict = (f"Recommended final model: `mmfuse ensemble {out} --top {ens['members']} --out runs/ens`, then "
               "`mmfuse predict runs/ens ...`." if ens["recommended"] else
               "It does not beat the top on most folds: `best/` stays the recommended model.")
    with open(out / "summary.md", "a") as f:
        f.write(f"\nThe {ens['members']} tied configurations averaged (mean of their probabilities) score "
                f"{ens['score']:.3f} ± {ens['std']:.3f} on the grid's folds against the top's {ens['top']:.3f} "
                f"(paired per fold: {d['mean']:+.3f} ± {d['std']:.3f}, ahead on {d['ahead']} of {d['folds']}; both "
                f"chosen on these folds, so optimistic). {verdict}\n")
    return ens
