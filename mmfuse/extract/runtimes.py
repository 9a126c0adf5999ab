"""The image tower on a CPU inference runtime other than torch (``--image-runtime openvino|onnxruntime``).

bench/experiments/cpu_runtimes.py measured efficientnet-lite0 on mvsa images (AMD EPYC, 2 cores): OpenVINO fp32
at 2.64x torch's fp32 img/s with AVX2 kernels, ONNX Runtime fp32 at 3.54x with AVX-512 kernels (1.74x torch's
bf16), both with cosine 1.00000 to torch's vectors and the same heads' macro-F1; their int8 and bf16 modes lost
fidelity (cosine mean 0.956-0.9989) and are not offered. Each runs a copy of a torchvision or Lite model in
fp32, made once per run (OpenVINO's ``convert_model``; ONNX Runtime from ``torch.onnx.export``) and checked
against torch on the first batch: a copy that differs stops the run rather than writing other vectors.
"""
from __future__ import annotations

import importlib.util
import io
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import BackboneError
from .common import close_to

RUNTIMES = ("torch", "openvino", "onnxruntime")  # each optional one is also the name of its package and mmfuse's extra


def check_runtime(runtime: str, device: torch.device, precision: str) -> None:
    """Raise, before any model loads, where ``runtime`` cannot run: unknown, not installed, not on CPU, not
    fp32 (``precision`` as requested: ``auto`` resolves to fp32 for these runtimes)."""
    if runtime not in RUNTIMES:
        raise BackboneError(f"unknown image runtime {runtime!r}: choose {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return
    if importlib.util.find_spec(runtime) is None:
        raise BackboneError(f"--image-runtime {runtime} needs its package: pip install 'mmfuse[{runtime}]'")
    if device.type != "cpu":
        raise BackboneError(f"--image-runtime {runtime} runs on the CPU: drop it with --device {device.type}")
    if precision not in ("auto", "fp32"):
        raise BackboneError(f"--image-runtime {runtime} runs the image model in fp32 (its bf16 and int8 modes lost "
                            f"fidelity in bench/experiments/cpu_runtimes.py): use --precision fp32 or auto")


class _Tower(nn.Module):
    """The feature extractor as a module of tensors, not a dict: ``names`` in order, each (B, D)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x):
        out = self.model(x)
        return tuple(out[k].flatten(1) for k in self.names)


def _openvino(tower: nn.Module, x: torch.Tensor, threads: int):
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(tower, example_input=x, input=[ov.PartialShape([-1, *x.shape[1:]])])
    # f32: OpenVINO otherwise runs bf16 where the CPU has it (cosine mean 0.99877 to fp32 on lite0)
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "INFERENCE_NUM_THREADS": threads})
    return lambda a: compiled(a).to_tuple()


def _onnxruntime(tower: nn.Module, x: torch.Tensor, names: list[str], threads: int):
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tower, (x,), buf, dynamo=False, input_names=["x"], output_names=names, opset_version=17,
                          dynamic_axes={"x": {0: "b"}, **{k: {0: "b"} for k in names}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"x": a})


def runtime_copy(model: nn.Module, x: torch.Tensor, runtime: str, label: str):
    """The callable that runs ``model`` (a torchvision graph module) on ``runtime`` (-> {name: tensor}), made
    with the first batch ``x`` (B, 3, H, W) and checked against torch on it."""
    if not isinstance(model, torch.fx.GraphModule):
        raise BackboneError(f"--image-runtime {runtime} runs torchvision and EfficientNet-Lite models; {label} is "
                            "not one: drop the option")
    model = model.to(memory_format=torch.contiguous_format).eval()
    x = x.float().contiguous()
    with torch.inference_mode():
        ref = model(x)
    names = list(ref)
    tower, threads = _Tower(model, names).eval(), torch.get_num_threads()
    try:
        with torch.no_grad():
            run = _openvino(tower, x, threads) if runtime == "openvino" else _onnxruntime(tower, x, names, threads)
        got = run(x.numpy())
    except Exception as e:  # noqa: BLE001 - any conversion failure is the same one-line error
        raise BackboneError(f"--image-runtime {runtime} could not convert {label}: {str(e).splitlines()[0]}; "
                            "drop the option to run it on torch") from None
    for k, y in zip(names, got):
        if not close_to(torch.from_numpy(np.asarray(y)), ref[k].flatten(1)):
            raise BackboneError(f"--image-runtime {runtime}: {label}'s {k} differs from torch's on the first batch; "
                                "drop the option to run it on torch")
    return lambda t: {k: torch.from_numpy(np.asarray(y)) for k, y in zip(names, run(t.float().contiguous().numpy()))}
