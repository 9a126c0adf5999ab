"""Fusion heads on cached features: a registry of modules, an estimator, and run folders."""
from . import modules  # noqa: F401  (registers the torch heads)
from .bagging import BaggedHead
from .config import HeadConfig
from .estimator import FeatureSet, Head
from .registry import create_head, list_heads, register_head
from .run import train_head

__all__ = ["HeadConfig", "FeatureSet", "Head", "BaggedHead", "create_head", "list_heads", "register_head",
           "train_head"]
