"""Ensembles of a grid's configurations (mmfuse ensemble): paired per-fold differences to the best member,
pooled out-of-fold scores, nothing that loads back by unpickling. From the correctness review (issue 13)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cli import app

runner = CliRunner()


def text_cache(path: Path, n: int = 300, seed: int = 0, identity: str = "x", **changes) -> Path:
    text, image, y, names = synthetic_features("text", n=n, seed=seed)
    return write_feature_cache(path, text, image, y, names, identity=identity, provenance=changes)


def test_ensemble_reports_paired_fold_differences_and_pooled_scores(tmp_path):
    cache = text_cache(tmp_path / "train.h5")
    g = tmp_path / "g"
    assert runner.invoke(app, ["grid", str(cache), "--out", str(g), "--fusion", "text,concat", "--lr", "3e-3",
                               "--weight-decay", "0", "--epochs", "5", "--folds", "3", "--jobs", "1",
                               "--precision", "fp32", "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["ensemble", str(g), "--top", "2", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "vs the best member per fold" in result.output and "of 3 folds" in result.output
    assert "pooled out-of-fold" in result.output and "optimistic" in result.output
    import json
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert len(m["cv"]["fold_scores"]) == 3 and 0 <= m["cv"]["pooled"] <= 1
    d = m["vs_best_member"][m["meta"]]
    assert d["mean"] == pytest.approx(np.mean(np.subtract(m["cv"]["fold_scores"], m["best_member"]["fold_scores"])))
    assert not list((tmp_path / "e").rglob("*.pkl"))  # nothing that loads back by unpickling
