"""extract --precision auto: the precision follows the hardware, and a model whose bf16 vectors stray from
fp32's on the first rows is extracted in fp32 instead, with a one-line notice."""
from __future__ import annotations

import torch
from torch import nn
from typer.testing import CliRunner

import importlib
from mmfuse import precision as precision_module
from mmfuse.cache import FeatureCache
from mmfuse.cli import app

runner = CliRunner()
extract_package = importlib.import_module("mmfuse.extract")  # the package (mmfuse.extract is also the function)


def extract(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_auto_follows_the_cpu(clean_course_dir, extract_args, tmp_path, monkeypatch):
    for native, expected in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(precision_module, "native_bf16", lambda native=native: native)
        out = tmp_path / f"{expected}.h5"
        result = extract(extract_args(clean_course_dir, out, "--device", "cpu"))  # --precision auto: the default
        prov = FeatureCache(out).provenance
        assert prov["precision"] == expected and prov["precision_choice"]["chosen"] == expected
        assert f"precision auto: {expected}" in result.output
    assert prov["precision_choice"]["min_cosine_first_rows"] >= 0.98  # the tiny models agree in bf16


class DivergesInBf16(nn.Module):
    """An image model whose autocast output is noise: bf16 would silently ruin its features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if torch.is_autocast_enabled("cpu"):
            return {k: torch.randn_like(v) for k, v in out.items()}
        return out


def test_auto_falls_back_to_fp32_when_bf16_strays(clean_course_dir, extract_args, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda: True)
    real = extract_package.load_image_encoder

    def diverging(cfg):
        model, prep, prov = real(cfg)
        return DivergesInBf16(model), prep, prov
    monkeypatch.setattr(extract_package, "load_image_encoder", diverging)
    out = tmp_path / "f.h5"
    result = extract(extract_args(clean_course_dir, out, "--device", "cpu"))
    prov = FeatureCache(out).provenance
    assert prov["precision"] == "fp32" and prov["precision_choice"]["fallback"] == "fp32"
    assert "differ from fp32 on the first rows" in result.output and "extracting in fp32" in result.output
