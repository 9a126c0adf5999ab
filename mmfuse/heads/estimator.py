"""``Head``: a scikit-learn estimator around any registered fusion module (or logreg).

Its parameters are :class:`HeadConfig`'s fields (``get_params`` / ``set_params`` / ``clone`` work);
``__init__`` only stores them; ``fit`` validates, standardises with training statistics, trains and
returns ``self``; learned state ends in ``_``; ``predict`` / ``predict_proba``; ``save`` / ``load``
a run folder. ``X`` is a :class:`FeatureSet` (which scikit-learn can index by rows, so
``cross_val_score(Head(), X, X.y)`` works) or a ``(text, image)`` pair of arrays.

The rest of a head lives beside it: ``features`` (FeatureSet, check_compatible), ``train`` (the
training loop), ``files`` (the run files read back), ``linear`` (logreg, saved linear models), ``rows`` (the
features by rows and blocks: a fit standardises its batches as it takes them, and scores a block of rows at a
time, so it holds no second copy of its features).
"""
from __future__ import annotations

import dataclasses

import inspect
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ..errors import InputError, MmfuseError
from ..multilabel import decide, tune_thresholds
from ..safe import load_state, load_tensors, reading
from . import linear  # noqa: F401  (registers logreg, which Head builds by name)
from .config import HeadConfig
from .features import FeatureSet, check_compatible, features_for
from .files import load_config, read_meta, read_scalers
from .registry import create_head
from .rows import Standardised, all_finite, blocks, fit_scaler, standardise, view_of
from .train import class_weights, train_module

# names that lived here before heads/ was split by job, still importable from here
from .features import IMAGE_FEATURE, align_labels  # noqa: F401
from .linear import (LogRegHead, OneVsRest, fit_per_label, linear_arrays, load_linear,  # noqa: F401
                     save_linear, search_C)
from .train import autocast, loss_fn, monitor_name, validation_scores, warmup_cosine  # noqa: F401

PARAMS = [f.name for f in fields(HeadConfig)]


class Head(ClassifierMixin, BaseEstimator):
    """Estimator over cached features: ``Head(fusion="weighted").fit(train, val=valid)``, or
    ``Head(HeadConfig(...))``. Its scikit-learn parameters are HeadConfig's fields."""

    def __init__(self, config: HeadConfig | None = None, **params):
        base = config or HeadConfig()
        unknown = set(params) - set(PARAMS)
        if unknown:
            raise TypeError(f"Head got unknown parameters {sorted(unknown)}; its parameters are {PARAMS}")
        for name in PARAMS:
            setattr(self, name, params.get(name, getattr(base, name)))

    @property
    def config(self) -> HeadConfig:
        """The parameters as a (validated) HeadConfig."""
        return HeadConfig(**{name: getattr(self, name) for name in PARAMS})

    # --- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _as_features(X, y=None) -> FeatureSet:
        """A FeatureSet from a FeatureSet or a (text, image) pair; ``y`` overrides its labels."""
        if isinstance(X, FeatureSet):
            fs = X
        elif isinstance(X, (tuple, list)) and len(X) == 2:
            if any(np.iscomplexobj(a) for a in X):
                raise InputError("complex features are not supported")
            text, image = (np.asarray(a, np.float32) for a in X)
            if text.ndim != 2 or image.ndim != 2 or len(text) != len(image):
                raise InputError(f"X must be (text (N, Dt), image (N, Di)), got shapes {text.shape}, {image.shape}")
            fs = FeatureSet(text, image, None, [str(i) for i in range(len(text))], ())
        else:
            raise InputError(f"X must be a FeatureSet or a (text, image) pair of arrays, not {type(X).__name__}")
        if y is not None:
            y = np.asarray(y)
            y = y if y.ndim == 2 and y.shape[1] > 1 else column_or_1d(y, warn=True)  # (N, 1): a column
            if len(y) != len(fs):
                raise InputError(f"X has {len(fs)} rows but y has {len(y)} labels")
            fs = dataclasses.replace(fs, y=y)
        for name, a in (("text", fs.text), ("image", fs.image)):
            if not all_finite(a):
                raise InputError(f"{fs.source or 'X'}: {name} features hold NaN or infinite values")
        return fs

    # --- fitting -------------------------------------------------------------------------------
    def _standardise(self, X: FeatureSet, rows: slice = slice(None), joined: bool = False):
        """(text (n, Dt), image (n, Di)) float32 tensors of X's ``rows``, standardised by the training
        statistics; ``joined``: column views of one (n, Dt + Di) array, which logreg fits on as it is."""
        check_is_fitted(self, "model_")
        dims = {"text": X.text.shape[1], "image": X.image.shape[1]}
        if dims != self.dims_:
            raise InputError(f"X has {sum(dims.values())} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input (text, image: {dims} vs {self.dims_}"
                             f"{', ' + X.source if X.source else ''})")
        text, image = view_of(X.text, rows), view_of(X.image, rows)  # no copies: standardise reads them by blocks
        if getattr(self.model_, "raw_features", False):  # zeroshot: cosines of the embeddings as extracted
            return torch.from_numpy(np.array(text, np.float32)), torch.from_numpy(np.array(image, np.float32))
        if not joined:
            return (torch.from_numpy(standardise(text, self.text_scaler_)),  # (n, Dt), (n, Di)
                    torch.from_numpy(standardise(image, self.image_scaler_)))
        both = np.empty((len(text), dims["text"] + dims["image"]), np.float32)  # (n, Dt + Di)
        standardise(text, self.text_scaler_, both[:, :dims["text"]])
        standardise(image, self.image_scaler_, both[:, dims["text"]:])
        both = torch.from_numpy(both)
        return both[:, :dims["text"]], both[:, dims["text"]:]

    def _encode(self, fs: FeatureSet) -> np.ndarray:
        """Labels as class indices 0..C-1 (a FeatureSet's are already; other labels are mapped); multi-label:
        the (N, L) multi-hot rows as float32."""
        if self.multilabel_:
            if fs.y.ndim != 2 or fs.y.shape[1] != len(self.classes_):
                raise InputError(f"{fs.source or 'validation labels'}: expected (N, {len(self.classes_)}) "
                                 f"multi-hot labels, got shape {fs.y.shape}")
            return fs.y.astype(np.float32)
        if fs.y.ndim != 1:
            raise InputError(f"{fs.source or 'validation labels'} are multi-label, the training labels are not")
        if fs.label_names:
            return fs.y.astype(np.int64)
        index = {c: k for k, c in enumerate(self.classes_)}
        unknown = set(np.unique(fs.y)) - set(index)
        if unknown:
            raise InputError(f"validation labels {sorted(unknown)} are not among the training classes")
        return np.array([index[v] for v in fs.y], np.int64)

    def fit(self, X, y=None, *, val=None, schedule: tuple[int, int] | None = None) -> "Head":
        """Fit on ``X`` (labels from ``y`` or the FeatureSet); early-stop on ``val`` when given.
        ``schedule``: (steps of the cosine schedule, step to stop at), see :func:`train_module`."""
        cfg = self.config
        train = self._as_features(X, y)
        if train.y is None:
            raise InputError(f"cannot train on {train.source}: it has unlabelled rows" if train.source else
                             "Head requires y to be passed, but the target y is None")
        if not train.text.shape[1] or not train.image.shape[1]:
            raise InputError(f"a head needs at least 1 feature(s) per modality, got {train.text.shape[1]} text "
                             f"and {train.image.shape[1]} image")
        check_classification_targets(train.y)
        self.multilabel_ = train.y.ndim == 2
        if self.multilabel_:
            if (train.y < 0).any() or not np.isin(train.y, (0, 1)).all():
                raise InputError(f"{train.source or 'y'}: multi-label targets must be 0/1 (unlabelled rows?)")
            if cfg.loss == "hinge":
                raise InputError("loss hinge is single-label only: multi-label heads use BCE (--loss ce)")
            if train.y.shape[1] < 2:
                raise InputError(f"{train.source or 'y'}: a multi-label head needs at least 2 labels")
            self.label_names_ = tuple(train.label_names) or tuple(str(k) for k in range(train.y.shape[1]))
            self.classes_ = np.arange(train.y.shape[1])
        elif len(np.unique(train.y)) < 2:
            raise InputError(f"training data holds {len(np.unique(train.y))} class: need at least two")
        elif train.label_names:
            self.label_names_ = tuple(train.label_names)
            self.classes_ = np.arange(len(self.label_names_))
        else:
            self.classes_ = np.unique(train.y)
            self.label_names_ = tuple(str(c) for c in self.classes_)
        y_idx = self._encode(train)
        valid = None if val is None else self._as_features(val)
        if valid is not None and valid.y is None:
            raise MmfuseError(f"validation features {valid.source} are unlabelled")
        self.text_scaler_ = fit_scaler(train.text)  # StandardScaler's numbers, a block of columns at a time
        self.image_scaler_ = fit_scaler(train.image)
        self.dims_ = {"text": train.text.shape[1], "image": train.image.shape[1]}
        self.n_features_in_ = sum(self.dims_.values())
        self.provenance_ = train.provenance
        self.text_feature_ = train.text_feature  # the resolved text vector (cfg may say auto)
        self.image_feature_ = train.image_feature  # the resolved image vector
        weight = class_weights(y_idx, len(self.classes_), cfg.class_weight)
        self.thresholds_ = np.full(len(self.classes_), 0.5) if self.multilabel_ else None
        # nn.Module init and dropout draw from torch's global generator: seed it inside fork_rng, so the
        # fit is reproducible and the caller's random state is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model_ = create_head(cfg.fusion, self.dims_["text"], self.dims_["image"], len(self.classes_), cfg,
                                      "multilabel" if self.multilabel_ else "single")
            if getattr(self.model_, "kind", "module") == "sklearn":
                extra = {"prompts": train.prompts} if getattr(self.model_, "raw_features", False) else {}
                self.model_.fit(*self._standardise(train, joined=True), y_idx, weight, **extra)
                self.history_, self.best_epoch_ = [], 0
            else:
                vt = None if valid is None else (*self._standardise(valid), torch.from_numpy(self._encode(valid)))
                w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
                batches = Standardised(train.text, self.text_scaler_), Standardised(train.image, self.image_scaler_)
                self.history_, self.best_epoch_ = train_module(self.model_, *batches, torch.from_numpy(y_idx), vt,
                                                               cfg, w, schedule)
        if self.multilabel_ and valid is not None:  # the decision rule, from the validation rows
            self.thresholds_ = tune_thresholds(self._encode(valid), self.predict_proba(valid), cfg.thresholds,
                                               cfg.min_labels)
        return self

    # --- using -----------------------------------------------------------------------------------
    def logits(self, X, zero: str | None = None) -> np.ndarray:
        """Logits (N, C), a block of rows at a time (:func:`mmfuse.heads.rows.blocks`). ``zero="text"|"image"``
        sets that modality's standardised features to 0 (the training mean), the ablation of a fused head
        without that modality."""
        if zero not in (None, "text", "image"):
            raise MmfuseError(f"--zero must be text or image, not {zero!r}")
        X = self._as_features(X)
        return np.concatenate([self._logits(X, slice(lo, hi), zero) for lo, hi in blocks(len(X))])

    def _logits(self, X: FeatureSet, rows: slice, zero: str | None) -> np.ndarray:
        t, i = self._standardise(X, rows)
        if zero == "text":
            t = torch.zeros_like(t)
        elif zero == "image":
            i = torch.zeros_like(i)
        if getattr(self.model_, "kind", "module") == "sklearn":
            return self.model_.decision_function(t, i)
        with torch.no_grad():
            return self.model_(t, i).logits.numpy()  # (n, C)

    def decision_function(self, X) -> np.ndarray:
        """scikit-learn's convention: (N, C) logits, or (N,) for two classes (logit of class 1 - class 0);
        multi-label: (N, L) logits."""
        z = self.logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 and not self.multilabel_ else z

    def predict_proba(self, X, zero: str | None = None) -> np.ndarray:
        """Class probabilities (N, C): the softmax of the logits. With ``loss="hinge"`` that is a
        softmax of the SVM margins: it ranks the classes but is not a calibrated probability.
        Multi-label: (N, L) per-label sigmoid probabilities."""
        z = torch.from_numpy(self.logits(X, zero))
        return (z.sigmoid() if self.multilabel_ else z.softmax(1)).numpy()

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Predictions from probabilities: class indices (argmax), or multi-label (N, L) 0/1 by the tuned
        thresholds (and ``min_labels``)."""
        return decide(proba, self.thresholds_, self.config.min_labels)

    def predict(self, X, zero: str | None = None) -> np.ndarray:
        check_is_fitted(self, "model_")
        if self.multilabel_:
            return self.decide(self.predict_proba(X, zero))
        scores = self.logits(X, zero)
        return self.classes_[scores.argmax(1)]

    def modality_weights(self) -> dict[str, float] | None:
        fn = getattr(self.model_, "modality_weights", None)
        return fn() if fn else None

    # --- persistence ---------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.to_json(folder / "config.json")
        np.savez(folder / "scaler.npz", text_mean=self.text_scaler_.mean_, text_std=self.text_scaler_.scale_,
                 image_mean=self.image_scaler_.mean_, image_std=self.image_scaler_.scale_)
        meta = {"label_names": list(self.label_names_), "classes": np.asarray(self.classes_).tolist(),
                "dims": self.dims_, "best_epoch": self.best_epoch_, "text_feature": self.text_feature_,
                "image_feature": self.image_feature_,
                "modality_weights": self.modality_weights(), "provenance": self.provenance_,
                "multilabel": self.multilabel_,
                "thresholds": None if self.thresholds_ is None else [float(t) for t in self.thresholds_]}
        (folder / "head.json").write_text(json.dumps(meta, indent=2) + "\n")
        if getattr(self.model_, "kind", "module") == "sklearn":
            self.model_.save(folder)
        else:
            torch.save(self.model_.state_dict(), folder / "model.pt")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Head":
        """A saved run folder; a damaged or inconsistent file is one CorruptFileError naming it."""
        folder = Path(folder)
        missing = [n for n in ("config.json", "head.json", "scaler.npz") if not (folder / n).is_file()]
        if not any((folder / n).is_file() for n in ("model.pt", "logreg.npz", "zeroshot.npz")):
            missing.append("model.pt")
        if missing:
            raise MmfuseError(f"{folder} is not a complete head run folder ({', '.join(missing)} missing): "
                              "train it again")
        head = cls(load_config(folder / "config.json"))
        meta = read_meta(folder / "head.json")
        head.label_names_ = tuple(meta["label_names"])
        head.classes_ = np.array(meta.get("classes", list(range(len(head.label_names_)))))
        head.dims_, head.best_epoch_, head.provenance_ = meta["dims"], meta["best_epoch"], meta["provenance"]
        head.n_features_in_ = sum(head.dims_.values())
        head.text_feature_ = meta.get("text_feature") or head.config.text_feature
        # a head.json from before image_feature existed: its head read image/pooled, the only image vector then
        head.image_feature_ = meta.get("image_feature", "pooled") or head.config.image_feature
        head.multilabel_ = bool(meta.get("multilabel", False))
        head.thresholds_ = None if meta.get("thresholds") is None else np.array(meta["thresholds"])
        head.text_scaler_, head.image_scaler_ = read_scalers(folder / "scaler.npz", head.dims_, folder / "head.json")
        with reading(folder / "config.json"):  # e.g. a hidden size the fusion refuses
            head.model_ = create_head(head.config.fusion, head.dims_["text"], head.dims_["image"],
                                      len(head.classes_), head.config, "multilabel" if head.multilabel_ else "single")
        if getattr(head.model_, "kind", "module") == "sklearn":
            head.model_.load(folder)
        else:
            load_state(head.model_, load_tensors(folder / "model.pt"), folder / "model.pt")
            head.model_.eval()
        head.history_ = []
        return head

    def check_compatible(self, X: FeatureSet) -> FeatureSet:
        """Refuse features extracted otherwise than the head's training features; return X with its labels
        in the head's order (a cache naming a subset of the head's labels is mapped by name)."""
        return check_compatible(self.provenance_, self.dims_, self.label_names_, X, subset=True)

    def predict_cache(self, cache, zero: str | None = None) -> tuple[FeatureSet, np.ndarray]:
        """(features, probabilities) of a cache, after checking it was extracted like the training one.
        ``cache``: one cache, or several of the same rows, each modality read from the one extracted like
        the head's (a head trained on text from one cache and images from another needs both)."""
        X = self.check_compatible(features_for(cache, self.provenance_, self.text_feature_ or self.config.text_feature,
                                               self.image_feature_ or self.config.image_feature))
        return X, self.predict_proba(X, zero)


# the signature scikit-learn reads (get_params, clone, repr): HeadConfig's fields with their defaults;
# Head(config) is a shorthand that copies a HeadConfig's fields
Head.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in fields(HeadConfig)])

