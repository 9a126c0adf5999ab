"""What identifies a cache's features: the fields of its provenance that change a feature vector
(:func:`feature_identity`), compared between a head's training cache and any cache it scores
(:func:`feature_mismatch`); the cache's own ``identity`` (its resume key) adds the data and the run's
numerics to them (``mmfuse.extract``)."""
from __future__ import annotations

import json


def _minor(version) -> str:
    return ".".join(str(version).split(".")[:2])


def feature_identity(provenance: dict) -> dict[str, str]:
    """The fields of a cache's provenance that determine its feature vectors, flat and comparable.

    Weights are compared by content (sha256) where known, not by path; library versions by
    major.minor. The data (rows, fingerprint) and the run's device are not part of it.
    """
    t, i, v = provenance.get("text", {}), provenance.get("image", {}), provenance.get("versions", {})

    def weights(w):
        if isinstance(w, dict):  # a Hugging Face hub id without local files: its source at its revision
            return str(w.get("sha256") or w.get("name") or w.get("file") or f"{w.get('source')}@{w.get('revision')}")
        return str(w)

    return {
        "text weights": str(t.get("weights_sha256") or f"{t.get('model')}@{t.get('revision')}"),
        "text architecture": str(t.get("architecture")),
        "text max_length": str(t.get("max_length")),
        "text pooling": json.dumps(t.get("pooling"), sort_keys=True),
        "image model": str(i.get("model")),
        "image weights": weights(i.get("weights")),
        "image node": str(i.get("node")),
        "image preprocessing": json.dumps(i.get("preprocessing"), sort_keys=True),
        "precision": str(provenance.get("precision")),
        "store dtype": str(provenance.get("store_dtype", "float32")),
        **{f"{lib} version": _minor(v.get(lib)) for lib in ("torch", "torchvision", "transformers")},
        **({"timm version": _minor(v.get("timm"))} if str(i.get("model", "")).startswith(("timm:", "timm/")) else {}),
    }


def feature_mismatch(a: dict, b: dict) -> list[str]:
    """'field: X vs Y' for each feature-identity field where provenances ``a`` and ``b`` differ."""
    fa, fb = feature_identity(a or {}), feature_identity(b or {})
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in {**fa, **fb} if fa.get(k) != fb.get(k)]


def describe(prov: dict) -> str:
    t, i, d = prov.get("text", {}), prov.get("image", {}), prov.get("data", {})
    return (f"text {t.get('model')}, image {i.get('model')} ({i.get('weights')}), "
            f"data {d.get('root')} split {d.get('split')}")
