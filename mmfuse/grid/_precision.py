"""The training precision a grid chooses when none is given: :func:`mmfuse.precision.fast_precision` (bf16
only where this CPU runs it natively and measurably faster), except that a resumed grid keeps the precision
it was started with, so its configuration ids do not change."""
from __future__ import annotations

from pathlib import Path

from ..precision import BF16_SPEEDUP, fast_precision  # noqa: F401 (re-exported for mmfuse.grid)
from ..safe import read_json

def default_precision(out: str | Path) -> tuple[str, str]:
    """(precision, reason): the precision a grid folder was started with (so a resumed grid keeps its
    ids), else :func:`fast_precision`."""
    path = Path(out) / "grid.json"
    if path.is_file():
        stored = read_json(path).get("precision") or []
        if len(stored) == 1:
            return stored[0], f"the precision {path} was started with"
    return fast_precision()
