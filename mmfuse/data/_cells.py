"""Reading one image cell of a Parquet or Arrow file at a time, as extraction asks for them (in row order,
each DataLoader worker its own batches), without decoding a row group per image.

Parquet: each process keeps one cursor, a stream of ``BATCH_ROWS``-row batches of the image column of
one row group (pages read as they are needed), and moves it forward; asking for an earlier row, another
row group or another file starts a new one. So a row group is decoded once per process that reads from
it, and only ``BATCH_ROWS`` images are held at a time. Arrow files (``datasets.save_to_disk``) are
memory-mapped once per process; a cell is sliced out of the mapping.

The state belongs to one process: a DataLoader worker forked from the main process starts its own (a
file handle shared across a fork would share its read position).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

BATCH_ROWS = 32  # Parquet rows decoded at a time
_state: dict = {"pid": None}


def _fresh() -> dict:
    if _state["pid"] != os.getpid():
        _state.clear()
        _state.update(pid=os.getpid(), cursor=None, arrow={})
    return _state


class _Cursor:
    """The batches of one Parquet row group's image column, read forward."""

    def __init__(self, path: Path, row_group: int, column: str):
        import pyarrow.parquet as pq

        self.key = (path, row_group, column)
        # buffer_size: column chunks are read page by page rather than whole
        f = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        self.batches = f.iter_batches(BATCH_ROWS, row_groups=[row_group], columns=[column])
        self.start, self.batch = 0, None

    def get(self, row: int):
        while self.batch is None or row >= self.start + len(self.batch):
            if self.batch is not None:
                self.start += len(self.batch)
            self.batch = next(self.batches, None)
            if self.batch is None:
                raise DataError(f"row {row} of row group {self.key[1]} is past its end: the file changed since "
                                "it was read")
        return self.batch.column(0)[row - self.start].as_py()


def arrow_table(path: Path):
    """The table of an Arrow IPC file (stream or file format, as ``datasets`` writes it), memory-mapped."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source).read_all()


def read_cell(ref) -> bytes:
    """The encoded image bytes of a Parquet or Arrow :class:`~mmfuse.data.ImageRef`."""
    state = _fresh()
    try:
        if ref.kind == "parquet":
            cursor = state["cursor"]
            if cursor is None or cursor.key != (ref.container, ref.row_group, ref.column) or ref.row < cursor.start:
                cursor = state["cursor"] = _Cursor(ref.container, ref.row_group, ref.column)
            value = cursor.get(ref.row)
        elif ref.kind == "arrow":
            if ref.container not in state["arrow"]:
                state["arrow"][ref.container] = arrow_table(ref.container)
            value = state["arrow"][ref.container].column(ref.column)[ref.row].as_py()
        else:
            raise ValueError(f"unknown image reference kind {ref.kind!r}")
    except (OSError, KeyError) as e:
        raise DataError(f"{ref}: cannot read the image cell: {e}") from None
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)):
        raise DataError(f"{ref}: the image cell holds no bytes (the file changed since it was read)")
    return bytes(value)
