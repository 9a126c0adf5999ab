"""See the data and the results: mmfuse inspect (EDA) and mmfuse report (one static HTML page)."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from conftest import write_course
from mmfuse.cli import app

runner = CliRunner()
SECTIONS = ("data", "caches", "ablation", "runs", "grids", "ensembles", "finetune")


def test_inspect_finds_balance_lengths_sizes_failures_duplicates_and_leaks(tmp_path, tiny_bert):
    course = write_course(tmp_path / "course", corrupt=False)
    data = course / "data"
    shutil.copy(data / "101.jpg", data / "105.jpg")  # a duplicate image within train (101 and 105)
    (data / "106.txt").write_text((data / "101.txt").read_text())  # a duplicate text within train
    shutil.copy(data / "100.jpg", data / "112.jpg")  # a train image again in test: a leak
    (data / "104.jpg").write_bytes(b"not an image at all")  # fails to open
    out = tmp_path / "eda"
    result = runner.invoke(app, ["inspect", str(course), "--out", str(out), "--text-model", str(tiny_bert),
                                 "--max-length", "6", "--no-progress"])
    assert result.exit_code == 0, result.output
    eda = json.loads((out / "eda.json").read_text())
    train, test = eda["splits"]
    assert (train["rows"], test["rows"]) == (12, 3)
    assert train["labels"] == {"positive": 6, "neutral": 2, "negative": 4} and not test["labelled"]
    assert [x["guid"] for x in train["encoding_fallbacks"]] == ["102"]  # the GB18030 text
    assert [x["guid"] for x in train["failed_images"]] == ["104"] and "UnidentifiedImageError" in train["failed_images"][0]["error"]
    assert ["101", "105"] in [sorted(g) for g in train["duplicate_images"]]
    assert ["101", "106"] in [sorted(g) for g in train["duplicate_texts"]]
    assert ["100", "112"] in [sorted(g) for g in eda["leaks"]["images"]]
    assert train["truncated"] == sum(t > 6 for t in train["tokens"]) > 0  # tokens of the tiny BERT's tokenizer
    assert sorted(train["formats"]) == ["JPEG", "PNG"] and set(train["modes"]) == {"RGB", "RGBA"}  # (104 and 105 replaced)
    summary = (out / "summary.md").read_text()
    assert "| positive | 6 (50.0%) |" in summary and "images in both splits (same bytes): 1" in summary
    assert "104: " in summary and "texts that were not UTF-8: 1 (8.3%)" in summary
    for png in ("labels.png", "text_length.png", "image_size.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_reads_a_multi_label_csv(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (30 + 10 * i, 20), (i * 40, 0, 0)).save(folder / f"{i}.jpg")
    (folder / "3.jpg").write_bytes((folder / "0.jpg").read_bytes())  # a duplicate image
    (tmp_path / "data.csv").write_text('ImageID,Labels,Caption\n0.jpg,1 3,a dog\n1.jpg,2,"a cat, asleep"\n'
                                       "2.jpg,1,a dog\n3.jpg,,nothing here\n")
    out = tmp_path / "eda"
    result = runner.invoke(app, ["inspect", str(tmp_path / "data.csv"), "--images", str(folder), "--out", str(out),
                                 "--text-model", str(tmp_path / "no-such-model"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "counting words instead of tokens" in result.output  # the tokenizer could not be loaded: says so
    (split,) = json.loads((out / "eda.json").read_text())["splits"]
    assert split["multilabel"] and split["rows"] == 4
    assert split["labels"] == {"1": 2, "2": 1, "3": 1} and split["labels_per_row"] == {"0": 1, "1": 2, "2": 1}
    assert split["tokens"] == [2, 3, 2, 2] and split["widths"] == [30, 40, 50, 30]
    assert [sorted(g) for g in split["duplicate_images"]] == [["0.jpg", "3.jpg"]]
    assert [sorted(g) for g in split["duplicate_texts"]] == [["0.jpg", "2.jpg"]]
    assert "labels per row: 0: 1, 1: 2, 2: 1" in (out / "summary.md").read_text()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_bert):
    """The quick start in miniature: extract, heads, a grid, an ensemble, inspect; then the report."""
    root = tmp_path_factory.mktemp("pipeline")
    course = write_course(root / "course", n=36, corrupt=False)
    steps = [["extract", str(course), "--out", str(root / "features/train.h5"), "--text-model", str(tiny_bert),
              "--image-model", "resnet18", "--image-weights", "none", "--batch-size", "8", "--num-workers", "0",
              "--max-length", "32", "--no-progress"]]
    steps += [["train-head", str(root / "features/train.h5"), "--fusion", f, "--epochs", "3", "--out",
               str(root / "runs" / f)] for f in ("concat", "weighted", "text", "image")]
    steps += [["grid", str(root / "features/train.h5"), "--fusion", "concat,late", "--lr", "1e-3,3e-3", "--weight-decay",
               "0", "--epochs", "3", "--folds", "2", "--jobs", "1", "--precision", "fp32", "--out", str(root / "grid"),
               "--no-progress"],
              ["ensemble", str(root / "grid"), "--top", "2", "--out", str(root / "runs" / "ensemble")],
              ["inspect", str(course), "--out", str(root / "eda"), "--text-model", str(tiny_bert), "--no-progress"],
              ["report", str(root), "--out", str(root / "report.html"), "--title", "tiny pipeline"]]
    for step in steps:
        result = runner.invoke(app, step)
        assert result.exit_code == 0, (step, result.output)
    return root


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.imgs.append(attrs)
        if tag in ("script", "link"):
            raise AssertionError(f"the report must need no {tag}: {attrs}")

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_one_self_contained_page_with_every_section(pipeline):
    from mmfuse.report import discover

    found = discover([pipeline, pipeline.resolve(), pipeline / "runs"])  # one folder given three ways
    assert len(found.run) == 4 and len(found.grid) == len(found.ensemble) == len(found.eda) == len(found.cache) == 1
    page = Page()
    page.feed((pipeline / "report.html").read_text())
    assert all(s in page.ids for s in SECTIONS)
    text = " ".join(page.text)
    for run in ("runs/concat", "runs/weighted", "runs/text", "runs/image", "runs/ensemble", "grid", "features/train.h5"):
        assert run in text, run
    assert "text 0." in text  # the weighted head's learned modality weights
    assert "Leak check between the splits" in text and "top 10 of 4 configurations" in text
    alts = [img["alt"] for img in page.imgs]
    assert any("ablation" in a for a in alts) and any("heatmaps" in a for a in alts)
    assert sum("confusion matrix" in a for a in alts) == 4 and any("label balance" in a for a in alts)
    for img in page.imgs:  # every image embedded, and a PNG
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def chromium() -> str | None:
    """Debian's chromium, installed here when absent (root and apt-get needed); None when it cannot be."""
    path = shutil.which("chromium")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, env=env, timeout=900)
        path = shutil.which("chromium")
    return path


PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.target && e.target.src)), true);
const error = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); error(...a); };
window.addEventListener("load", () => {
  const widths = [...document.images].map(i => i.complete ? i.naturalWidth : 0);
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify({widths, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_a_headless_browser(pipeline):
    browser = chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed and could not be installed here (needs root and apt-get)")
    page = pipeline / "report.html"
    probed = pipeline / "probed.html"  # the report plus a probe script; the report itself has none
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1366,2400"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=300)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:] + dom.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe["errors"] == []  # no console errors
    assert probe["widths"] and all(w > 0 for w in probe["widths"])  # every image loaded
    shot = pipeline / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=300)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")
