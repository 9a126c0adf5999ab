"""What the benchmarks share: the machine line every table prints, the mvsa feature cache (minilm text,
efficientnet-lite0 image) and caches of some of its rows, and the command-line options they have in common.

The scripts in bench/speed/ and bench/experiments/ run as ``python bench/speed/extract.py ...`` from the
repository root, so each puts this folder on ``sys.path`` first and then imports ``from common import ...``.
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmfuse.cache import FeatureCache

MVSA = "../shared/datasets/mvsa"  # the data set's default place (the Makefile's MVSA)
MVSA_CACHE = "features/mvsa-train.h5"  # its training split's features (the Makefile's FEATURES/mvsa-train.h5)


# --- the machine ---------------------------------------------------------------------------------------------
def cpu_line() -> str:
    """'<CPU model>, torch capability <ISA>', naming an ISA restriction set in the environment (e.g.
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 runs an AVX-512 CPU as an AVX2 one)."""
    import torch

    try:
        name = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                    platform.processor())
    except OSError:
        name = platform.processor()
    limits = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
              if os.environ.get(k)]
    return (f"{name} ({os.cpu_count()} cores), torch capability {torch.backends.cpu.get_cpu_capability()}"
            + (f" (restricted: {' '.join(limits)})" if limits else ""))


# --- the mvsa feature cache ----------------------------------------------------------------------------------
def ensure_cache(cache: str | Path, data: str | Path) -> Path | None:
    """The cache, extracted from ``data`` if missing; None (after saying why) when neither exists."""
    import mmfuse

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
    from mmfuse.cache import CacheWriter

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


# --- timing and fidelity ------------------------------------------------------------------------------------
def timed(fn):
    """(fn(), its wall time in seconds)."""
    import time

    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


# --- command-line options ------------------------------------------------------------------------------------
def parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help prints the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data(ap: argparse.ArgumentParser) -> None:
    """--data: the mvsa data set (course format)."""
    ap.add_argument("--data", default=MVSA, help="the mvsa data set (course format) [default: %(default)s]")


def add_bf16(ap: argparse.ArgumentParser) -> None:
    """--bf16 auto|yes|no: whether to time the bf16 path too (``wants_bf16``)."""
    ap.add_argument("--bf16", default="auto", choices=("auto", "yes", "no"),
                    help="time the bf16 path too: auto = only where this CPU has native bf16 (emulated bf16 runs "
                         "at a fraction of fp32's rate)")


def wants_bf16(args: argparse.Namespace) -> bool:
    from mmfuse.precision import native_bf16

    return args.bf16 == "yes" or (args.bf16 == "auto" and native_bf16())


def add_cache(ap: argparse.ArgumentParser) -> None:
    """--cache: mvsa's training features (the scripts that also take --data extract it when missing, with
    ``ensure_cache``)."""
    ap.add_argument("--cache", default=MVSA_CACHE, help="mvsa's training feature cache [default: %(default)s]")


def add_axis(ap: argparse.ArgumentParser) -> None:
    """--axis NAME=V1,V2 (repeatable): axes added to the default grid's (``grid_axes``)."""
    ap.add_argument("--axis", action="append", default=[], metavar="NAME=V1,V2",
                    help="an axis added to (or replacing one of) the default grid's, e.g. dropout=0,0.2,0.5")
