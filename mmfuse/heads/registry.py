"""Head registry, after timm's: ``@register_head("weighted")``, ``create_head``, ``list_heads``."""
from __future__ import annotations

from typing import Callable

_HEADS: dict[str, Callable] = {}


def register_head(name: str):
    """Class decorator: make a fusion module (or estimator) available under ``name``."""
    def add(cls):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is registered twice")
        _HEADS[name] = cls
        cls.head_name = name
        return cls
    return add


def list_heads(kind: str | None = None) -> list[str]:
    """Registered names, sorted; ``kind="module"`` keeps the torch modules (not logreg)."""
    return sorted(n for n, c in _HEADS.items() if kind is None or getattr(c, "kind", "module") == kind)


def get_head_class(name: str):
    if name not in _HEADS:
        from ..errors import MmfuseError
        raise MmfuseError(f"unknown fusion {name!r}: choose one of {', '.join(list_heads())}")
    return _HEADS[name]


def create_head(name: str, text_dim: int, image_dim: int, n_out: int, cfg, task: str = "single"):
    """Build head ``name`` for (text, image) features and ``n_out`` classes (or labels). One contract for
    all: a torch module (``kind="module"``) returning logits, or an estimator (``kind="sklearn"``, logreg)
    with ``fit(text, image, y, class_weight)`` and ``decision_function(text, image)``. ``task``
    ("single" or "multilabel") is set as ``head.task``: the modules that mix probabilities read it."""
    head = get_head_class(name)(text_dim, image_dim, n_out, cfg)
    head.task = task
    return head
