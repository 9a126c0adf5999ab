"""Small helpers shared by the text and image extractors."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import torch

from ..errors import BackboneError, MmfuseError
from ..precision import PRECISIONS, autocast, native_bf16  # noqa: F401 - their home is mmfuse.precision


def close_to(a: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> bool:
    """Whether a copy's or another call's features ``a`` equal ``ref`` up to float reordering: within 1e-3
    relative and 1e-4 of ``ref``'s largest magnitude (plus ``floor``) absolute."""
    return bool(torch.allclose(a.float(), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()) + floor))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MmfuseError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise MmfuseError(f"unknown --device {device!r}: use auto, cpu or cuda") from None


def sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("mmfuse", "torch", "torchvision", "transformers", "timm", "h5py", "numpy", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def finetune_run(path: str | None) -> dict | None:
    """The fine-tune run a weights file or model folder was saved by (its folder holds finetune.json)."""
    if not path:
        return None
    for folder in (Path(path).parent, Path(path)):
        if (folder / "finetune.json").is_file():
            return {"run": str(folder.resolve()), **json.loads((folder / "finetune.json").read_text())}
    return None


class HalveOnOOM:
    """Runs a model on a batch; on an out-of-memory error (CUDA's, above all) it runs that batch in halves,
    and every later batch in pieces of the size that fitted, down to one row (then a BackboneError).

    ``rows`` is a batch's length; ``take(batch, lo, hi)`` its rows lo..hi; ``fn`` returns a tensor or a
    tuple of tensors, concatenated back along the rows.
    """

    def __init__(self, what: str, log=None):
        self.what, self.log, self.limit = what, log, None

    def __call__(self, fn, batch, rows: int, take):
        size, lo, parts = min(rows, self.limit or rows), 0, []
        while lo < rows:
            hi = min(rows, lo + size)
            try:
                parts.append(fn(take(batch, lo, hi) if (lo, hi) != (0, rows) else batch))
                lo = hi
            except torch.OutOfMemoryError:
                if size == 1:
                    raise BackboneError(f"{self.what}: out of memory on a single row; use a smaller model or "
                                      "--max-length, or --device cpu") from None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = self.limit = max(1, size // 2)
                if self.log:
                    self.log(f"{self.what}: out of memory; batches of {size} rows from now on")
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p) for p in zip(*parts))
        return torch.cat(parts)
