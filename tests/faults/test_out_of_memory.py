"""Fault injection: a batch too large for the device's memory (simulated: the models raise torch's
OutOfMemoryError above 2 rows, as CUDA does when a batch does not fit). Extraction runs the batch in
halves, then keeps the size that fitted, and the features equal a run that never ran out."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from mmfuse.cache import FeatureCache
from mmfuse.errors import BackboneError
from mmfuse.extract.common import HalveOnOOM

ex = importlib.import_module("mmfuse.extract")


def fits(limit: int, fn):
    def call(*a, **k):
        rows = len(a[0]) if a else len(k["input_ids"])
        if rows > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {rows}")
        return fn(*a, **k)
    return call


def test_an_out_of_memory_batch_is_run_in_halves_with_the_same_features(clean_course_dir, tiny_bert, tmp_path,
                                                                         monkeypatch):
    cfg = dict(text=ex.TextExtractorConfig(str(tiny_bert), 32, 8), progress=False,
               image=ex.ImageExtractorConfig("resnet18", "none", 8, 0, optimize=False))
    ex.extract(clean_course_dir, "train", tmp_path / "clean.h5", log=lambda s: None, **cfg)
    load_text, load_image = ex.load_text_encoder, ex.load_image_encoder

    def small_text(c):
        tok, model, prov = load_text(c)
        model.forward = fits(2, model.forward)
        return tok, model, prov

    def small_image(c):
        model, prep, prov = load_image(c)
        model.forward = fits(2, model.forward)
        return model, prep, prov

    monkeypatch.setattr(ex, "load_text_encoder", small_text)
    monkeypatch.setattr(ex, "load_image_encoder", small_image)
    logs = []
    ex.extract(clean_course_dir, "train", tmp_path / "oom.h5", log=logs.append, **cfg)
    assert "text model: out of memory; batches of 4 rows from now on" in logs
    assert "text model: out of memory; batches of 2 rows from now on" in logs
    assert any(s.startswith("image model: out of memory; batches of 2") for s in logs)
    a, b = FeatureCache(tmp_path / "clean.h5"), FeatureCache(tmp_path / "oom.h5")
    for name in ("text/cls", "text/mean", "image/pooled"):
        np.testing.assert_allclose(b.features(name), a.features(name), rtol=1e-4, atol=1e-5, err_msg=name)


def test_out_of_memory_on_one_row_is_a_clear_error():
    halve = HalveOnOOM("image model")
    with pytest.raises(BackboneError, match="out of memory on a single row"):
        halve(fits(0, lambda t: t), torch.zeros(4, 3), 4, lambda t, lo, hi: t[lo:hi])
