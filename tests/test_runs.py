"""Run folders and the files around them: scoring a predictions file against the labels, predictions
written as CSV. From the correctness review (issue 13): each test failed on the code before it."""
from __future__ import annotations

from pathlib import Path

import h5py
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cli import app
from mmfuse.heads import HeadConfig, train_head

runner = CliRunner()


def text_cache(path: Path, n: int = 300, seed: int = 0, identity: str = "x", **changes) -> Path:
    text, image, y, names = synthetic_features("text", n=n, seed=seed)
    return write_feature_cache(path, text, image, y, names, identity=identity, provenance=changes)


def test_score_rejects_an_unknown_tag_with_its_line(tmp_path):
    truth, pred = tmp_path / "truth.txt", tmp_path / "pred.txt"
    truth.write_text("guid,tag\n1,positive\n2,negative\n")
    pred.write_text("guid,tag\n1,positive\n2,postive\n")
    result = runner.invoke(app, ["score", str(pred), str(truth)])
    assert result.exit_code == 1 and "line 3: unknown tag 'postive' for guid 2" in result.output


def test_predict_writes_guids_as_csv(tmp_path):
    cache = text_cache(tmp_path / "train.h5", n=30)
    with h5py.File(cache, "r+") as f:
        f["guid"][0] = "a,b"
    run = tmp_path / "run"
    train_head(cache, HeadConfig(fusion="logreg"), val_split=0, out=run)
    assert runner.invoke(app, ["predict", str(run), str(cache), "--out", str(tmp_path / "p.txt")]).exit_code == 0
    import csv
    with open(tmp_path / "p.txt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1][0] == "a,b" and all(len(r) == 2 for r in rows)
