"""``python -m mmfuse.cli``: the same as the ``mmfuse`` command."""
from . import main

main()
