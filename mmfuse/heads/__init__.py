"""Fusion heads on cached features: a registry of modules, an estimator, and run folders.

By job: ``registry`` (register_head, create_head), ``config`` (HeadConfig), ``modules`` (the torch
fusion modules), ``linear`` (logreg and saved linear models), ``features`` (FeatureSet from a cache),
``zeroshot`` (the class-prompt head), ``train`` (the training loop), ``estimator`` (Head), ``files`` (run
files read back), ``bagging``
(the k fold models of a CV), ``run`` (train-head's run folders)."""
from . import modules  # noqa: F401  (registers the torch heads)
from . import linear  # noqa: F401  (registers logreg)
from . import zeroshot  # noqa: F401  (registers zeroshot)
from .bagging import BaggedHead
from .config import HeadConfig
from .estimator import Head
from .features import FeatureSet
from .registry import create_head, list_heads, register_head
from .run import train_head

__all__ = ["HeadConfig", "FeatureSet", "Head", "BaggedHead", "create_head", "list_heads", "register_head",
           "train_head"]
