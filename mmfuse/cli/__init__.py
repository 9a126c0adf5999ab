"""The ``mmfuse`` command line: parses options and calls the library; errors print as one line.

One module per group of commands (typer's layout for larger apps), all on the one ``app`` of
``_common``, which also holds what they share: one-line errors, choices and defaults read from the
library, options declared once."""
from __future__ import annotations

from ._common import app
# each module registers its commands on app, in this order in --help: data in, heads, grids, fine-tuning,
# features out
from . import data  # noqa: E402,F401  isort:skip
from . import runs  # noqa: E402,F401  isort:skip
from . import grid  # noqa: E402,F401  isort:skip
from . import finetune  # noqa: E402,F401  isort:skip
from . import export  # noqa: E402,F401  isort:skip


def main() -> None:
    app()


__all__ = ["app", "main"]
