"""Fault injection on ``mmfuse report``: folders from someone else (HTML in their files, plots that are links
to other files) and damaged files. The page is written for what can be read, escapes everything it read, and
embeds only PNG files inside the folders it scanned.

``REPORT_FAULTS`` is the table for the README: (fault, what mmfuse does, the test that injects it).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cli import app

runner = CliRunner()
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"

REPORT_FAULTS = [  # (fault, what mmfuse does, the test that injects it)
    ("HTML or a `<script>` in a file the report reads (grid.json's fields, a fusion or label name in config.json, "
     "results.csv or eda.json, the title)", "every value read from a file is escaped: it shows as text and never "
     "runs", "test_html_in_the_files_read_shows_as_text_and_never_runs"),
    ("a plot (`curves.png`, ...) that is a symbolic link to another file, a text file or a FIFO",
     "not embedded: the page says `curves.png left out: ...` and the report warns; only PNG files inside the "
     "scanned folder are embedded", "test_a_plot_that_is_a_link_or_not_a_png_is_left_out_with_a_note"),
    ("one run, grid, inspect or ensemble folder with a truncated or empty (`{}`) JSON file, or a value that is "
     "not a number in `metrics.json` or `results.csv`", "that folder is left out with one warning line naming the "
     "file and what is wrong, and listed at the top of the page; the page is written for the rest (exit code 0)",
     "test_a_damaged_file_leaves_out_its_folder_only"),
    ("every folder given is damaged", "the page is still written, listing them; nothing mmfuse wrote at all "
     "is a one-line error", "test_when_every_folder_is_damaged_the_page_lists_them"),
]


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags, self.imgs, self.text = [], [], []
        self.feed(text)
        self.text = " ".join(self.text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def report(*paths: Path, out: Path, title: str = "faults") -> tuple[object, str]:
    result = runner.invoke(app, ["report", *map(str, paths), "--out", str(out), "--title", title])
    return result, out.read_text() if out.is_file() else ""


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


def _eda(folder: Path, labels: dict) -> Path:
    folder.mkdir(parents=True)
    split = {"split": "train", "rows": 60, "labelled": True, "labels": labels, "encoding_fallbacks": [],
             "failed_images": [], "duplicate_images": [], "duplicate_texts": [], "truncated": 0}
    (folder / "eda.json").write_text(json.dumps({"source": "course", "tokenizer": "words", "max_length": 32,
                                                 "splits": [split], "leaks": {}}))
    return folder


def _ensemble(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "ensemble.json").write_text(json.dumps({"members": ["a", "b"], "meta": "mean"}))
    cv = {"metric": "macro_f1", "macro_f1_mean": 0.8, "macro_f1_std": 0.02}
    (folder / "metrics.json").write_text(json.dumps({
        "members": ["a", "b"], "meta": "mean", "cv": cv, "best_member": {**cv, "fusion": "concat"},
        "vs_best_member": {"mean": {"mean": 0.01, "std": 0.01, "ahead": 2, "folds": 2}}}))
    return folder


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Two of each: head runs, grids, inspect folders and ensembles, on a small synthetic cache."""
    from mmfuse.grid import expand_grid, run_grid
    from mmfuse.heads import HeadConfig, train_head

    root = tmp_path_factory.mktemp("results")
    text, image, y, names = synthetic_features("text", n=60)
    cache = write_feature_cache(root / "features" / "train.h5", text, image, y, names)
    for i, fusion in enumerate(("concat", "text"), start=1):
        train_head(cache, HeadConfig(fusion=fusion, epochs=2), out=root / "runs" / f"run-{i}")
    run_grid(cache, expand_grid({"fusion": ["concat", "late"], "epochs": [2], "precision": ["fp32"]}),
             root / "grid-1", folds=2, jobs=1, refit_best=False, progress=False, log=lambda s: None)
    shutil.copytree(root / "grid-1", root / "grid-2")
    for i in (1, 2):
        _eda(root / f"eda-{i}", {"positive": 20, "neutral": 20, "negative": 20})
        _ensemble(root / f"ensemble-{i}")
    return root


@pytest.fixture
def copy(results, tmp_path) -> Path:
    return Path(shutil.copytree(results, tmp_path / "results", symlinks=True))


def test_html_in_the_files_read_shows_as_text_and_never_runs(copy, tmp_path):
    grid = copy / "grid-1"
    info = json.loads((grid / "grid.json").read_text())
    (grid / "grid.json").write_text(json.dumps({**info, "rows": SCRIPT, "cache": IMG, "precision": [SCRIPT]}))
    (grid / "results.csv").write_text((grid / "results.csv").read_text().replace(",late,", f",{IMG},"))
    config = json.loads((copy / "runs" / "run-1" / "config.json").read_text())
    (copy / "runs" / "run-1" / "config.json").write_text(json.dumps({**config, "fusion": IMG}))
    metrics = json.loads((copy / "runs" / "run-1" / "metrics.json").read_text())
    (copy / "runs" / "run-1" / "metrics.json").write_text(json.dumps({**metrics, "text_feature": SCRIPT,
                                                                       "modality_weights": {IMG: 0.5}}))
    shutil.rmtree(copy / "eda-1")
    eda = json.loads((_eda(copy / "eda-1", {IMG: 30, "neutral": 30}) / "eda.json").read_text())
    (copy / "eda-1" / "eda.json").write_text(json.dumps({**eda, "source": SCRIPT, "tokenizer": IMG}))

    result, page = report(copy, out=tmp_path / "report.html", title=SCRIPT)
    assert result.exit_code == 0, result.output
    assert "<script" not in page.lower() and "<img src=x" not in page  # no tag from the data
    parsed = Page(page)
    assert "script" not in parsed.tags
    assert all(img["src"].startswith("data:image/png;base64,") for img in parsed.imgs)
    assert parsed.text.count(SCRIPT) >= 4 and parsed.text.count(IMG) >= 5  # shown as text instead
    assert f"{SCRIPT} rows" in parsed.text and f"{IMG} 30" in parsed.text  # grid.json's rows; a label name
    assert warnings_of(result) == []


def test_a_plot_that_is_a_link_or_not_a_png_is_left_out_with_a_note(copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-TOKEN-4242 " * 10)
    run = copy / "runs" / "run-1"
    (run / "curves.png").unlink()
    (run / "curves.png").symlink_to(secret)  # a link to any readable file
    (run / "confusion.png").write_text("TEXT-PRETENDING-TO-BE-A-PNG " * 10)  # a text file named .png
    (copy / "runs" / "run-2" / "curves.png").unlink()
    os.mkfifo(copy / "runs" / "run-2" / "curves.png")  # would hang a plain read
    (copy / "grid-1" / "fusions.png").unlink()
    (copy / "grid-1" / "fusions.png").symlink_to(copy / "grid-2" / "fusions.png")  # even a real PNG elsewhere

    result, page = report(copy, out=tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    for leaked in (secret.read_bytes(), (run / "confusion.png").read_bytes()):
        assert base64.b64encode(leaked)[:24].decode() not in page
    text = Page(page).text
    assert "curves.png left out: a symbolic link" in text and "confusion.png left out: not a PNG file" in text
    assert "curves.png left out: not a regular file" in text and "fusions.png left out: a symbolic link" in text
    assert "only PNG files inside the scanned folder are embedded" in text
    warned = warnings_of(result)
    assert len(warned) == 4 and any(str(run / "curves.png") in w for w in warned)
    assert sum(img["alt"].endswith("training curves") for img in Page(page).imgs) == 0  # both runs' curves out
    assert any(img["alt"].endswith("confusion matrix") for img in Page(page).imgs)  # run-2's is a PNG: kept


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def set_json(path: Path, *keys, value) -> None:
    data = json.loads(path.read_text())
    inner = data
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = value
    path.write_text(json.dumps(data))


DAMAGES = {  # id -> (the file, under the second folder of its kind; how to damage it; what the warning says)
    "truncated metrics.json": ("runs/run-2/metrics.json", truncate, "metrics.json is damaged"),
    "truncated config.json": ("runs/run-2/config.json", truncate, "config.json is damaged"),
    "metrics.json is {}": ("runs/run-2/metrics.json", lambda p: p.write_text("{}"), "no 'fusion' in it"),
    "a string for a score": ("runs/run-2/metrics.json", lambda p: set_json(p, "validation", "macro_f1", value="high"),
                             "validation.macro_f1 is 'high', not a number"),
    "truncated grid.json": ("grid-2/grid.json", truncate, "grid.json is damaged"),
    "grid.json is {}": ("grid-2/grid.json", lambda p: p.write_text("{}"), "no 'cache', 'rows', 'folds' in it"),
    "a word in results.csv": ("grid-2/results.csv",
                              lambda p: p.write_text(p.read_text().replace(",2,", ",two,", 1)), "not a"),
    "truncated eda.json": ("eda-2/eda.json", truncate, "eda.json is damaged"),
    "a list for eda.json's labels": ("eda-2/eda.json", lambda p: set_json(p, "splits", 0, "labels", value=[1]),
                                     "'list' object has no attribute 'items'"),
    "truncated ensemble metrics.json": ("ensemble-2/metrics.json", truncate, "metrics.json is damaged"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_file_leaves_out_its_folder_only(copy, tmp_path, damage):
    file, inject, says = DAMAGES[damage]
    inject(copy / file)
    bad, good = copy / file.rsplit("/", 1)[0], copy / file.rsplit("/", 1)[0].replace("-2", "-1")

    result, page = report(copy, out=tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    (warned,) = warnings_of(result)  # one line
    assert str(copy / file) in warned and says in warned and f"skipped {bad}:" in warned
    left_out, sections = page.split('<section id="data">')
    assert str(bad) in left_out and str(bad) not in sections  # listed at the top, nowhere else
    assert str(good) in sections
    assert "Traceback" not in result.output


def test_when_every_folder_is_damaged_the_page_lists_them(copy, tmp_path):
    from mmfuse.report import build_report

    for run in ("run-1", "run-2"):
        truncate(copy / "runs" / run / "metrics.json")
    logged = []
    out = build_report([copy / "runs"], tmp_path / "report.html", log=logged.append)  # the log: any callable
    text = Page(out.read_text()).text
    assert "Left out: 2 folder(s)" in text and "No head runs could be read" in text
    assert len(logged) == 2 and all("metrics.json is damaged" in line for line in logged)
    (tmp_path / "empty").mkdir()
    result, _ = report(tmp_path / "empty", out=tmp_path / "nothing.html")
    assert result.exit_code == 1 and "nothing mmfuse wrote was found" in result.output


def test_every_report_fault_names_a_test_here():
    assert all(callable(globals().get(name)) for _, _, name in REPORT_FAULTS)
