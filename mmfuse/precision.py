"""Precision, in one place: the names, whether this CPU multiplies bf16 natively, the one autocast
helper, and the two choosers: the ``auto`` rule of extraction and fine-tuning (:func:`choose_precision`)
and the heads' training precision, measured (:func:`fast_precision`), as open_clip's training/precision.py. Extraction, the heads and
fine-tuning each allow a named subset of ``PRECISIONS``."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from .errors import MmfuseError

PRECISIONS = ("fp32", "bf16", "fp16")  # what autocast runs in
HEAD_PRECISIONS = ("fp32", "bf16")  # heads train on the CPU: bf16 autocast where it is native, no fp16
AUTO = "auto"  # extract and fine-tune --precision auto: choose_precision's rule
AUTO_PRECISIONS = (AUTO, *PRECISIONS)  # what extract --precision takes (auto checked against fp32 first)
FINETUNE_PRECISIONS = AUTO_PRECISIONS
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16() -> bool:
    """Whether torch multiplies bf16 in hardware here: AVX512-BF16 or AMX in the CPU's flags, and torch's
    kernels at AVX-512 (``ATEN_CPU_CAPABILITY=avx2`` turns them off). Without it bf16 is emulated and
    several times slower than fp32 (an AVX2 EPYC: 0.17-0.29x; this project's Xeon run as AVX2: 0.015x
    for a head-sized matmul)."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device | str, precision: str):
    """Autocast to bf16/fp16 on the device's type (bf16 also on CPU); a no-op context for fp32."""
    if precision not in DTYPES:
        raise MmfuseError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if DTYPES[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def choose_precision(requested: str, device: torch.device) -> str:
    """The autocast precision for ``auto``: bf16 where the hardware runs it natively, else fp16 on CUDA,
    else fp32. Any other request is returned as it is."""
    if requested != AUTO:
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_bf16() else "fp32"


BF16_SPEEDUP = 1.5  # the median speed-up over fp32 a head-sized matmul needs to train in bf16 (bench/speed/grid.py)


def fast_precision() -> tuple[str, str]:
    """(precision, reason): bf16 only where the CPU has native bf16 (AVX512-BF16 or AMX) and a head-sized
    matmul, timed in 5 rounds of about 40 ms, runs at least 1.5x faster in bf16 (median); else fp32. A CPU
    without native bf16 always gets fp32, so the choice cannot flip with a noisy timing there."""
    capability = torch.backends.cpu.get_cpu_capability()
    if not native_bf16():
        return "fp32", f"this CPU has no native bf16 (torch capability {capability})"
    x, w = torch.randn(64, 1664), torch.randn(1664, 256)
    ratios = []
    for _ in range(5):
        times = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = x.to(dtype), w.to(dtype)
            a @ b
            t0 = time.perf_counter()
            for _ in range(50):
                a @ b
            times[name] = time.perf_counter() - t0
        ratios.append(times["fp32"] / times["bf16"])
    ratio = float(np.median(ratios))
    if ratio >= BF16_SPEEDUP:
        return "bf16", f"native bf16 (torch capability {capability}), measured {ratio:.1f}x fp32's matmul rate"
    return "fp32", f"native bf16 measured only {ratio:.1f}x fp32's matmul rate here"
