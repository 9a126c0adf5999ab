"""mmfuse: extract text and image features once, then train fusion heads on them in seconds."""
from .cache import FeatureCache
from .errors import BackboneError, CacheError, DataError, MmfuseError
from .extract import ExtractReport, ImageExtractorConfig, TextExtractorConfig, extract

__version__ = "0.1.0"
__all__ = ["FeatureCache", "extract", "ExtractReport", "TextExtractorConfig", "ImageExtractorConfig",
           "MmfuseError", "DataError", "CacheError", "BackboneError"]
