"""mmfuse: extract text and image features once, then train fusion heads on them in seconds.

The names below are imported on first use (``mmfuse._lazy``): ``import mmfuse`` stays light.
"""
from ._lazy import attach
# eager: the function shares its name with the subpackage, which would shadow a lazy attribute once imported
from .extract import ExtractReport, ImageExtractorConfig, TextExtractorConfig, extract

__version__ = "0.1.0"
__getattr__, __dir__, _later = attach(__name__, {
    ".cache": ["FeatureCache"],
    ".errors": ["MmfuseError", "DataError", "CacheError", "BackboneError"],
    ".heads": ["FeatureSet", "Head", "HeadConfig", "list_heads", "train_head"],
    ".runs": ["evaluate_run", "predict_run", "load_run"],
})
__all__ = ["extract", "ExtractReport", "TextExtractorConfig", "ImageExtractorConfig", *_later]
