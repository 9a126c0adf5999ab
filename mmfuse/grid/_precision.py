"""The training precision a grid chooses when none is given: bf16 only where this CPU runs it natively and
measurably faster (bench/speed/grid.py), and a resumed grid keeps the precision it was started with, so its
configuration ids do not change. (Its home for now; precision at large: mmfuse.precision.)"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..safe import read_json

BF16_SPEEDUP = 1.5  # the median speed-up over fp32 a head-sized matmul needs to train in bf16 (bench/speed/grid.py)


def fast_precision() -> tuple[str, str]:
    """(precision, reason): bf16 only where the CPU has native bf16 (AVX512-BF16 or AMX) and a head-sized
    matmul, timed in 5 rounds of about 40 ms, runs at least 1.5x faster in bf16 (median); else fp32. A CPU
    without native bf16 always gets fp32, so the choice cannot flip with a noisy timing there."""
    import torch

    from ..extract.common import native_bf16

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


def default_precision(out: str | Path) -> tuple[str, str]:
    """(precision, reason): the precision a grid folder was started with (so a resumed grid keeps its
    ids), else :func:`fast_precision`."""
    path = Path(out) / "grid.json"
    if path.is_file():
        stored = read_json(path).get("precision") or []
        if len(stored) == 1:
            return stored[0], f"the precision {path} was started with"
    return fast_precision()
