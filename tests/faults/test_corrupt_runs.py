"""Damaged run folders: each truncated, emptied, edited or mixed-up file of a head, logreg or bagged run is
one ``error:`` line naming the file from ``predict`` and ``evaluate`` (exit 1), never a traceback or
click's ``Aborted.`` (which is what an EOFError from an empty file turned into)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cli import app
from mmfuse.heads import BaggedHead, FeatureSet, Head, HeadConfig, train_head

runner = CliRunner()
FAST = dict(epochs=3, hidden=16, batch_size=64)

FAULTS_TABLE = [  # (fault, what mmfuse does, the test that injects it)
    ("a truncated, emptied or non-JSON `head.json`, `config.json` or `bagged.json` in a run folder",
     "`predict` / `evaluate` stop with one line naming the file and what is wrong (no JSONDecodeError traceback)",
     "test_a_damaged_run_file_is_one_line_naming_it"),
    ("`head.json` = `{}`, or a field of the wrong type or length (label names, classes, thresholds)",
     "one line naming `head.json` and the field", "test_a_damaged_run_file_is_one_line_naming_it"),
    ("a truncated or zero-byte `model.pt`, `scaler.npz` or `logreg.npz`", "one line naming the file (an empty file "
     "no longer prints click's bare `Aborted.`)", "test_a_damaged_run_file_is_one_line_naming_it"),
    ("`dims` edited in `head.json`, or a `model.pt` / `logreg.npz` from another run", "one line naming `head.json` "
     "and `scaler.npz` (or the weights file and its first tensor of another shape), not a 51-line size mismatch",
     "test_a_damaged_run_file_is_one_line_naming_it"),
    ("a bagged run whose `bagged.json` counts more folds than there are, or a fold copied from another run",
     "one line naming the fold", "test_a_damaged_run_file_is_one_line_naming_it"),
]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_json(name: str, **changes):
    def edit(path: Path) -> None:
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
    edit.__name__ = name
    return edit


# (run kind, file in the run folder, damage, what the error line must say besides the file's name)
CASES = {
    "head.json truncated": ("concat", "head.json", truncate, "damaged"),
    "head.json empty": ("concat", "head.json", lambda p: p.write_bytes(b""), "damaged"),
    "head.json empty object": ("concat", "head.json", lambda p: p.write_text("{}"), "no 'label_names'"),
    "head.json a list": ("concat", "head.json", lambda p: p.write_text("[1, 2]"), "expected a JSON object"),
    "head.json label_names a string": ("concat", "head.json", edit_json("n", label_names="abc"), "label_names"),
    "head.json thresholds too short": ("concat", "head.json", edit_json("t", thresholds=[0.5]), "thresholds"),
    "head.json dims edited": ("concat", "head.json", edit_json("d", dims={"text": 10, "image": 12}), "do not match"),
    "config.json truncated": ("concat", "config.json", truncate, "damaged"),
    "config.json empty": ("concat", "config.json", lambda p: p.write_bytes(b""), "damaged"),
    "config.json unknown fusion": ("concat", "config.json", edit_json("f", fusion="nope"), "fusion must be one of"),
    "config.json hidden a string": ("concat", "config.json", edit_json("h", hidden="64"), "hidden is '64', expected int"),
    "model.pt truncated": ("concat", "model.pt", truncate, "damaged"),
    "model.pt empty": ("concat", "model.pt", lambda p: p.write_bytes(b""), "ends early"),
    "model.pt of another width": ("concat", "model.pt", "other", "has shape"),
    "scaler.npz truncated": ("concat", "scaler.npz", truncate, "not a zip file"),
    "scaler.npz empty": ("concat", "scaler.npz", lambda p: p.write_bytes(b""), "ends early"),
    "scaler.npz missing an array": ("concat", "scaler.npz", lambda p: np.savez(p, text_mean=np.zeros(16)), "no array"),
    "logreg.npz truncated": ("logreg", "logreg.npz", truncate, "not a zip file"),
    "logreg.npz empty": ("logreg", "logreg.npz", lambda p: p.write_bytes(b""), "ends early"),
    "logreg.npz of other shapes": ("logreg", "logreg.npz", lambda p: np.savez(p, coef=np.zeros((3, 5)), intercept=np.zeros(3),
                                                                           classes=np.arange(3)), "5 features wide"),
    "logreg head.json dims edited": ("logreg", "head.json", edit_json("d", dims={"text": 20, "image": 8}), "do not match"),
    "bagged.json truncated": ("bagged", "bagged.json", truncate, "damaged"),
    "bagged.json empty": ("bagged", "bagged.json", lambda p: p.write_bytes(b""), "damaged"),
    "bagged.json members a string": ("bagged", "bagged.json", edit_json("m", members="2"), "members"),
    "bagged.json one fold too many": ("bagged", "folds/2", edit_json("m", members=3), "not a complete head run folder"),
    "a fold from another run": ("bagged", "folds/1", "other-fold", "differ from folds/0"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained run folders (concat, logreg, a two-fold bagged head), a narrower concat run, and a cache."""
    root = tmp_path_factory.mktemp("runs")
    text, image, y, names = synthetic_features("text", n=120)
    cache = write_feature_cache(root / "c.h5", text, image, y, names)
    narrow = write_feature_cache(root / "narrow.h5", text[:, :8], image, y, names)
    out = {"cache": cache}
    for kind in ("concat", "logreg"):
        train_head(cache, HeadConfig(fusion=kind, **FAST), out=root / kind)
        out[kind] = root / kind
    train_head(narrow, HeadConfig(fusion="concat", **FAST), out=root / "narrow")
    out["narrow"] = root / "narrow"
    X = FeatureSet.from_cache(cache)
    BaggedHead([Head(HeadConfig(fusion="concat", seed=k, **FAST)).fit(X[k::2]) for k in range(2)]).save(root / "bagged")
    out["bagged"] = root / "bagged"
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_run_file_is_one_line_naming_it(runs, tmp_path, case):
    kind, name, damage, says = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(runs[kind], run)
    if damage == "other":  # the weights of a head trained on 8-wide text features
        shutil.copy(runs["narrow"] / "model.pt", run / "model.pt")
    elif damage == "other-fold":
        shutil.rmtree(run / "folds" / "1")
        shutil.copytree(runs["narrow"], run / "folds" / "1")
    elif name.startswith("folds/"):
        damage(run / "bagged.json")
    else:
        damage(run / name)
    for command in (["predict", str(run), str(runs["cache"]), "--out", str(tmp_path / "p.txt")],
                    ["evaluate", str(run), str(runs["cache"])]):
        result = runner.invoke(app, command)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1, (case, result.output, result.exception)
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.output)
        assert str(run / name) in lines[0] and says in lines[0], (case, lines[0])
        assert "Traceback" not in result.output and "Aborted" not in result.output


def test_the_undamaged_runs_predict(runs, tmp_path):
    for kind in ("concat", "logreg", "bagged"):
        result = runner.invoke(app, ["predict", str(runs[kind]), str(runs["cache"]), "--out", str(tmp_path / f"{kind}.txt")])
        assert result.exit_code == 0, (kind, result.output)
        assert len((tmp_path / f"{kind}.txt").read_text().splitlines()) == 121
