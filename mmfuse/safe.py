"""Loading saved tensors without running code.

Run folders hold tensors (``model.pt``, ``head.pt``, checkpoints) written with ``torch.save`` and
read back with ``torch.load(weights_only=True)``, which unpickles only tensors and plain data; numpy
arrays are read with ``allow_pickle=False``; configs are JSON. A planted file that would run code
when unpickled is refused with a one-line error instead.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from .errors import MmfuseError


def load_tensors(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``; a file holding anything else is a MmfuseError."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise MmfuseError(f"refusing to load {path}: it holds more than tensors and plain data, so unpickling it "
                          f"could run code ({str(e).splitlines()[0][:120]}). Use the files mmfuse wrote, or "
                          "train the run again.") from None
