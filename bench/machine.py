"""The line every benchmark table prints about the machine it was measured on."""
from __future__ import annotations

import os
import platform

import torch


def cpu_line() -> str:
    """'<CPU model>, torch capability <ISA>', naming an ISA restriction set in the environment (e.g.
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 runs an AVX-512 CPU as an AVX2 one)."""
    try:
        name = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                    platform.processor())
    except OSError:
        name = platform.processor()
    limits = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
              if os.environ.get(k)]
    return (f"{name} ({os.cpu_count()} cores), torch capability {torch.backends.cpu.get_cpu_capability()}"
            + (f" (restricted: {' '.join(limits)})" if limits else ""))
