"""Fault injection for files from someone else or changed since: nothing mmfuse loads back runs code, and
a cache whose data set changed is flagged."""
from __future__ import annotations

import pickle

from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cli import app

runner = CliRunner()


class Exploit:
    """Unpickling this runs ``open(marker, "w")``: what a planted file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_in_a_run_folder_is_refused_and_never_runs(tmp_path):
    text, image, y, names = synthetic_features("text", n=120)
    cache = write_feature_cache(tmp_path / "c.h5", text, image, y, label_names=names)
    assert runner.invoke(app, ["train-head", str(cache), "--fusion", "concat", "--epochs", "2",
                               "--out", str(tmp_path / "run")]).exit_code == 0
    marker = tmp_path / "pwned"
    with open(tmp_path / "run" / "model.pt", "wb") as f:
        pickle.dump({"net.1.weight": Exploit(marker)}, f)
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(cache), "--out", str(tmp_path / "p.txt")])
    assert result.exit_code == 1 and "refusing to load" in result.output and "model.pt" in result.output
    assert not marker.exists() and "Traceback" not in result.output


def test_run_folders_hold_no_pickles(tmp_path):
    text, image, y, names = synthetic_features("text", n=120)
    cache = write_feature_cache(tmp_path / "c.h5", text, image, y, label_names=names)
    for fusion in ("concat", "logreg"):
        assert runner.invoke(app, ["train-head", str(cache), "--fusion", fusion, "--epochs", "2",
                                   "--out", str(tmp_path / fusion)]).exit_code == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".h5", ".lock")]
    assert {p.suffix for p in files} <= {".json", ".npz", ".pt", ".csv", ".png"}, files
    import numpy as np
    for p in files:  # .npz open without pickle; .pt load as tensors only
        if p.suffix == ".npz":
            np.load(p, allow_pickle=False)
        if p.suffix == ".pt":
            import torch
            torch.load(p, weights_only=True)


def test_info_warns_when_the_data_changed_since_extraction(clean_course_dir, extract_args, tmp_path):
    out = tmp_path / "c.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, out)).exit_code == 0
    assert "warning" not in runner.invoke(app, ["info", str(out)]).output
    (clean_course_dir / "data" / "105.txt").write_text("an edited text")
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0 and "warning: the data set at" in result.output and "changed since" in result.output
