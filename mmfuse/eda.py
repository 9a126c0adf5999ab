"""Look at a data set before training: labels, text lengths, image sizes, encodings, failures, duplicates.

One pass over the records; images are opened for their header only (PIL reads size, format and mode
without decoding pixels) and hashed for duplicates. Writes PNGs, ``summary.md`` and ``eda.json``
(the numbers, for ``mmfuse report``) into the output folder.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .data import Columns, CsvFormat, DataSet, data_kind, read_data
from .outputs import new_folder

IMAGE_BINS = (64, 128, 224, 256, 512, 1024)  # image sides worth knowing: below the model's crop, above


def _split_stats(ds: DataSet, tokenizer, max_length: int, progress: bool) -> dict:
    """The numbers of one split; lists of per-row values are kept for the plots."""
    chars, tokens, widths, heights = [], [], [], []
    formats, modes, per_label, labels_per_row = Counter(), Counter(), Counter(), Counter()
    failed, fallback, image_hash, text_rows = [], [], defaultdict(list), defaultdict(list)
    for r in tqdm(ds.records, desc=f"inspect {ds.split}", unit="row", disable=not progress):
        chars.append(len(r.text))
        if r.encoding != "utf-8":
            fallback.append({"guid": r.guid, "encoding": r.encoding})
        for t in r.labels:
            per_label[t] += 1
        labels_per_row[len(r.labels)] += 1
        if r.text.strip():
            text_rows[" ".join(r.text.lower().split())].append(r.guid)
        try:
            raw = r.image_path.read_bytes()  # a file, or an image inside a tar / Parquet / Arrow file
            with Image.open(io.BytesIO(raw)) as img:  # the header only: no pixels decoded
                widths.append(img.width)
                heights.append(img.height)
                formats[img.format or "?"] += 1
                modes[img.mode] += 1
            image_hash[hashlib.sha1(raw).hexdigest()].append(r.guid)
        except Exception as e:  # noqa: BLE001 - every unreadable file is listed with its error
            failed.append({"guid": r.guid, "file": str(r.image_path), "error": f"{type(e).__name__}: {e}"})
    texts, limit, n_cut = [r.text for r in ds.records], None, 0
    if tokenizer is not None:  # cut first, as extraction does: a 27 MB text would take a minute and gigabytes
        from .extract.text import cut, max_chars

        limit = max_chars(max_length)
        n_cut, texts = sum(len(t) > limit for t in texts), [cut(t, limit) for t in texts]
        tokens = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
    else:
        tokens = [len(t.split()) for t in texts]
    return {
        "split": ds.split, "file": str(ds.split_file), "rows": len(ds.records), "multilabel": ds.multilabel,
        "labelled": ds.labelled and any(r.labels for r in ds.records),
        "labels": {n: per_label.get(n, 0) for n in ds.label_names} | {k: v for k, v in per_label.items()
                                                                      if k not in ds.label_names},
        "labels_per_row": dict(sorted(labels_per_row.items())),
        "chars": chars, "tokens": tokens, "truncated": int(np.sum(np.array(tokens) > max_length)),
        "max_chars": limit, "cut": n_cut,
        "widths": widths, "heights": heights, "formats": dict(formats), "modes": dict(modes),
        "encoding_fallbacks": fallback, "failed_images": failed,
        "record_errors": [{"guid": r.guid, "error": r.error, "source": r.source} for r in ds.records if r.error],
        "duplicate_images": [g for g in image_hash.values() if len(g) > 1],
        "duplicate_texts": [g for g in text_rows.values() if len(g) > 1],
        "_image_hash": image_hash, "_text_rows": text_rows,
    }


def inspect_data(source: str | Path, out: str | Path, *, csv_format: CsvFormat | None = None,
                 columns: Columns | None = None, splits: tuple[str, ...] | None = None, tokenizer=None,
                 tokenizer_name: str = "words", max_length: int = 128, progress: bool = True,
                 log: Callable[[str], None] = print, overwrite: bool = False) -> Path:
    """EDA of a course folder (both splits, and the leak check between them), a CSV file, or WebDataset /
    Parquet / datasets data (``columns``; the ``train`` split, or ``splits``) into ``out``;
    returns the path of ``summary.md``. ``tokenizer``: a Hugging Face tokenizer (None: words). ``out`` is
    written beside itself and renamed into place when complete; an existing one is replaced only with
    ``overwrite``."""
    out = Path(out)
    with new_folder(out, "inspect folder", overwrite) as tmp:
        _inspect(source, tmp, csv_format, columns, splits, tokenizer, tokenizer_name, max_length, progress)
    log(f"wrote {out / 'summary.md'} and {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}")
    return out / "summary.md"


def _inspect(source, out: Path, csv_format, columns, splits, tokenizer, tokenizer_name: str, max_length: int,
             progress: bool) -> None:
    if splits is None:
        splits = ("train",) if data_kind(source, "train", csv_format) != "course" else tuple(
            s for s, f in (("train", "train.txt"), ("test", "test_without_label.txt")) if (Path(source) / f).is_file())
    stats = [_split_stats(read_data(source, s, csv_format, columns), tokenizer, max_length, progress) for s in splits]
    leaks = {}
    if len(stats) == 2:
        a, b = stats
        leaks = {"images": [a["_image_hash"][h] + b["_image_hash"][h] for h in a["_image_hash"] if h in b["_image_hash"]],
                 "texts": [a["_text_rows"][t] + b["_text_rows"][t] for t in a["_text_rows"] if t in b["_text_rows"]]}
    _plots(stats, out, tokenizer_name, max_length)
    public = [{k: v for k, v in s.items() if not k.startswith("_")} for s in stats]
    (out / "eda.json").write_text(json.dumps({"source": str(Path(source).resolve()), "tokenizer": tokenizer_name,
                                              "max_length": max_length, "splits": public, "leaks": leaks}) + "\n")
    (out / "summary.md").write_text(_summary(source, public, leaks, tokenizer_name, max_length))


def _pct(n: int, total: int) -> str:
    return f"{n} ({100 * n / max(total, 1):.1f}%)"


def _summary(source, stats: list[dict], leaks: dict, tokenizer_name: str, max_length: int) -> str:
    lines = [f"# Data set {source}\n"]
    for s in stats:
        n = s["rows"]
        tok, ch = np.array(s["tokens"] or [0]), np.array(s["chars"] or [0])
        lines += [f"## {s['split']}: {n} rows ({s['file']})\n"]
        if s["labelled"]:
            lines += ["| label | rows |", "|---|---:|"] + [f"| {k} | {_pct(v, n)} |" for k, v in s["labels"].items()]
            if s["multilabel"]:
                lines += ["", "labels per row: " + ", ".join(f"{k}: {v}" for k, v in s["labels_per_row"].items())]
        else:
            lines += ["unlabelled"]
        w, h = np.array(s["widths"] or [0]), np.array(s["heights"] or [0])
        lines += ["",
                  f"- text length ({tokenizer_name} tokens): median {np.median(tok):.0f}, 95th percentile "
                  f"{np.percentile(tok, 95):.0f}, max {tok.max()}; longer than --max-length {max_length}: "
                  f"{_pct(s['truncated'], n)}"
                  + (f" ({s['cut']} text(s) over {s['max_chars']} characters counted on their first "
                     f"{s['max_chars']}: a lower bound)" if s.get("cut") else ""),
                  f"- text length (characters): median {np.median(ch):.0f}, max {ch.max()}; empty: "
                  f"{_pct(int(np.sum(ch == 0)), n)}",
                  f"- texts that were not UTF-8: {_pct(len(s['encoding_fallbacks']), n)}"
                  + (" (" + ", ".join(f"{e} {c}" for e, c in Counter(x['encoding'] for x in s['encoding_fallbacks']).items())
                     + ")" if s["encoding_fallbacks"] else ""),
                  (f"- image size: width median {np.median(w):.0f} (min {w.min()}, max {w.max()}), height median "
                   f"{np.median(h):.0f} (min {h.min()}, max {h.max()}); shorter side below 224 px: "
                   f"{_pct(int(np.sum(np.minimum(w, h) < 224)), len(s['widths']))}" if s["widths"]
                   else "- image size: no image could be opened"),
                  "- image formats: " + ", ".join(f"{k} {v}" for k, v in s["formats"].items())
                  + "; modes: " + ", ".join(f"{k} {v}" for k, v in s["modes"].items()),
                  f"- images that failed to open: {len(s['failed_images'])}"
                  + "".join(f"\n  - {x['guid']}: {x['file']}: {x['error']}" for x in s["failed_images"][:20]),
                  f"- rows with a record error (missing file, duplicate id, ...): {len(s['record_errors'])}"
                  + "".join(f"\n  - {x['guid']} ({x['source']}): {x['error']}" for x in s["record_errors"][:20]),
                  f"- duplicate images (same bytes) within the split: {len(s['duplicate_images'])} groups"
                  + "".join(f"\n  - {', '.join(g[:8])}" for g in s["duplicate_images"][:10]),
                  f"- duplicate texts within the split: {len(s['duplicate_texts'])} groups"
                  + "".join(f"\n  - {', '.join(g[:8])}" for g in s["duplicate_texts"][:10]), ""]
    if leaks:
        lines += ["## Leak check between the splits\n",
                  f"- images in both splits (same bytes): {len(leaks['images'])}"
                  + "".join(f"\n  - {', '.join(g[:8])}" for g in leaks["images"][:10]),
                  f"- texts in both splits: {len(leaks['texts'])}"
                  + "".join(f"\n  - {', '.join(g[:8])}" for g in leaks["texts"][:10]), ""]
    lines += ["Plots: " + ", ".join(f"`{p}`" for p in ("labels.png", "text_length.png", "image_size.png")), ""]
    return "\n".join(lines)


def _plots(stats: list[dict], out: Path, tokenizer_name: str, max_length: int) -> None:
    from .plots import PLAIN, pyplot as _plt

    plt = _plt()
    labelled = [s for s in stats if s["labelled"]]
    if labelled:
        fig, axes = plt.subplots(1, 1 + labelled[0]["multilabel"], figsize=(5.5 * (1 + labelled[0]["multilabel"]), 3.6),
                                 squeeze=False)
        ax = axes[0, 0]
        names = list(labelled[0]["labels"])
        for k, s in enumerate(labelled):
            ax.bar(np.arange(len(names)) + 0.4 * k, [s["labels"].get(n, 0) for n in names], 0.4, label=s["split"])
        ax.set_xticks(np.arange(len(names)) + 0.2 * (len(labelled) - 1), names, rotation=30, ha="right", **PLAIN)
        ax.set_ylabel("rows")
        ax.set_title("label balance")
        ax.legend()
        if labelled[0]["multilabel"]:
            per = labelled[0]["labels_per_row"]
            axes[0, 1].bar([int(k) for k in per], list(per.values()), color="C2")
            axes[0, 1].set_xlabel("labels per row")
            axes[0, 1].set_ylabel("rows")
            axes[0, 1].set_title(f"labels per row ({labelled[0]['split']})")
        fig.tight_layout()
        fig.savefig(out / "labels.png", dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for s in stats:
        axes[0].hist(s["tokens"], bins=40, alpha=0.6, label=s["split"])
        axes[1].hist(s["chars"], bins=40, alpha=0.6, label=s["split"])
    axes[0].axvline(max_length, color="k", ls="--", lw=1, label=f"--max-length {max_length}")
    axes[0].set_xlabel(f"{tokenizer_name} tokens", **PLAIN)  # a model folder's name
    axes[1].set_xlabel("characters")
    for ax in axes:
        ax.set_ylabel("texts")
        ax.legend()
    axes[0].set_title("text length (tokens)")
    axes[1].set_title("text length (characters)")
    fig.tight_layout()
    fig.savefig(out / "text_length.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for s in stats:
        axes[0].scatter(s["widths"], s["heights"], s=6, alpha=0.5, label=s["split"])
        axes[1].hist(np.minimum(s["widths"], s["heights"]) if s["widths"] else [], bins=40, alpha=0.6, label=s["split"])
    axes[0].set_xlabel("width (px)")
    axes[0].set_ylabel("height (px)")
    axes[0].set_title("image sizes")
    axes[1].axvline(224, color="k", ls="--", lw=1, label="224 px crop")
    axes[1].set_xlabel("shorter side (px)")
    axes[1].set_ylabel("images")
    axes[1].set_title("shorter side")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "image_size.png", dpi=110)
    plt.close(fig)
