"""mmfuse: extract text and image features once, then train fusion heads on them in seconds.

The names below are imported on first use (``mmfuse._lazy``): ``import mmfuse`` stays light.
"""
from ._lazy import attach

__version__ = "0.1.0"
__getattr__, __dir__, __all__ = attach(__name__, {
    ".cache": ["FeatureCache"],
    ".errors": ["MmfuseError", "DataError", "CacheError", "BackboneError"],
    ".extract": ["extract", "ExtractReport", "TextExtractorConfig", "ImageExtractorConfig"],
    ".heads": ["FeatureSet", "Head", "HeadConfig", "list_heads", "train_head"],
    ".runs": ["evaluate_run", "predict_run", "load_run"],
})
