"""The image tower on OpenVINO or ONNX Runtime (``--image-runtime``): the same vectors as torch, recorded in the
provenance, and one-line refusals where a runtime cannot run. A runtime whose package is absent is skipped with
a message (``pip install 'mmfuse[openvino]'`` / ``'mmfuse[onnxruntime]'``)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mmfuse.cache import FeatureCache
from mmfuse.cli import app
from mmfuse.errors import BackboneError
from mmfuse.extract.runtimes import RUNTIMES, check_runtime, runtime_copy

runner = CliRunner()
OPTIONAL = [rt for rt in RUNTIMES if rt != "torch"]


def needs(runtime: str) -> None:
    if importlib.util.find_spec(runtime) is None:
        pytest.skip(f"{runtime} is not installed: pip install 'mmfuse[{runtime}]'")


@pytest.mark.parametrize("runtime", OPTIONAL)
def test_a_runtime_gives_torchs_vectors_and_is_recorded(runtime, clean_course_dir, extract_args, tmp_path):
    needs(runtime)
    ref, out = tmp_path / "torch.h5", tmp_path / f"{runtime}.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, ref, "--precision", "fp32")).exit_code == 0
    result = runner.invoke(app, extract_args(clean_course_dir, out, "--image-runtime", runtime))
    assert result.exit_code == 0, result.output
    assert f"precision auto: fp32 (--image-runtime {runtime} runs fp32)" in result.output
    cache = FeatureCache(out)
    np.testing.assert_allclose(cache.features("image/pooled"), FeatureCache(ref).features("image/pooled"),
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(cache.features("text/cls"), FeatureCache(ref).features("text/cls"))
    prov = cache.provenance
    assert prov["numerics"]["image_runtime"] == runtime and prov["image_config"]["runtime"] == runtime
    assert prov["precision"] == "fp32" and prov["precision_choice"]["requested"] == "auto"
    assert cache.feature_identity == FeatureCache(ref).feature_identity  # heads score either cache


@pytest.mark.parametrize("runtime", OPTIONAL)
def test_a_runtime_refuses_what_it_cannot_run(runtime, monkeypatch):
    needs(runtime)
    with pytest.raises(BackboneError, match="runs the image model in fp32"):
        check_runtime(runtime, torch.device("cpu"), "bf16")
    with pytest.raises(BackboneError, match="runs on the CPU"):
        check_runtime(runtime, torch.device("cuda"), "auto")
    with pytest.raises(BackboneError, match="torchvision and EfficientNet-Lite"):  # not a torchvision graph
        runtime_copy(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(2, 3, 8, 8), runtime, "a plain module")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BackboneError, match=rf"pip install 'mmfuse\[{runtime}\]'"):
        check_runtime(runtime, torch.device("cpu"), "fp32")


def test_an_absent_runtime_stops_extraction_before_any_model_loads(clean_course_dir, extract_args, tmp_path,
                                                                   monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    out = tmp_path / "x.h5"
    result = runner.invoke(app, extract_args(clean_course_dir, out, "--image-runtime", "openvino"))
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == ("error: --image-runtime openvino needs its package: "
                                                      "pip install 'mmfuse[openvino]'")
    assert not out.exists() and not (tmp_path / "x.h5.partial").exists()
