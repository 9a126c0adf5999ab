"""Reading back what mmfuse wrote, without running code and without tracebacks.

Run folders hold tensors (``model.pt``, ``head.pt``, checkpoints) written with ``torch.save`` and
read back with ``torch.load(weights_only=True)``, which unpickles only tensors and plain data; numpy
arrays are read with ``allow_pickle=False``; configs are JSON. A planted file that would run code
when unpickled is refused with a one-line error instead.

Every reader here validates what it reads: a missing, empty, truncated or wrong-shaped file is a
:class:`CorruptFileError` naming the file and what is wrong, never a JSONDecodeError, KeyError,
BadZipFile or an EOFError (which the CLI's toolkit would take for Ctrl-C and print as "Aborted.").
"""
from __future__ import annotations

import contextlib
import json
import math
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

from .errors import MmfuseError


class CorruptFileError(MmfuseError):
    """A file mmfuse wrote earlier is missing, truncated, or not what it should be."""


# what reading a damaged file raises, from json, numpy's zip reader, torch's loader and plain Python
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, RuntimeError, AttributeError,
                pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, struct.error)


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyError):
        return f"missing {e}"
    if isinstance(e, EOFError):
        return "the file ends early (truncated or empty)"
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if ". " in text[:200]:
        text = text[:text.index(". ", 0, 200)]  # the first sentence: torch's messages go on with advice
    return text[:200]


def corrupt(path, reason: str, advice: str = "") -> CorruptFileError:
    advice = advice or "restore it, or write it again (train the run again, or re-run the command that made it)"
    return CorruptFileError(f"{path} is damaged or was not written by mmfuse: {reason}; {advice}")


@contextlib.contextmanager
def reading(path, advice: str = ""):
    """Turn any error raised while reading ``path`` into one CorruptFileError naming it."""
    try:
        yield
    except MmfuseError:
        raise
    except _READ_ERRORS as e:
        if isinstance(e, FileNotFoundError) or (isinstance(e, OSError) and not Path(path).exists()):
            raise CorruptFileError(f"{path} is missing: {advice or 'write it again with the command that made it'}") from None
        raise corrupt(path, _reason(e), advice) from None


def read_json(path: str | Path, required: tuple[str, ...] = (), advice: str = "") -> dict:
    """A JSON object mmfuse wrote, with ``required`` keys present (else a one-line CorruptFileError)."""
    path = Path(path)
    with reading(path, advice):
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise corrupt(path, f"expected a JSON object, found {type(data).__name__}", advice)
    missing = [k for k in required if k not in data]
    if missing:
        raise corrupt(path, f"no {', '.join(repr(k) for k in missing)} in it", advice)
    return data


def number(value, path, field: str) -> float:
    """``value`` as a float, else a CorruptFileError naming the file and the field (NaN is allowed)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise corrupt(path, f"{field} is {value!r}, not a number") from None
    if math.isinf(x):
        raise corrupt(path, f"{field} is {value!r}")
    return x


def load_npz(path: str | Path, required: tuple[str, ...] = (), advice: str = "") -> dict:
    """Every array of an ``.npz`` file, read now (no pickles), with ``required`` names present."""
    import numpy as np

    path = Path(path)
    with reading(path, advice):
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    missing = [k for k in required if k not in data]
    if missing:
        raise corrupt(path, f"no array {', '.join(map(repr, missing))} in it", advice)
    return data


def load_npy(path: str | Path, advice: str = ""):
    """One ``.npy`` array (no pickles)."""
    import numpy as np

    with reading(path, advice):
        return np.load(path, allow_pickle=False)


def load_tensors(path: str | Path, map_location="cpu", advice: str = ""):
    """``torch.load(path, weights_only=True)``; a file holding anything else, or a damaged one, is a MmfuseError."""
    import torch

    try:
        with reading(path, advice):
            return torch.load(path, map_location=map_location, weights_only=True)
    except CorruptFileError as e:
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e) or "unpickl" in str(e).lower():
            raise MmfuseError(f"refusing to load {path}: it holds more than tensors and plain data, so unpickling "
                              "it could run code. Use the files mmfuse wrote, or train the run again.") from None
        raise


def load_state(module, state: dict, path) -> None:
    """``module.load_state_dict(state)``; a state of other shapes (a head.json whose dims were edited, a file
    from another run) is one line naming the file and the first tensor that differs."""
    if not isinstance(state, dict):
        raise corrupt(path, f"it holds a {type(state).__name__}, not a state dict")
    own = module.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise corrupt(path, f"no tensor {name!r} in it")
        got = state[name]
        if not hasattr(got, "shape") or tuple(got.shape) != tuple(tensor.shape):
            raise corrupt(path, f"tensor {name!r} has shape {tuple(getattr(got, 'shape', ()))}, the head "
                          f"described beside it needs {tuple(tensor.shape)} (were its files mixed with another run's?)")
    extra = [k for k in state if k not in own]
    if extra:
        raise corrupt(path, f"unexpected tensor {extra[0]!r} in it")
    module.load_state_dict(state)
