"""Fault injection for grids: a run killed midway, a torn results line, two runs into one folder."""
from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cli import app

runner = CliRunner()
ARGS = ["--fusion", "concat,logreg", "--lr", "1e-3,3e-3,1e-2", "--weight-decay", "0,1e-2", "--epochs", "3",
        "--folds", "3", "--jobs", "1", "--precision", "fp32", "--no-progress"]  # 7 configurations


def grid_rows(out) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def make_cache(tmp_path):
    text, image, y, names = synthetic_features("text", n=150)
    return write_feature_cache(tmp_path / "c.h5", text, image, y, label_names=names)


def test_a_killed_grid_resumes_without_redoing_or_duplicating_a_configuration(tmp_path):
    cache, out = make_cache(tmp_path), tmp_path / "g"
    child = subprocess.Popen([sys.executable, "-m", "mmfuse.cli", "grid", str(cache), "--out", str(out), *ARGS],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / "results.csv").is_file()
                                              and (out / "results.csv").read_text().count("\n") >= 3):
            time.sleep(0.05)  # wait for two finished rows (plus the header)
        assert child.poll() is None, child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    before = {r["config_id"] for r in grid_rows(out)}
    assert 2 <= len(before) < 7
    result = runner.invoke(app, ["grid", str(cache), "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    done = int(re.search(rf"resuming {re.escape(str(out))}: (\d+) of 7 configurations already done", result.output)[1])
    assert done >= len(before)  # plus one whose splits were all saved just before the kill, if any
    rows = grid_rows(out)
    ids = [r["config_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 7 and before <= set(ids)
    assert all(None not in r.values() and "" not in (r["macro_f1_mean"],) for r in rows)  # no torn line


def test_a_torn_last_line_is_dropped_and_that_configuration_is_listed_again(tmp_path):
    cache, out = make_cache(tmp_path), tmp_path / "g"
    assert runner.invoke(app, ["grid", str(cache), "--out", str(out), *ARGS]).exit_code == 0
    rows = grid_rows(out)
    text = (out / "results.csv").read_text()
    last = text.splitlines()[-1]
    (out / "results.csv").write_text(text[: len(text) - len(last) // 2 - 1])  # the last line half written
    result = runner.invoke(app, ["grid", str(cache), "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    assert "dropped a torn last line" in result.output and "7 of 7 configurations already done" in result.output
    assert "0 fits in" in result.output  # listed again from its finished splits, not refit
    again = grid_rows(out)
    assert sorted(r["config_id"] for r in again) == sorted(r["config_id"] for r in rows)
    by_id = {r["config_id"]: r for r in rows}
    for r in again:  # the recomputed configuration scores as it did: same seed, same folds
        np.testing.assert_allclose(float(r["macro_f1_mean"]), float(by_id[r["config_id"]]["macro_f1_mean"]))


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mmfuse.cache import acquire_writer_lock
    lock = acquire_writer_lock(Path(sys.argv[1]) / "grid", "grid run")
    print("ready", flush=True)
    time.sleep(120)
""")


def test_a_second_grid_into_the_same_folder_is_refused_naming_the_first(tmp_path):
    cache, out = make_cache(tmp_path), tmp_path / "g"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = runner.invoke(app, ["grid", str(cache), "--out", str(out), *ARGS])
        assert result.exit_code == 1 and f"being written by another grid run (pid {holder.pid}" in result.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert runner.invoke(app, ["grid", str(cache), "--out", str(out), *ARGS]).exit_code == 0  # no stale lock
