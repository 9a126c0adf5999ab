"""Fusion heads on cached features: a registry of modules, an estimator, and run folders."""
from . import modules  # noqa: F401  (registers the torch heads)
from .config import HeadConfig
from .estimator import FeatureSet, Head
from .registry import create_head, list_heads, register_head
from .run import evaluate_head, predict_head, train_head

__all__ = ["HeadConfig", "FeatureSet", "Head", "create_head", "list_heads", "register_head",
           "train_head", "evaluate_head", "predict_head"]
