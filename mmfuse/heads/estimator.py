"""``Head``: a scikit-learn estimator around any registered fusion module (or logreg).

Its parameters are :class:`HeadConfig`'s fields (``get_params`` / ``set_params`` / ``clone`` work);
``__init__`` only stores them; ``fit`` validates, standardises with training statistics, trains and
returns ``self``; learned state ends in ``_``; ``predict`` / ``predict_proba``; ``save`` / ``load``
a run folder. ``X`` is a :class:`FeatureSet` (which scikit-learn can index by rows, so
``cross_val_score(Head(), X, X.y)`` works) or a ``(text, image)`` pair of arrays.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ..cache import FeatureCache, feature_mismatch
from ..errors import CacheError, InputError, MmfuseError
from ..metrics import macro_f1
from ..multilabel import decide, tune_thresholds
from ..safe import CorruptFileError, corrupt, load_npz, load_state, load_tensors, read_json, reading
from .config import TEXT_FEATURES, HeadConfig
from .registry import create_head, register_head

IMAGE_FEATURE = "image/pooled"


@dataclass
class FeatureSet:
    """The in-memory features a head reads: text (N, Dt), image (N, Di), labels (N,) or None.

    Row-indexable like an array (``shape``, ``X[rows]``), so scikit-learn's splitters and
    ``cross_val_score`` / ``GridSearchCV`` can pass subsets of it to a :class:`Head`.
    """

    text: np.ndarray
    image: np.ndarray
    y: np.ndarray | None
    guids: list[str]
    label_names: tuple[str, ...]
    provenance: dict | None = None
    source: str = ""
    text_feature: str = ""  # which text vector ("cls" or "mean"; ``auto`` resolved)

    @classmethod
    def from_cache(cls, cache: FeatureCache | str | Path, text_feature: str = "auto") -> "FeatureSet":
        from ..extract.text import resolve_text_feature

        cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        if not len(cache):
            raise CacheError(f"{cache.path} has no usable rows (all {len(cache.skipped)} were skipped)")
        y = cache.labels if cache.labelled else None
        name = resolve_text_feature(text_feature, cache.provenance.get("text", {}))
        return cls(cache.features(f"text/{name}"), cache.features(IMAGE_FEATURE), y, list(cache.guids),
                   cache.label_names, cache.provenance, str(cache.path), name)

    def __len__(self) -> int:
        return len(self.guids)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.guids), self.text.shape[1] + self.image.shape[1]

    def __getitem__(self, rows) -> "FeatureSet":
        if isinstance(rows, tuple):  # scikit-learn indexes rows as X[rows, ...]
            rows = rows[0]
        idx = np.arange(len(self))[rows]
        return self.subset(np.atleast_1d(idx))

    def subset(self, idx: np.ndarray) -> "FeatureSet":
        return FeatureSet(self.text[idx], self.image[idx], None if self.y is None else self.y[idx],
                          [self.guids[i] for i in idx], self.label_names, self.provenance, self.source,
                          self.text_feature)


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray | None:
    """scikit-learn's ``balanced`` weights (n_rows / (n_present_classes * class count)) for the classes
    present in ``y``; 0 for a class absent from it. Multi-label ``y`` (N, L): BCE's ``pos_weight``,
    negatives / positives per label (1 for a label without positives). ``none``: None."""
    if mode == "none":
        return None
    if y.ndim == 2:
        pos = y.sum(0).astype(float)
        return np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1), 1.0)
    present = np.unique(y)
    w = np.zeros(n_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=y)
    return w


def loss_fn(cfg: HeadConfig, weight: torch.Tensor | None, multilabel: bool = False):
    if multilabel:  # one sigmoid per label; weight is pos_weight; smoothing pulls targets towards 0.5
        s = cfg.label_smoothing
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y * (1 - s) + s / 2, pos_weight=weight)
    if cfg.loss == "hinge":  # multiclass SVM (Weston-Watkins) margin loss
        return lambda logits, y: F.multi_margin_loss(logits, y, weight=weight)
    return lambda logits, y: F.cross_entropy(logits, y, weight=weight, label_smoothing=cfg.label_smoothing)


def warmup_cosine(opt, total: int, warmup: int):
    """Linear warm-up to the peak learning rate over ``warmup`` steps, then cosine decay to 0."""
    S = torch.optim.lr_scheduler
    return S.SequentialLR(opt, [S.LinearLR(opt, 1 / warmup, 1.0, warmup - 1),
                                S.CosineAnnealingLR(opt, max(1, total - warmup), 0.0)], [warmup])


def autocast(cfg: HeadConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def monitor_name(cfg: HeadConfig, multilabel: bool) -> str:
    """The validation score early stopping follows (``auto``: micro-F1 multi-label, macro-F1 single-label)."""
    name = cfg.monitor if cfg.monitor != "auto" else ("micro_f1" if multilabel else "macro_f1")
    if not multilabel and name != "macro_f1":
        raise MmfuseError(f"--monitor {name} is a multi-label score: single-label heads monitor macro_f1")
    return name


def validation_scores(logits: torch.Tensor, y: torch.Tensor, cfg: HeadConfig) -> dict[str, float]:
    """Scores of validation logits: accuracy and macro-F1 (single-label); multi-label: micro-, macro- and
    samples-F1 at threshold 0.5 (thresholds are tuned once training ends) and mean average precision."""
    if y.ndim == 1:
        pred = logits.argmax(1).numpy()
        return {"val_accuracy": float((pred == y.numpy()).mean()),
                "val_macro_f1": macro_f1(y.numpy(), pred, logits.shape[1])}
    from ..metrics import multilabel_metrics

    proba = logits.sigmoid().numpy()
    m = multilabel_metrics(y.numpy(), decide(proba, 0.5, cfg.min_labels), range(y.shape[1]), proba)
    return {f"val_{k}": m[k] for k in ("micro_f1", "macro_f1", "samples_f1", "map")}


def train_module(module, Xt, Xi, y, val, cfg: HeadConfig, weight, schedule: tuple[int, int] | None = None):
    """Train ``module`` on standardised tensors; early-stop on the validation score (cfg.monitor); restore
    the best. ``y``: (N,) class indices, or (N, L) float multi-hot (multi-label: BCE).

    ``val`` is (Xt, Xi, y) or None. ``schedule`` = (steps of the cosine schedule, step to stop at)
    replaces cfg.epochs' (a refit repeating a CV fit's schedule on more rows). Returns (history, best_epoch).
    """
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    per_epoch = math.ceil(len(y) / cfg.batch_size)
    total, stop = schedule or (cfg.epochs * per_epoch,) * 2
    sched = warmup_cosine(opt, total, max(1, int(cfg.warmup * total)))
    multilabel = y.ndim == 2
    criterion = loss_fn(cfg, weight, multilabel)
    monitor = "val_" + monitor_name(cfg, multilabel)
    shadow = copy.deepcopy(module) if cfg.ema else module  # what validation scores and the fit keeps
    averaged, trained = list(shadow.parameters()), list(module.parameters())  # the same tensors every step
    history, best, best_state, best_epoch, step = [], -1.0, None, 0, 0
    for epoch in range(1, math.ceil(stop / per_epoch) + 1):
        module.train()
        perm, loss_sum, seen = torch.randperm(len(y), generator=g), 0.0, 0
        for idx in perm[:(stop - step) * cfg.batch_size].split(cfg.batch_size):
            with autocast(cfg):  # entered per step: autocast caches its weight casts until exit
                out = module(Xt[idx], Xi[idx])
                loss = criterion(out.logits.float(), y[idx])
            if out.aux is not None:
                loss = loss + cfg.align_weight * out.aux.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip)
            opt.step()
            sched.step()
            if cfg.ema:  # the plain mean of the weights so far until 1 / (1 - ema) steps, then the moving average
                with torch.no_grad():
                    torch._foreach_lerp_(averaged, trained, 1 - min(cfg.ema, step / (step + 1)))
            step, loss_sum, seen = step + 1, loss_sum + loss.item() * len(idx), seen + len(idx)
        row = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "lr": sched.get_last_lr()[0]}
        if val is not None:
            shadow.eval()
            with torch.no_grad(), autocast(cfg):
                logits = shadow(val[0], val[1]).logits.float()
            row.update(val_loss=criterion(logits, val[2]).item(), **validation_scores(logits, val[2], cfg))
            if row[monitor] > best:
                best, best_epoch, best_state = row[monitor], epoch, copy.deepcopy(shadow.state_dict())
            elif epoch - best_epoch >= cfg.patience:
                history.append(row)
                break
        history.append(row)
    if best_state is None and cfg.ema:
        best_state = shadow.state_dict()  # no validation rows: the average of the weights at the end
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history, best_epoch or len(history)


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
            fs = FeatureSet(fs.text, fs.image, y, fs.guids, fs.label_names, fs.provenance, fs.source, fs.text_feature)
        for name, a in (("text", fs.text), ("image", fs.image)):
            if not np.all(np.isfinite(a)):
                raise InputError(f"{fs.source or 'X'}: {name} features hold NaN or infinite values")
        return fs

    # --- fitting -------------------------------------------------------------------------------
    def _standardise(self, X: FeatureSet):
        check_is_fitted(self, "model_")
        dims = {"text": X.text.shape[1], "image": X.image.shape[1]}
        if dims != self.dims_:
            raise InputError(f"X has {sum(dims.values())} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input (text, image: {dims} vs {self.dims_}"
                             f"{', ' + X.source if X.source else ''})")
        t = self.text_scaler_.transform(X.text).astype(np.float32)
        i = self.image_scaler_.transform(X.image).astype(np.float32)
        return torch.from_numpy(t), torch.from_numpy(i)

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
        self.text_scaler_ = StandardScaler().fit(train.text)
        self.image_scaler_ = StandardScaler().fit(train.image)
        self.dims_ = {"text": train.text.shape[1], "image": train.image.shape[1]}
        self.n_features_in_ = sum(self.dims_.values())
        self.provenance_ = train.provenance
        self.text_feature_ = train.text_feature  # the resolved text vector (cfg may say auto)
        weight = class_weights(y_idx, len(self.classes_), cfg.class_weight)
        self.thresholds_ = np.full(len(self.classes_), 0.5) if self.multilabel_ else None
        # nn.Module init and dropout draw from torch's global generator: seed it inside fork_rng, so the
        # fit is reproducible and the caller's random state is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model_ = create_head(cfg.fusion, self.dims_["text"], self.dims_["image"], len(self.classes_), cfg,
                                      "multilabel" if self.multilabel_ else "single")
            if getattr(self.model_, "kind", "module") == "sklearn":
                self.model_.fit(*self._standardise(train), y_idx, weight)
                self.history_, self.best_epoch_ = [], 0
            else:
                vt = None if valid is None else (*self._standardise(valid), torch.from_numpy(self._encode(valid)))
                w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
                self.history_, self.best_epoch_ = train_module(self.model_, *self._standardise(train),
                                                               torch.from_numpy(y_idx), vt, cfg, w, schedule)
        if self.multilabel_ and valid is not None:  # the decision rule, from the validation rows
            self.thresholds_ = tune_thresholds(self._encode(valid), self.predict_proba(valid), cfg.thresholds,
                                               cfg.min_labels)
        return self

    # --- using -----------------------------------------------------------------------------------
    def logits(self, X, zero: str | None = None) -> np.ndarray:
        """Logits (N, C). ``zero="text"|"image"`` sets that modality's standardised features to 0
        (the training mean), the ablation of a fused head without that modality."""
        t, i = self._standardise(self._as_features(X))
        if zero == "text":
            t = torch.zeros_like(t)
        elif zero == "image":
            i = torch.zeros_like(i)
        elif zero is not None:
            raise MmfuseError(f"--zero must be text or image, not {zero!r}")
        if getattr(self.model_, "kind", "module") == "sklearn":
            return self.model_.decision_function(t, i)
        with torch.no_grad():
            return self.model_(t, i).logits.numpy()

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
        if not (folder / "model.pt").is_file() and not (folder / "logreg.npz").is_file():
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
        """(features, probabilities) of a cache, after checking it was extracted like the training one."""
        X = self.check_compatible(FeatureSet.from_cache(cache, self.text_feature_ or self.config.text_feature))
        return X, self.predict_proba(X, zero)


# the signature scikit-learn reads (get_params, clone, repr): HeadConfig's fields with their defaults;
# Head(config) is a shorthand that copies a HeadConfig's fields
Head.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in fields(HeadConfig)])


def _scaler(mean: np.ndarray, scale: np.ndarray) -> StandardScaler:
    s = StandardScaler()
    s.mean_, s.scale_, s.var_ = mean, scale, scale ** 2
    s.n_features_in_, s.n_samples_seen_ = len(mean), 0
    return s


def load_config(path: Path) -> HeadConfig:
    """config.json as a HeadConfig; damaged, or a value of the wrong type: one CorruptFileError naming it."""
    data = read_json(path)  # HeadConfig.from_json would raise JSONDecodeError / AttributeError
    for f in fields(HeadConfig):  # HeadConfig checks values, not types (an int may stand for a float; C is checked)
        v, d = data.get(f.name, f.default), f.default
        if type(v) is not type(d) and not (type(d) is float and type(v) is int) and f.name != "C":
            raise corrupt(path, f"{f.name} is {v!r:.60}, expected {type(d).__name__}")
    try:
        with reading(path):
            return HeadConfig.from_json(path)
    except CorruptFileError:
        raise
    except MmfuseError as e:  # a value HeadConfig refuses (fusion 'foo')
        raise corrupt(path, str(e)) from None


def read_meta(path: Path) -> dict:
    """head.json, its fields checked for type and length (else one CorruptFileError naming it)."""
    m = read_json(path, required=("label_names", "dims", "best_epoch", "provenance"))
    names, dims, thr = m["label_names"], m["dims"], m.get("thresholds")
    n = len(names) if isinstance(names, list) else -1
    expect = {  # field: (valid, what it must be); each test guards what the next one reads
        "label_names": (n > 0 and all(isinstance(x, str) for x in names), "a list of label names"),
        "dims": (isinstance(dims, dict) and all(type(dims.get(k)) is int and dims[k] > 0 for k in ("text", "image")),
                 "{'text': N, 'image': N}"),
        "classes": (isinstance(m.get("classes", names), list) and len(m.get("classes", names)) == n, f"{n} classes"),
        "thresholds": (thr is None or isinstance(thr, list) and len(thr) == n
                       and all(type(t) in (int, float) for t in thr), f"{n} numbers"),
        "best_epoch": (type(m["best_epoch"]) is int, "a whole number"),
        "provenance": (isinstance(m["provenance"], (dict, type(None))), "an object"),
        "text_feature": (m.get("text_feature") in (None, "", *TEXT_FEATURES), " or ".join(TEXT_FEATURES)),
    }
    for name, (ok, what) in expect.items():
        if not ok:
            raise corrupt(path, f"{name} is {m.get(name)!r:.60}, not {what}")
    return m


def read_scalers(path: Path, dims: dict, meta_path: Path) -> tuple[StandardScaler, StandardScaler]:
    """The text and image scalers of scaler.npz, checked against head.json's dims."""
    s = load_npz(path, ("text_mean", "text_std", "image_mean", "image_std"))
    for k, a in s.items():
        if a.shape != (dims[k.split("_")[0]],):
            raise CorruptFileError(f"{meta_path} and {path} do not match: head.json's dims say {dims['text']} text and "
                                   f"{dims['image']} image features, scaler.npz's {k} has shape {a.shape}; one of "
                                   "them was edited or comes from another run: train the run again")
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            raise corrupt(path, f"{k} holds {'NaN or infinite values' if a.dtype.kind == 'f' else a.dtype}")
    return _scaler(s["text_mean"], s["text_std"]), _scaler(s["image_mean"], s["image_std"])


def _few(names, k: int = 6) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def check_compatible(provenance: dict | None, dims: dict, label_names, X: FeatureSet,
                     subset: bool = False) -> FeatureSet:
    """Raise CacheError naming the field where X's feature identity differs from the training cache's
    (models, weights, pooling, max length, preprocessing, precision, store dtype, library versions),
    or its dims or labels differ. Returns X with its labels in ``label_names``' order; with ``subset``, a
    cache naming only some of them (a test split without a rare label) is mapped by name."""
    problems = feature_mismatch(provenance or {}, X.provenance or {})
    x_dims = {"text": X.text.shape[1], "image": X.image.shape[1]}
    if x_dims != dims:
        problems.append(f"feature dims: {dims} vs {x_dims}")
    names, own = tuple(label_names), tuple(X.label_names)
    unknown, missing = [x for x in own if x not in names], [x for x in names if x not in own]
    bad_labels = bool(own) and own != names and bool(unknown or not subset)  # an unlabelled CSV may name none
    if bad_labels:
        detail = ([f"{_few(unknown)} unknown to the head"] if unknown else []) + \
                 ([f"{_few(missing)} missing from the cache"] if missing and not subset else [])
        problems.insert(0, "labels: " + (", ".join(detail) or "the same names in another order"))
    if problems:
        fix = f" and --label-names {','.join(names)} (the training set's label names)" if bad_labels else ""
        raise CacheError(f"{X.source} was not extracted like the head's training features (head vs cache: "
                         + "; ".join(problems[:3]) + f"): extract it with the same options{fix}")
    return align_labels(X, names) if own else X


def align_labels(X: FeatureSet, label_names) -> FeatureSet:
    """X with its labels mapped by name into ``label_names``' order: a label the cache lacks is an
    all-negative column (multi-label), a class no row has (single-label); unlabelled rows stay -1."""
    names = tuple(label_names)
    if tuple(X.label_names) == names or not X.label_names:
        return X
    idx, y = np.array([names.index(x) for x in X.label_names]), X.y
    if y is not None and y.ndim == 2:
        y = np.zeros((len(X.y), len(names)), X.y.dtype)
        y[:, idx] = X.y
        y[(X.y < 0).any(1)] = -1
    elif y is not None:
        y = np.where(y >= 0, idx[np.maximum(y, 0)], y)
    return dataclasses.replace(X, y=y, label_names=names)


@register_head("logreg", training="closed-form", own=("C",),
               uses=("fusion", "text_feature", "class_weight", "C", "seed", "thresholds", "min_labels"))
class LogRegHead:
    """scikit-learn LogisticRegression on the standardised [text; image] features. Saved as plain arrays
    (``logreg.npz``), never pickled."""

    kind = "sklearn"
    task = "single"  # create_head sets "multilabel" for one-vs-rest

    def __init__(self, text_dim: int, image_dim: int, n_out: int, cfg: HeadConfig):
        self.cfg, self.n_classes, self.n_features = cfg, n_out, text_dim + image_dim

    def fit(self, t: torch.Tensor, i: torch.Tensor, y: np.ndarray, weight: np.ndarray | None) -> "LogRegHead":
        from sklearn.linear_model import LogisticRegression

        X = torch.cat([t, i], 1).numpy()
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
