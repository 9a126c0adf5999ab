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
from ..data import Columns, CsvFormat, parse_label_names
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
IdCol = Annotated[Optional[str], typer.Option(help="The id column: CSV: the image id [default: ImageID]; Parquet, "
                                               "datasets, WebDataset .json: the guid [default: id, key, ... if there "
                                               "is one, else the row index; WebDataset: the key].")]
LabelsCol = Annotated[Optional[str], typer.Option(help="The labels column [CSV default: Labels; others: label, labels, "
                                                  "cls, ... if there is one]; absent: unlabelled.")]
TextCol = Annotated[Optional[str], typer.Option(help="The text column [CSV default: Caption; others: text, caption, "
                                                "...; WebDataset: KEY.txt, else this .json field].")]
LabelSep = Annotated[Optional[str], typer.Option(help="Separator between labels in a cell (' ': whitespace) [CSV "
                                                 "default: ' '; others: none, a list cell is multi-label].")]
ImageCol = Annotated[Optional[str], typer.Option(help="Parquet / datasets: the image column: bytes, a {bytes, path} "
                                                 "struct or a path [default: image, img, ..., or the one bytes "
                                                 "column; imagefolder: file_name].")]
LabelNames = Annotated[Optional[str], typer.Option(help="The label set in column order, as a comma list (1,2,...,19) "
                                                   "or a file with one name per line; class indices map into it; use "
                                                   "the same for train and test [default: ClassLabel names, else the "
                                                   "labels seen, sorted].")]


def csv_format(images, id_col, labels_col, text_col, label_sep, label_names) -> CsvFormat | None:
    """The CSV options as the reader's CsvFormat (None without --images: another format)."""
    if images is None:
        return None
    return CsvFormat(images, id_col or CSV["id_col"], labels_col or CSV["labels_col"], text_col or CSV["text_col"],
                     CSV["label_sep"] if label_sep is None else label_sep, parse_label_names(label_names))


def table_columns(id_col, labels_col, text_col, label_sep, label_names, image_col) -> Columns:
    """The column options of WebDataset, Parquet and datasets folders (None: found by name)."""
    return Columns(id_col, text_col, labels_col, image_col, label_sep, parse_label_names(label_names))


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
