"""Features out: ``mmfuse export``, a cache as .npy parts or Parquet for tools that do not read HDF5."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..export import FORMATS, ROWS_PER_PART
from ._common import app, choices, user_errors

ExportFormat = choices("ExportFormat", FORMATS)


@app.command("export")
def export_cmd(
    cache: Path = typer.Argument(..., metavar="CACHE", help="A finished feature cache (.h5)."),
    out: Path = typer.Argument(..., metavar="DIR",
                         help="The folder to write (built beside it, renamed into place when complete)."),
    to: ExportFormat = typer.Option(..., help="npy: FEATURE/PART.npy per feature + metadata/PART.parquet (the "
                                    "layout of embedding-reader's parquet_npy); parquet: PART.parquet with the "
                                    "metadata and one float32 list column per feature."),
    feature: Optional[List[str]] = typer.Option(None, help="A feature to export (text/cls, image/pooled, ...; "
                                                "repeatable); default: all of the cache's."),
    drop_skipped: bool = typer.Option(False, help="Leave out the rows extraction skipped (by default they are "
                                      "kept, with skipped=true, their reason and zero vectors)."),
    rows_per_part: int = typer.Option(ROWS_PER_PART, help="Rows per part file."),
    overwrite: bool = typer.Option(False, help="Replace an earlier export at DIR (never a folder export did not "
                                   "make; kept until the new export is complete)."),
):
    """Export a cache's features and metadata as .npy parts or Parquet, for retrieval, clustering or other
    trainers (no h5py needed to read them); _manifest.json traces the export back to the cache."""
    from ..export import export_cache

    with user_errors(f"nothing was written to {out}"):
        m = export_cache(cache, out, to.value, feature or None, drop_skipped, rows_per_part, overwrite,
                         log=typer.echo)
    dims = ", ".join(f"{n} {d['dim']}" for n, d in m["features"].items())
    typer.echo(f"wrote {out}: {m['rows']} rows ({m['skipped_rows']} skipped) in {len(m['parts'])} "
               f"part{'s' * (len(m['parts']) != 1)}; {dims}")
