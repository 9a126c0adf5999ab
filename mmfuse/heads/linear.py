"""Linear heads: ``logreg`` (scikit-learn LogisticRegression on the standardised [text; image] features,
its C searched by cross-validation), one-vs-rest for multi-label, and fitted linear models saved as
plain arrays (``save_linear`` / ``load_linear``, which the ensemble's stacker uses too)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..safe import corrupt, load_npz
from .config import HeadConfig
from .registry import register_head


@register_head("logreg", training="closed-form", own=("C",),
               uses=("fusion", "text_feature", "image_feature", "class_weight", "C", "seed", "thresholds",
                     "min_labels"))
class LogRegHead:
    """scikit-learn LogisticRegression on the standardised [text; image] features. Saved as plain arrays
    (``logreg.npz``), never pickled."""

    kind = "sklearn"
    task = "single"  # create_head sets "multilabel" for one-vs-rest

    def __init__(self, text_dim: int, image_dim: int, n_out: int, cfg: HeadConfig):
        self.cfg, self.n_classes, self.n_features = cfg, n_out, text_dim + image_dim

    def fit(self, t: torch.Tensor, i: torch.Tensor, y: np.ndarray, weight: np.ndarray | None) -> "LogRegHead":
        from sklearn.linear_model import LogisticRegression

        X = joined(t, i)  # (N, Dt + Di)
        if y.ndim == 2:
            self.model_ = OneVsRest(self.cfg, weight is not None).fit(X, y)
            return self
        cw = None if weight is None else {k: float(w) for k, w in enumerate(weight) if w > 0}
        C = self.cfg.C if self.cfg.C != "auto" else search_C(X, y, cw, self.cfg.seed)
        self.model_ = LogisticRegression(C=C, class_weight=cw, max_iter=3000, random_state=self.cfg.seed)
        self.model_.fit(X, y)
        return self

    def decision_function(self, t: torch.Tensor, i: torch.Tensor) -> np.ndarray:
        """Log-probabilities (N, C) over all classes, so softmax gives predict_proba; multi-label: the
        (N, L) logits of the one-vs-rest models."""
        if self.task == "multilabel":
            return self.model_.decision_function(torch.cat([t, i], 1).numpy()).astype(np.float32)
        logp = self.model_.predict_log_proba(torch.cat([t, i], 1).numpy())
        out = np.full((len(logp), self.n_classes), -1e9, np.float32)  # classes absent in training
        out[:, self.model_.classes_] = logp
        return out

    def save(self, folder: Path) -> None:
        save_linear(self.model_, folder / "logreg.npz")

    def load(self, folder: Path) -> "LogRegHead":
        path = folder / "logreg.npz"
        self.model_ = OneVsRest.load(path, self.n_features) if self.task == "multilabel" else \
            load_linear(path, self.n_features)
        c = self.model_.classes_
        if not (c.dtype.kind in "iu" and len(c) and 0 <= c.min() and c.max() < self.n_classes
                and (self.task != "multilabel" or len(c) == self.n_classes)):
            raise corrupt(path, f"its classes {c.tolist()!r:.60} do not fit head.json's {self.n_classes} labels")
        return self


def joined(t: torch.Tensor, i: torch.Tensor) -> np.ndarray:
    """[t, i] side by side, (N, Dt + Di): without a copy where they are the two column blocks of one array
    (as Head standardises a training set for a closed-form head), else concatenated."""
    n, dt, di = len(t), t.shape[1], i.shape[1]
    if (t.dim() == i.dim() == 2 and t.stride() == i.stride() == (dt + di, 1) and len(i) == n
            and t.untyped_storage().data_ptr() == i.untyped_storage().data_ptr()
            and i.storage_offset() == t.storage_offset() + dt):
        return t.as_strided((n, dt + di), (dt + di, 1)).numpy()
    return torch.cat([t, i], 1).numpy()


class OneVsRest:
    """Multi-label logreg: one balanced (or unweighted) binary LogisticRegression per label, kept as a
    (L, D) coefficient matrix; a label with a single value in training gets a constant logit."""

    def __init__(self, cfg: HeadConfig, balanced: bool):
        self.cfg, self.balanced = cfg, balanced

    def fit(self, X: np.ndarray, Y: np.ndarray) -> "OneVsRest":
        from sklearn.linear_model import LogisticRegression

        cw = "balanced" if self.balanced else None
        C = self.cfg.C if self.cfg.C != "auto" else search_C(X, Y, cw, self.cfg.seed)
        self.coef_, self.intercept_ = fit_per_label(
            lambda k: X, Y, lambda: LogisticRegression(C=C, class_weight=cw, max_iter=3000, random_state=self.cfg.seed))
        self.classes_ = np.arange(Y.shape[1])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_.T + self.intercept_  # (N, D) @ (D, L) -> (N, L)

    @classmethod
    def load(cls, path: Path, n_features: int | None = None) -> "OneVsRest":
        model = cls.__new__(cls)
        model.coef_, model.intercept_, model.classes_ = linear_arrays(path, n_features)
        return model


def fit_per_label(columns, Y: np.ndarray, make) -> tuple[np.ndarray, np.ndarray]:
    """(coef (L, d), intercept (L,)) of one binary linear model ``make()`` per label, fit on ``columns(label)``
    (N, d); a label with a single value in ``Y`` gets a constant, confident logit (+-9) instead."""
    coef, intercept = None, np.zeros(Y.shape[1])
    for k in range(Y.shape[1]):
        X, y = columns(k), Y[:, k].astype(int)
        coef = np.zeros((Y.shape[1], X.shape[1])) if coef is None else coef
        if y.min() == y.max():  # never (or always) present
            intercept[k] = 9.0 if y[0] else -9.0
            continue
        m = make().fit(X, y)
        coef[k], intercept[k] = m.coef_[0], m.intercept_[0]
    return coef, intercept


def search_C(X: np.ndarray, y: np.ndarray, class_weight, seed: int) -> float:
    """C by 3-fold stratified CV macro-F1 on (X, y), as CLIP's linear probe tunes it: powers of 10 from
    1e-6 to 1e6 two decades apart, then around the best one decade, then half a decade. Multi-label
    ``y`` (N, L): one-vs-rest models scored by micro-F1 at 0.5 on 3 iteratively stratified folds."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    scores: dict[float, float] = {}
    if y.ndim == 2:
        from sklearn.metrics import f1_score
        from sklearn.multiclass import OneVsRestClassifier

        from ..multilabel import iterative_stratification

        part = iterative_stratification(y, [1, 1, 1], seed)
        folds = [(np.flatnonzero(part != k), np.flatnonzero(part == k)) for k in range(3)]
        keep = y.min(0) != y.max(0)  # labels with both values: the others get constants anyway

        def cv_micro_f1(model) -> float:
            pred = np.zeros_like(y[:, keep])
            for tr, te in folds:
                pred[te] = OneVsRestClassifier(model).fit(X[tr], y[tr][:, keep]).predict(X[te])
            return float(f1_score(y[:, keep], pred, average="micro", zero_division=0))

    def score(log_c: float) -> float:
        if log_c not in scores:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = LogisticRegression(C=10.0 ** log_c, class_weight=class_weight, max_iter=500,
                                           random_state=seed)
                scores[log_c] = cv_micro_f1(model) if y.ndim == 2 else \
                    float(cross_val_score(model, X, y, cv=folds, scoring="f1_macro").mean())
        return scores[log_c]

    best = max(range(-6, 7, 2), key=lambda c: (score(c), -c))  # ties: the stronger penalty
    for step in (1.0, 0.5):
        best = max((best - step, best, best + step), key=lambda c: (score(c), -c))
    return float(10.0 ** best)


def save_linear(model, path: Path) -> None:
    """A fitted (binary or multinomial) LogisticRegression[CV] as plain arrays: loading it back runs no code."""
    np.savez(path, coef=model.coef_, intercept=model.intercept_, classes=model.classes_)


def load_linear(path: Path, n_features: int | None = None):
    """The LogisticRegression saved by :func:`save_linear`, ready for predict / predict_proba."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression()
    model.coef_, model.intercept_, model.classes_ = linear_arrays(path, n_features)
    model.n_features_in_ = model.coef_.shape[1]
    return model


def linear_arrays(path: Path, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coef, intercept, classes) as :func:`save_linear` wrote them, read without unpickling; arrays that
    do not fit together (or a coef not ``n_features`` wide) are a CorruptFileError naming the file."""
    a = load_npz(path, ("coef", "intercept", "classes"))
    coef, intercept, classes = a["coef"], a["intercept"], a["classes"]
    if not (coef.ndim == 2 and intercept.shape == coef.shape[:1] and classes.ndim == 1  # binary: 1 row, 2 classes
            and coef.shape[0] in (len(classes), 1 if len(classes) == 2 else -1)
            and all(x.dtype.kind == "f" and np.isfinite(x).all() for x in (coef, intercept))):
        raise corrupt(path, f"coef {coef.shape} {coef.dtype}, intercept {intercept.shape} and classes {classes.shape} "
                      "do not fit together")
    if n_features is not None and coef.shape[1] != n_features:
        raise corrupt(path, f"coef is {coef.shape[1]} features wide, head.json's dims say {n_features}")
    return coef, intercept, classes
