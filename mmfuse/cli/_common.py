"""What every command shares: the app, one-line errors, choices from the library's own values, the
defaults read from the library's configs, and options declared once (``Annotated`` aliases)."""
from __future__ import annotations

import contextlib
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..shards import SHARDINGS
from ..data import CsvFormat, parse_label_names
from ..errors import MmfuseError
from ..extract import STORE_DTYPES
from ..finetune import FineTuneConfig
from ..grid import PICKS, REFITS, SEARCHES
from ..heads import HeadConfig, list_heads
from ..heads.config import (CLASS_WEIGHTS, COMBINES, IMAGE_FEATURES, LOSSES, MONITORS, TEXT_FEATURES, THRESHOLDS,
                             ZEROSHOT_FROM)
from ..precision import PRECISIONS

app = typer.Typer(help="Image+text classification on cached features.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None)  # help texts are plain: "[default: ...]" in them is text, not markup


@contextlib.contextmanager
def user_errors(interrupted: str = "nothing was written"):
    """Print library errors as one line and exit 1, instead of a traceback; Ctrl-C prints one line saying
    what was kept (``interrupted``) and exits 130."""
    try:
        yield
    except MmfuseError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.secho(f"interrupted: {interrupted}", fg="yellow", err=True)
        raise typer.Exit(130) from None


def choices(name: str, values) -> type[Enum]:
    """A str Enum of the library's own allowed values, so the CLI's choices cannot drift from them."""
    return Enum(name, {v: v for v in values}, type=str)


OnError = choices("OnError", ("raise", "skip"))
Precision = choices("Precision", PRECISIONS)
StoreDtype = choices("StoreDtype", STORE_DTYPES)
Loss = choices("Loss", LOSSES)
ClassWeight = choices("ClassWeight", CLASS_WEIGHTS)
TextFeature = choices("TextFeature", TEXT_FEATURES)
ImageFeature = choices("ImageFeature", IMAGE_FEATURES)
Zero = choices("Zero", ("text", "image"))
Refit = choices("Refit", REFITS)
Pick = choices("Pick", PICKS)
Search = choices("Search", SEARCHES)
Monitor = choices("Monitor", MONITORS)
Thresholds = choices("Thresholds", THRESHOLDS)
Combine = choices("Combine", COMBINES)
ZeroshotFrom = choices("ZeroshotFrom", ZEROSHOT_FROM)
Sharding = choices("Sharding", SHARDINGS)
Fusion = choices("Fusion", list_heads())  # the registry's heads

D = HeadConfig()  # the CLI's defaults are the configs' defaults
FT = FineTuneConfig()
CSV = {f.name: f.default for f in fields(CsvFormat) if f.name != "images"}  # the CSV reader's defaults

# options that several commands take, declared once
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
# the head's options that train-head and finetune share
TextVector = Annotated[TextFeature, typer.Option(help="Cached text vector: cls, mean, pooled, proj (a two-tower "
                                                 "model's projected embedding), or auto (proj where the cache has "
                                                 "it, else the encoder's trained pooling where its folder says, "
                                                 "else cls).")]
ImageVector = Annotated[ImageFeature, typer.Option(help="Cached image vector: pooled, cls, mean (ViT-like models), "
                                                   "proj (a two-tower model's projected embedding), or auto (proj "
                                                   "where the cache has it, else pooled).")]
Hidden = Annotated[int, typer.Option(help="The head's MLP / projection width.")]
DropoutRate = Annotated[float, typer.Option(help="The head's dropout.")]
LossKind = Annotated[Loss, typer.Option(help="ce (softmax cross-entropy) or hinge (multiclass SVM).")]
ClassWeighting = Annotated[ClassWeight, typer.Option(help="balanced (inverse class frequency) or none.")]
Images = Annotated[Optional[Path], typer.Option(help="CSV data: the folder of the images named by the id column.")]
IdCol = Annotated[str, typer.Option(help="CSV data: the image id column.")]
LabelsCol = Annotated[str, typer.Option(help="CSV data: the labels column (absent: an unlabelled file).")]
TextCol = Annotated[str, typer.Option(help="CSV data: the text column.")]
LabelSep = Annotated[str, typer.Option(help="CSV data: separator between labels in a cell (' ': whitespace).")]
LabelNames = Annotated[Optional[str], typer.Option(help="CSV data: the label set in column order, as a comma list "
                                                   "(1,2,...,19) or a file with one name per line; use the same for "
                                                   "train and test [default: the labels seen, sorted].")]


def csv_format(images, id_col, labels_col, text_col, label_sep, label_names) -> CsvFormat | None:
    """The CSV options as the reader's CsvFormat (None without --images: a course-format folder)."""
    if images is None:
        return None
    return CsvFormat(images, id_col, labels_col, text_col, label_sep, parse_label_names(label_names))


def _number_or_auto(value: str, option: str):
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise MmfuseError(f"{option} takes a number or 'auto', not {value!r}") from None


def _layers(value: str, option: str) -> int:
    if value == "all":
        return -1
    try:
        return int(value)
    except ValueError:
        raise MmfuseError(f"{option} takes a number or 'all', not {value!r}") from None
