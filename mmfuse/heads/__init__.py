"""Fusion heads on cached features: a registry of modules, an estimator, and run folders.

By job: ``registry`` (register_head, create_head), ``config`` (HeadConfig), ``modules`` (the torch
fusion modules), ``linear`` (logreg and saved linear models), ``features`` (FeatureSet from a cache),
``zeroshot`` (the class-prompt head), ``train`` (the training loop), ``estimator`` (Head), ``files`` (run
files read back), ``bagging``
(the k fold models of a CV), ``run`` (train-head's run folders)."""
from . import modules  # noqa: F401  (registers the torch heads)
from . import linear  # noqa: F401  (registers logreg)
from . import zeroshot  # noqa: F401  (registers zeroshot)
from .._lazy import attach
from .config import HeadConfig
from .registry import create_head, list_heads, register_head

# the estimator and what builds on it import scikit-learn: on first use (mmfuse._lazy)
__getattr__, __dir__, _later = attach(__name__, {".bagging": ["BaggedHead"], ".estimator": ["Head"],
                                                 ".features": ["FeatureSet"], ".run": ["train_head"]})
__all__ = ["HeadConfig", "create_head", "list_heads", "register_head", *_later]
