"""Package attributes imported on first use (PEP 562), as scikit-image's and SciPy's ``lazy_loader`` do.

``mmfuse extract`` and ``mmfuse --help`` should not pay for scikit-learn, SciPy and the grid's machinery
they never call (about 2.5 s of the 60-row extraction's 10 s, bench/speed/extract_e2e.py); a package lists
where each public name lives and imports that module when the name is first read.
"""
from __future__ import annotations

import importlib
import sys


def attach(package: str, where: dict[str, list[str]]):
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``; ``where`` maps a submodule (".x") to
    the names it provides, so ``from package import name`` works as an eager re-export did."""
    home = {name: module for module, names in where.items() for name in names}

    def __getattr__(name: str):
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home[name], package), name)
        setattr(sys.modules[package], name, value)  # the next read is a plain attribute
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__, [n for n in home if not n.startswith("_")]
