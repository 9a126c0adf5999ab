"""Head registry, after timm's: ``@register_head("weighted", ...)``, ``create_head``, ``list_heads``.

What a head is is declared where the head is (as timm keeps ``default_cfgs`` beside
``@register_model``): how it is trained, which modalities it reads, and which HeadConfig fields
change its model. The grid (which fields are axes for which head), the CLI's choices and the docs
read it from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

TRAINING = ("gradient", "closed-form", "none")  # a torch module trained by the loop, an estimator fit in one
#                                                 call, or nothing to train (zeroshot: the class prompts)


@dataclass(frozen=True)
class HeadInfo:
    name: str
    cls: Callable
    training: str = "gradient"
    modalities: tuple[str, ...] = ("text", "image")  # the features it reads
    own: frozenset[str] = frozenset()  # HeadConfig fields only this head uses (aligned: align_weight, ...)
    uses: frozenset[str] | None = None  # closed-form heads: every field that changes them (None: all but
    #                                     the other heads' own fields)

    def uses_field(self, field: str) -> bool:
        """Whether HeadConfig ``field`` changes this head's model (a grid axis it does not use is not varied)."""
        if self.uses is not None:
            return field in self.uses
        return field in self.own or field not in _owned()


_HEADS: dict[str, HeadInfo] = {}


def _owned() -> set[str]:
    return {f for info in _HEADS.values() for f in info.own}


def register_head(name: str, *, training: str = "gradient", modalities: tuple[str, ...] = ("text", "image"),
                  own: tuple[str, ...] = (), uses: tuple[str, ...] | None = None):
    """Class decorator: make a fusion module (or estimator) available under ``name``, with what it is."""
    if training not in TRAINING:
        raise ValueError(f"training must be one of {TRAINING}, not {training!r}")

    def add(cls):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is registered twice")
        _HEADS[name] = HeadInfo(name, cls, training, tuple(modalities), frozenset(own),
                                None if uses is None else frozenset(uses))
        cls.head_name = name
        return cls
    return add


def list_heads(kind: str | None = None, training: str | None = None, trained: bool | None = None) -> list[str]:
    """Registered names, sorted; ``kind="module"`` keeps the torch modules (not logreg); ``training``
    keeps the heads trained that way; ``trained=True`` those that learn from the features (not zeroshot,
    which needs a cache with class prompts)."""
    return sorted(n for n, info in _HEADS.items()
                  if (kind is None or getattr(info.cls, "kind", "module") == kind)
                  and (training is None or info.training == training)
                  and (trained is None or (info.training != "none") == trained))


def head_info(name: str) -> HeadInfo:
    """What head ``name`` is (a MmfuseError naming the registered ones for an unknown name)."""
    if name not in _HEADS:
        from ..errors import MmfuseError
        raise MmfuseError(f"unknown fusion {name!r}: choose one of {', '.join(list_heads())}")
    return _HEADS[name]


def get_head_class(name: str):
    return head_info(name).cls


def create_head(name: str, text_dim: int, image_dim: int, n_out: int, cfg, task: str = "single"):
    """Build head ``name`` for (text, image) features and ``n_out`` classes (or labels). One contract for
    all: a torch module (``kind="module"``) returning logits, or an estimator (``kind="sklearn"``, logreg)
    with ``fit(text, image, y, class_weight)`` and ``decision_function(text, image)``. ``task``
    ("single" or "multilabel") is set as ``head.task``: the modules that mix probabilities read it."""
    head = get_head_class(name)(text_dim, image_dim, n_out, cfg)
    head.task = task
    return head
