"""The mvsa feature cache the head and grid benchmarks share (minilm text, efficientnet-lite0 image)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import mmfuse
from mmfuse.cache import CacheWriter, FeatureCache


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


def subset_cache(src: FeatureCache, rows: np.ndarray, path: Path, tag: str) -> Path:
    """A cache holding ``rows`` of ``src`` (same provenance, so heads accept it)."""
    w = CacheWriter.open(path, guids=[src.guids[i] for i in rows], labels=src.labels[rows],
                         label_names=src.label_names, multilabel=False, skipped={}, store_dtype="float32",
                         dims=src.dims, provenance=src.provenance, identity=f"{src.identity}-{tag}")
    for m, names in (("text", ("text/cls", "text/mean")), ("image", ("image/pooled",))):
        w.write(m, np.arange(len(rows)), {n: src.features(n)[rows] for n in names})
    assert w.finish()
    w.close()
    return path


def grid_axes(extra: list[str]) -> dict[str, list]:
    """mmfuse grid's default axes plus ``NAME=V1,V2`` ones (``--axis dropout=0,0.2,0.5``), typed as the CLI
    types them."""
    from mmfuse.grid import DEFAULT_GRID, parse_values

    axes = dict(DEFAULT_GRID)
    for spec in extra:
        name, _, values = spec.partition("=")
        axes[name.strip()] = parse_values(name.strip(), values)
    return axes
