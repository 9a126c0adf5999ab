"""``Head``: a scikit-learn style estimator around any registered fusion module (or logreg).

``__init__`` only stores the config; ``fit`` validates, standardises with training statistics,
trains and returns ``self``; learned state ends in ``_``; ``predict`` / ``predict_proba``;
``save`` / ``load`` a run folder.
"""
from __future__ import annotations

import copy
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import FeatureCache
from ..errors import CacheError, MmfuseError
from ..metrics import macro_f1
from .config import HeadConfig
from .registry import create_head, get_head_class, register_head

IMAGE_FEATURE = "image/pooled"


@dataclass
class FeatureSet:
    """The in-memory features a head reads: text (N, Dt), image (N, Di), labels (N,) or None."""

    text: np.ndarray
    image: np.ndarray
    y: np.ndarray | None
    guids: list[str]
    label_names: tuple[str, ...]
    provenance: dict | None = None
    source: str = ""

    @classmethod
    def from_cache(cls, cache: FeatureCache | str | Path, text_feature: str = "cls") -> "FeatureSet":
        cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        if not len(cache):
            raise CacheError(f"{cache.path} has no usable rows (all {len(cache.skipped)} were skipped)")
        y = cache.labels if cache.labelled else None
        return cls(cache.features(f"text/{text_feature}"), cache.features(IMAGE_FEATURE), y, list(cache.guids),
                   cache.label_names, cache.provenance, str(cache.path))

    def __len__(self) -> int:
        return len(self.guids)

    def subset(self, idx: np.ndarray) -> "FeatureSet":
        return FeatureSet(self.text[idx], self.image[idx], None if self.y is None else self.y[idx],
                          [self.guids[i] for i in idx], self.label_names, self.provenance, self.source)


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray | None:
    """Inverse class frequency, normalised to mean 1 over present classes (``balanced``), else None."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)


def loss_fn(cfg: HeadConfig, weight: torch.Tensor | None):
    if cfg.loss == "hinge":  # multiclass SVM (Weston-Watkins) margin loss
        return lambda logits, y: F.multi_margin_loss(logits, y, weight=weight)
    return lambda logits, y: F.cross_entropy(logits, y, weight=weight, label_smoothing=cfg.label_smoothing)


def lr_lambda(total: int, warmup: int):
    """Linear warm-up to 1, then cosine decay to 0."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return f


def autocast(cfg: HeadConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def train_module(module, Xt, Xi, y, val, cfg: HeadConfig, weight):
    """Train ``module`` on standardised tensors; early-stop on validation macro-F1; restore the best.

    ``val`` is (Xt, Xi, y) or None. Returns (history, best_epoch).
    """
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    steps = cfg.epochs * math.ceil(len(y) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, max(1, int(cfg.warmup * steps))))
    criterion = loss_fn(cfg, weight)
    history, best, best_state, best_epoch = [], -1.0, None, 0
    for epoch in range(1, cfg.epochs + 1):
        module.train()
        perm, total = torch.randperm(len(y), generator=g), 0.0
        for start in range(0, len(y), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            with autocast(cfg):  # entered per step: autocast caches its weight casts until exit
                loss = criterion(module(Xt[idx], Xi[idx]).float(), y[idx])
                aux = module.auxiliary_loss()
            if aux is not None:
                loss = loss + cfg.align_weight * aux.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        row = {"epoch": epoch, "train_loss": total / len(y), "lr": sched.get_last_lr()[0]}
        if val is not None:
            module.eval()
            with torch.no_grad(), autocast(cfg):
                logits = module(val[0], val[1]).float()
            pred = logits.argmax(1).numpy()
            row.update(val_loss=criterion(logits, val[2]).item(), val_accuracy=float((pred == val[2].numpy()).mean()),
                       val_macro_f1=macro_f1(val[2].numpy(), pred, logits.shape[1]))
            if row["val_macro_f1"] > best:
                best, best_epoch, best_state = row["val_macro_f1"], epoch, copy.deepcopy(module.state_dict())
            elif epoch - best_epoch >= cfg.patience:
                history.append(row)
                break
        history.append(row)
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history, best_epoch or len(history)


class Head:
    """Estimator over cached features. ``Head(HeadConfig(fusion="weighted")).fit(train, val)``."""

    def __init__(self, config: HeadConfig | None = None):
        self.config = config or HeadConfig()

    # --- fitting -------------------------------------------------------------------------------
    def _standardise(self, X: FeatureSet):
        t = (X.text - self.text_mean_) / self.text_std_
        i = (X.image - self.image_mean_) / self.image_std_
        return torch.from_numpy(t.astype(np.float32)), torch.from_numpy(i.astype(np.float32))

    def fit(self, train: FeatureSet, val: FeatureSet | None = None) -> "Head":
        cfg = self.config
        if train.y is None:
            raise MmfuseError(f"cannot train on {train.source or 'these features'}: it has unlabelled rows")
        if len(np.unique(train.y)) < 2:
            raise MmfuseError("training data holds fewer than two classes")
        if val is not None and val.y is None:
            raise MmfuseError(f"validation features {val.source} are unlabelled")
        self.label_names_ = tuple(train.label_names)
        self.classes_ = np.arange(len(self.label_names_))
        self.text_mean_, self.text_std_ = train.text.mean(0), train.text.std(0) + 1e-6
        self.image_mean_, self.image_std_ = train.image.mean(0), train.image.std(0) + 1e-6
        self.dims_ = {"text": train.text.shape[1], "image": train.image.shape[1]}
        self.provenance_ = train.provenance
        torch.manual_seed(cfg.seed)
        weight = class_weights(train.y, len(self.classes_), cfg.class_weight)
        cls = get_head_class(cfg.fusion)
        if getattr(cls, "kind", "module") == "sklearn":
            self.model_ = cls(cfg, weight, len(self.classes_)).fit(*self._standardise(train), train.y)
            self.history_, self.best_epoch_ = [], 0
            return self
        self.model_ = create_head(cfg.fusion, self.dims_["text"], self.dims_["image"], len(self.classes_), cfg)
        Xt, Xi = self._standardise(train)
        vt = (*self._standardise(val), torch.from_numpy(val.y)) if val is not None else None
        w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
        self.history_, self.best_epoch_ = train_module(self.model_, Xt, Xi, torch.from_numpy(train.y), vt, cfg, w)
        return self

    # --- using -----------------------------------------------------------------------------------
    def decision_function(self, X: FeatureSet, zero: str | None = None) -> np.ndarray:
        """Logits (N, C). ``zero="text"|"image"`` sets that modality's standardised features to 0
        (the training mean), the ablation of a fused head without that modality."""
        t, i = self._standardise(X)
        if zero == "text":
            t = torch.zeros_like(t)
        elif zero == "image":
            i = torch.zeros_like(i)
        elif zero is not None:
            raise MmfuseError(f"--zero must be text or image, not {zero!r}")
        if getattr(self.model_, "kind", "module") == "sklearn":
            return self.model_.decision_function(t, i)
        with torch.no_grad():
            return self.model_(t, i).numpy()

    def predict_proba(self, X: FeatureSet, zero: str | None = None) -> np.ndarray:
        """Class probabilities (N, C): softmax of the logits (for hinge: of the SVM scores)."""
        return torch.from_numpy(self.decision_function(X, zero)).softmax(1).numpy()

    def predict(self, X: FeatureSet, zero: str | None = None) -> np.ndarray:
        return self.decision_function(X, zero).argmax(1)

    def modality_weights(self) -> dict[str, float] | None:
        fn = getattr(self.model_, "modality_weights", None)
        return fn() if fn else None

    # --- persistence ---------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.to_json(folder / "config.json")
        np.savez(folder / "scaler.npz", text_mean=self.text_mean_, text_std=self.text_std_,
                 image_mean=self.image_mean_, image_std=self.image_std_)
        meta = {"label_names": list(self.label_names_), "dims": self.dims_, "best_epoch": self.best_epoch_,
                "modality_weights": self.modality_weights(), "provenance": self.provenance_}
        (folder / "head.json").write_text(json.dumps(meta, indent=2) + "\n")
        if getattr(self.model_, "kind", "module") == "sklearn":
            (folder / "model.pkl").write_bytes(pickle.dumps(self.model_))
        else:
            torch.save(self.model_.state_dict(), folder / "model.pt")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Head":
        folder = Path(folder)
        missing = [n for n in ("config.json", "head.json", "scaler.npz") if not (folder / n).is_file()]
        if not (folder / "model.pt").is_file() and not (folder / "model.pkl").is_file():
            missing.append("model.pt")
        if missing:
            raise MmfuseError(f"{folder} is not a complete head run folder ({', '.join(missing)} missing): "
                              "train it again")
        head = cls(HeadConfig.from_json(folder / "config.json"))
        meta = json.loads((folder / "head.json").read_text())
        head.label_names_ = tuple(meta["label_names"])
        head.classes_ = np.arange(len(head.label_names_))
        head.dims_, head.best_epoch_, head.provenance_ = meta["dims"], meta["best_epoch"], meta["provenance"]
        s = np.load(folder / "scaler.npz")
        head.text_mean_, head.text_std_ = s["text_mean"], s["text_std"]
        head.image_mean_, head.image_std_ = s["image_mean"], s["image_std"]
        if (folder / "model.pkl").is_file():
            head.model_ = pickle.loads((folder / "model.pkl").read_bytes())
        else:
            head.model_ = create_head(head.config.fusion, head.dims_["text"], head.dims_["image"],
                                      len(head.classes_), head.config)
            head.model_.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
            head.model_.eval()
        head.history_ = []
        return head

    def check_compatible(self, X: FeatureSet) -> None:
        """Refuse features from other backbones than the head was trained on."""
        check_compatible(self.provenance_, self.dims_, self.label_names_, X)

    def predict_cache(self, cache, zero: str | None = None) -> tuple[FeatureSet, np.ndarray]:
        """(features, probabilities) of a cache, after checking it was extracted like the training one."""
        X = FeatureSet.from_cache(cache, self.config.text_feature)
        self.check_compatible(X)
        return X, self.predict_proba(X, zero)


def check_compatible(provenance: dict | None, dims: dict, label_names, X: FeatureSet) -> None:
    """Raise CacheError when X was extracted with other models, weights, dims or labels."""
    a, b = provenance or {}, X.provenance or {}
    problems = []

    def ident(prov: dict, mod: str, key: str):
        value = prov.get(mod, {}).get(key)
        if isinstance(value, dict):  # a weights file: its content, not where it lies
            return value.get("sha256") or value.get("name")
        return value

    for mod, keys in (("text", ("model", "weights_sha256", "revision")), ("image", ("model", "weights"))):
        for k in keys:
            if ident(a, mod, k) != ident(b, mod, k):
                problems.append(f"{mod} {k}: head {ident(a, mod, k)!r} vs cache {ident(b, mod, k)!r}")
    x_dims = {"text": X.text.shape[1], "image": X.image.shape[1]}
    if x_dims != dims:
        problems.append(f"feature dims: head {dims} vs cache {x_dims}")
    if tuple(X.label_names) != tuple(label_names):
        problems.append(f"labels: head {tuple(label_names)} vs cache {tuple(X.label_names)}")
    if problems:
        raise CacheError(f"{X.source} was not extracted like the head's training features ("
                         + "; ".join(problems[:3]) + "): extract it with the same models and weights")


@register_head("logreg")
class LogRegHead:
    """scikit-learn LogisticRegression on the standardised [text; image] features."""

    kind = "sklearn"

    def __init__(self, cfg: HeadConfig, weight: np.ndarray | None, n_classes: int):
        self.cfg, self.weight, self.n_classes = cfg, weight, n_classes

    def fit(self, t: torch.Tensor, i: torch.Tensor, y: np.ndarray) -> "LogRegHead":
        from sklearn.linear_model import LogisticRegression

        cw = None if self.weight is None else {k: float(w) for k, w in enumerate(self.weight) if w > 0}
        self.model_ = LogisticRegression(C=self.cfg.C, class_weight=cw, max_iter=3000, random_state=self.cfg.seed)
        self.model_.fit(torch.cat([t, i], 1).numpy(), y)
        return self

    def decision_function(self, t: torch.Tensor, i: torch.Tensor) -> np.ndarray:
        """Log-probabilities (N, C) over all classes, so softmax gives predict_proba."""
        logp = self.model_.predict_log_proba(torch.cat([t, i], 1).numpy())
        out = np.full((len(logp), self.n_classes), -1e9, np.float32)  # classes absent in training
        out[:, self.model_.classes_] = logp
        return out
