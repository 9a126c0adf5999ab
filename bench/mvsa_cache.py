"""The mvsa feature cache the head and grid benchmarks share (minilm text, efficientnet-lite0 image)."""
from __future__ import annotations

from pathlib import Path

import mmfuse


def ensure_cache(cache: str | Path, data: str | Path) -> Path | None:
    """The cache, extracted from ``data`` if missing; None (after saying why) when neither exists."""
    cache = Path(cache)
    if not cache.is_file():
        if not (Path(data) / "train.txt").is_file():
            print(f"skip: neither {cache} nor the data set at {data} exists")
            return None
        mmfuse.extract(data, "train", cache, text=mmfuse.TextExtractorConfig("minilm"),
                       image=mmfuse.ImageExtractorConfig("efficientnet-lite0"))
    return cache
