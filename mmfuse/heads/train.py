"""The training loop of a fusion module on cached features (:func:`train_module`), and what it uses:
the loss, class weights, the warm-up + cosine schedule, bf16 autocast, the weight average (EMA) and
the validation scores that early stopping follows. ``mmfuse.finetune`` reuses the loss, weights and
schedule."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from ..errors import MmfuseError
from ..metrics import macro_f1
from ..multilabel import decide
from ..precision import autocast as precision_autocast
from .config import HeadConfig


def train_module(module, Xt, Xi, y, val, cfg: HeadConfig, weight, schedule: tuple[int, int] | None = None):
    """Train ``module`` on standardised features Xt (N, Dt), Xi (N, Di): tensors, or sources whose ``[idx]`` is
    a batch's tensor (:class:`mmfuse.heads.rows.Standardised`: rows standardised as they are taken, no copy of
    the set); early-stop on the validation score (cfg.monitor); restore the best. ``y``: (N,) class indices,
    or (N, L) float multi-hot (multi-label: BCE).

    ``val`` is (Xt, Xi, y) or None. ``schedule`` = (steps of the cosine schedule, step to stop at)
    replaces cfg.epochs' (a refit repeating a CV fit's schedule on more rows). Returns (history, best_epoch).
    """
    g = torch.Generator().manual_seed(cfg.seed)  # the batch order (dropout draws from torch's global one)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    per_epoch = math.ceil(len(y) / cfg.batch_size)
    total, stop = schedule or (cfg.epochs * per_epoch,) * 2
    sched = warmup_cosine(opt, total, max(1, int(cfg.warmup * total)))
    multilabel = y.ndim == 2
    criterion = loss_fn(cfg, weight, multilabel)
    monitor = "val_" + monitor_name(cfg, multilabel)
    ema = EMA(module, cfg.ema)  # ema.model: what validation scores and the fit keeps
    history, best, best_state, best_epoch, step = [], -1.0, None, 0, 0
    for epoch in range(1, math.ceil(stop / per_epoch) + 1):
        module.train()
        perm, loss_sum, seen = torch.randperm(len(y), generator=g), 0.0, 0  # (N,)
        for idx in perm[:(stop - step) * cfg.batch_size].split(cfg.batch_size):  # (B,) rows; none past stop
            with autocast(cfg):  # entered per step: autocast caches its weight casts until exit
                out = module(Xt[idx], Xi[idx])  # (B, Dt), (B, Di) -> logits (B, C)
                loss = criterion(out.logits.float(), y[idx])
            if out.aux is not None:
                loss = loss + cfg.align_weight * out.aux.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip)
            opt.step()
            sched.step()
            ema.update(step)
            step, loss_sum, seen = step + 1, loss_sum + loss.item() * len(idx), seen + len(idx)
        row = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "lr": sched.get_last_lr()[0]}
        if val is not None:
            row.update(evaluate(ema.model, val, criterion, cfg))
        history.append(row)
        if val is not None and row[monitor] > best:
            best, best_epoch, best_state = row[monitor], epoch, copy.deepcopy(ema.model.state_dict())
        elif val is not None and epoch - best_epoch >= cfg.patience:
            break
    if best_state is None and cfg.ema:
        best_state = ema.model.state_dict()  # no validation rows: the average of the weights at the end
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history, best_epoch or len(history)


class EMA:
    """The weights a fit keeps: with ``decay`` > 0, a copy of ``module`` holding the moving average of
    its weights (updated after every step); else ``module`` itself."""

    def __init__(self, module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(module) if decay else module
        # listed once: a module's parameters are the same tensors at every step
        self._averaged, self._trained = list(self.model.parameters()), list(module.parameters())

    def update(self, step: int) -> None:
        """The plain mean of the weights so far until 1 / (1 - decay) steps, then the moving average."""
        if self.decay:
            with torch.no_grad():
                torch._foreach_lerp_(self._averaged, self._trained, 1 - min(self.decay, step / (step + 1)))


def evaluate(model, val, criterion, cfg: HeadConfig) -> dict[str, float]:
    """``val_loss`` and the :func:`validation_scores` of ``model`` on ``val`` = (Xt, Xi, y)."""
    model.eval()
    with torch.no_grad(), autocast(cfg):
        logits = model(val[0], val[1]).logits.float()  # (N, C)
    return dict(val_loss=criterion(logits, val[2]).item(), **validation_scores(logits, val[2], cfg))


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray | None:
    """scikit-learn's ``balanced`` weights (n_rows / (n_present_classes * class count)) for the classes
    present in ``y``; 0 for a class absent from it. Multi-label ``y`` (N, L): BCE's ``pos_weight``,
    negatives / positives per label (1 for a label without positives). ``none``: None."""
    if mode == "none":
        return None
    if y.ndim == 2:
        pos = y.sum(0).astype(float)  # (L,)
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
    """The head's training precision (fp32, or bf16 autocast on the CPU): mmfuse.precision's one autocast."""
    return precision_autocast("cpu", cfg.precision)


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

    proba = logits.sigmoid().numpy()  # (N, L)
    m = multilabel_metrics(y.numpy(), decide(proba, 0.5, cfg.min_labels), range(y.shape[1]), proba)
    return {f"val_{k}": m[k] for k in ("micro_f1", "macro_f1", "samples_f1", "map")}
