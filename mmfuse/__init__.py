"""mmfuse: extract text and image features once, then train fusion heads on them in seconds."""
from .cache import FeatureCache
from .errors import BackboneError, CacheError, DataError, MmfuseError
from .extract import ExtractReport, ImageExtractorConfig, TextExtractorConfig, extract
from .heads import FeatureSet, Head, HeadConfig, list_heads, train_head
from .runs import evaluate_run, load_run, predict_run

__version__ = "0.1.0"
__all__ = ["FeatureCache", "extract", "ExtractReport", "TextExtractorConfig", "ImageExtractorConfig",
           "MmfuseError", "DataError", "CacheError", "BackboneError", "FeatureSet", "Head", "HeadConfig",
           "train_head", "evaluate_run", "predict_run", "load_run", "list_heads"]
