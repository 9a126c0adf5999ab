"""Fault injection on what mmfuse writes: two runs into one folder, a second run into a used one, a run into
another kind of folder, a failed replacement, demo data over a real data set, a user's run in a grid's
best/, stray files beside shards, damaged grid and cache files, and Ctrl-C. Nothing a user made is lost,
and nothing half-written takes a finished output's name."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import synthetic_features, write_course, write_feature_cache
from mmfuse.cache import FeatureCache, partial_path
from mmfuse.cli import app

runner = CliRunner()
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
GRID = ["--fusion", "concat,logreg", "--lr", "1e-3", "--epochs", "2", "--folds", "2", "--jobs", "1",
        "--precision", "fp32", "--no-progress"]


def make_cache(tmp_path, n=150):
    text, image, y, names = synthetic_features("text", n=n)
    return write_feature_cache(tmp_path / "c.h5", text, image, y, label_names=names)


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output, result.output
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden partial folders/files and lock files beside outputs."""
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or p.name.endswith(".lock"))


def test_two_train_heads_started_together_into_one_folder_never_interleave(tmp_path):
    cache, out = make_cache(tmp_path), tmp_path / "run"
    cmd = [sys.executable, "-m", "mmfuse.cli", "train-head", str(cache), "--out", str(out), "--epochs", "5"]
    procs = [subprocess.Popen(cmd + ["--fusion", fusion], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for fusion in ("logreg", "concat")]
    outputs = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    assert sorted(code for code, _ in outputs) == [0, 1], outputs
    refused = next(text for code, text in outputs if code == 1)
    assert refused.count("error:") == 1 and "Traceback" not in refused
    assert "being written by another" in refused or "already holds a head run" in refused
    config, metrics = (json.loads((out / n).read_text()) for n in ("config.json", "metrics.json"))
    assert config["fusion"] == metrics["fusion"]  # one run's files, whole
    assert leftovers(tmp_path) == []


def test_a_second_run_into_a_used_folder_needs_overwrite_and_keeps_nothing_of_the_first(tmp_path):
    cache, out = make_cache(tmp_path), tmp_path / "run"
    first = runner.invoke(app, ["train-head", str(cache), "--out", str(out), "--fusion", "concat", "--epochs", "3"])
    assert first.exit_code == 0 and (out / "curves.png").is_file() and (out / "model.pt").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    error = one_line_error(runner.invoke(app, ["train-head", str(cache), "--out", str(out), "--fusion", "logreg"]))
    assert "already holds a head run" in error and "--overwrite" in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    second = runner.invoke(app, ["train-head", str(cache), "--out", str(out), "--fusion", "logreg", "--overwrite"])
    assert second.exit_code == 0, second.output
    assert not (out / "model.pt").exists() and not (out / "history.csv").exists() and not (out / "curves.png").exists()
    assert json.loads((out / "metrics.json").read_text())["fusion"] == "logreg"
    assert runner.invoke(app, ["compare", str(out)]).output.count("logreg") == 1
    assert leftovers(tmp_path) == []


def test_train_head_into_a_fine_tune_run_or_a_folder_of_other_files_is_refused(tmp_path):
    cache = make_cache(tmp_path)
    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "finetune.json").write_text("{}")
    (ft / "head.pt").write_bytes(b"weights")
    error = one_line_error(runner.invoke(app, ["train-head", str(cache), "--out", str(ft), "--fusion", "logreg"]))
    assert "already holds a fine-tune run, not a head run" in error
    assert (ft / "head.pt").read_bytes() == b"weights"
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        error = one_line_error(runner.invoke(app, ["train-head", str(cache), "--out", str(mine), "--fusion",
                                                   "logreg", *extra]))
        assert "mmfuse did not make" in error
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_run_that_fails_midway_leaves_the_old_run_whole_and_nothing_else(tmp_path, monkeypatch):
    import mmfuse.heads.run as run_module

    cache, out = make_cache(tmp_path), tmp_path / "run"
    assert runner.invoke(app, ["train-head", str(cache), "--out", str(out), "--fusion", "logreg"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(run_module, "plot_history", crash)  # after the weights are saved, before metrics.json
    result = runner.invoke(app, ["train-head", str(cache), "--out", str(out), "--fusion", "concat", "--epochs",
                                 "2", "--overwrite"])
    assert isinstance(result.exception, RuntimeError)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_extract_overwrite_keeps_the_finished_cache_until_the_new_one_is_complete(clean_course_dir, extract_args,
                                                                                   tmp_path):
    out = tmp_path / "train.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, out)).exit_code == 0
    identity = FeatureCache(out).identity
    (clean_course_dir / "data" / "105.jpg").write_bytes(b"not an image")  # the new run fails midway
    error = one_line_error(runner.invoke(app, extract_args(clean_course_dir, out, "--max-length", "16",
                                                           "--overwrite")))
    assert "cannot decode image of guid 105" in error
    assert FeatureCache(out).identity == identity and FeatureCache(out).complete  # the old cache, whole
    assert partial_path(out).is_file()  # the new one's rows so far, under a name of its own
    result = runner.invoke(app, extract_args(clean_course_dir, out, "--max-length", "16", "--overwrite",
                                             "--on-error", "skip"))
    assert result.exit_code == 0, result.output
    assert FeatureCache(out).identity != identity and FeatureCache(out).provenance["text"]["max_length"] == 16
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("train")) == ["train.h5"]


def test_merge_takes_shard_files_only_and_a_finished_extraction_leaves_no_sidecar(clean_course_dir, extract_args,
                                                                                  tmp_path):
    out = tmp_path / "sh.h5"
    for rank in (0, 1):
        assert runner.invoke(app, extract_args(clean_course_dir, out, "--shard", f"{rank}/2")).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "course") == ["sh.shard-0-of-2.h5", "sh.shard-1-of-2.h5"]
    (tmp_path / "sh.shard-0-of-2.h5.lock").write_text("{}")  # what an older version left beside its shards
    (tmp_path / "sh.shard-1-of-2.h5.partial").write_bytes(b"x")
    stray = sorted(str(p) for p in tmp_path.glob("sh.shard-*"))  # the shell's glob of the natural command
    result = runner.invoke(app, ["merge", *stray, "--out", str(tmp_path / "all.h5")])
    assert result.exit_code == 0, result.output
    assert "ignored 2 file(s) that are not shard caches" in result.output and "merged 2 shards" in result.output
    assert len(FeatureCache(tmp_path / "all.h5")) == 12


def test_demo_data_never_replaces_a_real_data_set(tmp_path):
    real = write_course(tmp_path / "real", corrupt=False)
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    for extra in ([], ["--overwrite"]):
        error = one_line_error(runner.invoke(app, ["demo-data", str(real), "--n-train", "30", "--n-test", "6", *extra]))
        assert "mmfuse did not make" in error
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == before
    demo = tmp_path / "demo"
    assert runner.invoke(app, ["demo-data", str(demo), "--n-train", "30", "--n-test", "6"]).exit_code == 0
    assert "already holds a demo data set" in one_line_error(runner.invoke(app, ["demo-data", str(demo)]))
    again = runner.invoke(app, ["demo-data", str(demo), "--n-train", "40", "--n-test", "6", "--overwrite"])
    assert again.exit_code == 0 and (demo / "train.txt").read_text().count("\n") == 41


def test_a_grid_never_deletes_a_best_folder_it_did_not_write(tmp_path):
    cache, out = make_cache(tmp_path), tmp_path / "g"
    assert runner.invoke(app, ["grid", str(cache), "--out", str(out), *GRID]).exit_code == 0
    assert (out / "best" / "grid-pick.json").is_file()
    again = runner.invoke(app, ["grid", str(cache), "--out", str(out), *GRID])  # the grid's own best/: rewritten
    assert again.exit_code == 0, again.output
    user_run = tmp_path / "mine"
    assert runner.invoke(app, ["train-head", str(cache), "--out", str(user_run), "--fusion", "logreg"]).exit_code == 0
    (user_run / "notes.txt").write_text("my notes")
    os.rename(out / "best", tmp_path / "old-best")
    os.rename(user_run, out / "best")
    error = one_line_error(runner.invoke(app, ["grid", str(cache), "--out", str(out), *GRID]))
    assert f"{out / 'best'} holds files a grid did not write" in error
    assert (out / "best" / "notes.txt").read_text() == "my notes" and (out / "results.csv").is_file()
    other = tmp_path / "not-a-grid"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    assert "not a grid's" in one_line_error(runner.invoke(app, ["grid", str(cache), "--out", str(other), *GRID]))


@pytest.mark.parametrize("damage", ["zero-byte folds.npy", "truncated grid.json", "a word in results.csv"])
def test_damaged_grid_files_are_one_line_errors_naming_them(damage, tmp_path):
    cache, out = make_cache(tmp_path), tmp_path / "g"
    assert runner.invoke(app, ["grid", str(cache), "--out", str(out), *GRID]).exit_code == 0
    if damage == "zero-byte folds.npy":
        (out / "folds.npy").write_bytes(b"")
        name = "folds.npy"
    elif damage == "truncated grid.json":
        (out / "grid.json").write_text((out / "grid.json").read_text()[:40])
        name = "grid.json"
    else:
        text = (out / "results.csv").read_text().splitlines()
        cells = text[1].split(",")
        cells[[i for i, c in enumerate(text[0].split(",")) if c == "macro_f1_mean"][0]] = "high"
        (out / "results.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
        name = "results.csv line 2"
    for args in (["grid", str(cache), "--out", str(out), *GRID], ["ensemble", str(out), "--out", str(tmp_path / "e")]):
        assert name in one_line_error(runner.invoke(app, args))


def test_info_on_a_damaged_cache_is_one_line(tmp_path):
    path = make_cache(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["skip_reason"]
    error = one_line_error(runner.invoke(app, ["info", str(path)]))
    assert str(path) in error and "skip_reason" in error and "--overwrite" in error


def test_ctrl_c_in_extract_says_what_was_kept_and_how_to_resume(clean_course_dir, extract_args, tmp_path,
                                                               monkeypatch):
    import importlib

    extract_package = importlib.import_module("mmfuse.extract")  # the package (mmfuse.extract is also the function)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(extract_package, "encode_images", interrupted)
    out = tmp_path / "train.h5"
    result = runner.invoke(app, extract_args(clean_course_dir, out))
    assert result.exit_code == 130
    lines = [line for line in result.output.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "train.h5.partial" in lines[0] and "re-run the same command to resume" in lines[0]
    assert FeatureCache.progress(out)["text"] == 12  # the texts computed before Ctrl-C are kept


@pytest.mark.slow
def test_ctrl_c_while_grid_workers_start_prints_one_line(tmp_path):
    cache, out = make_cache(tmp_path, n=300), tmp_path / "g"
    args = [sys.executable, "-m", "mmfuse.cli", "grid", str(cache), "--out", str(out), "--fusion", "concat",
            "--lr", "1e-4,3e-4,1e-3,3e-3", "--epochs", "30", "--folds", "3", "--jobs", "2", "--precision", "fp32",
            "--no-progress"]
    child = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert "configurations" in child.stdout.readline()  # the grid has started; its workers are starting
    time.sleep(1.0)
    os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = child.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert child.returncode == 130 and len(lines) == 1 and lines[0].startswith("interrupted:"), err
    again = runner.invoke(app, ["grid", str(cache), "--out", str(out), *args[7:]])
    assert again.exit_code == 0, again.output


# (fault, what mmfuse does, the test that injects it): the README's table of output faults
OUTPUT_FAULTS = [
    ("two `train-head` runs started together into one folder", "one writes the run, the other stops with one line "
     "(another writer, or the folder holds a run); the folder's config.json and metrics.json are one run's",
     "test_two_train_heads_started_together_into_one_folder_never_interleave"),
    ("a second `train-head` into a used folder", "refused without `--overwrite`; with it, the new run replaces the "
     "folder whole (no model.pt, history.csv or curves.png of the first is left)",
     "test_a_second_run_into_a_used_folder_needs_overwrite_and_keeps_nothing_of_the_first"),
    ("`train-head --out` a fine-tune run, or a folder of the user's own files", "refused in one line; a folder "
     "mmfuse did not make is never replaced, even with `--overwrite`",
     "test_train_head_into_a_fine_tune_run_or_a_folder_of_other_files_is_refused"),
    ("a run that fails after its weights are saved (a plot crashing)", "the old run stays as it was; no partial "
     "folder or lock is left", "test_a_run_that_fails_midway_leaves_the_old_run_whole_and_nothing_else"),
    ("`extract --overwrite` that fails midway", "the finished cache stays under its name until the new one is "
     "complete (written as `CACHE.partial`)",
     "test_extract_overwrite_keeps_the_finished_cache_until_the_new_one_is_complete"),
    ("`mmfuse merge sh.shard-*` with lock and unfinished files among the shards", "merges the shard files and names "
     "the others it ignored; a finished extraction leaves no sidecar file",
     "test_merge_takes_shard_files_only_and_a_finished_extraction_leaves_no_sidecar"),
    ("`demo-data` into a real data set", "refused, even with `--overwrite`; a demo folder is replaced only with it",
     "test_demo_data_never_replaces_a_real_data_set"),
    ("a train-head run with the user's notes in `GRID/best`", "the grid stops with one line and keeps it (and its "
     "results); it replaces only a `best/` a grid wrote", "test_a_grid_never_deletes_a_best_folder_it_did_not_write"),
    ("a zero-byte `folds.npy`, a truncated `grid.json`, a word in `results.csv`", "one line naming the file (and "
     "line) in `grid` and `ensemble`, never `Aborted.`", "test_damaged_grid_files_are_one_line_errors_naming_them"),
    ("a cache file with `format=mmfuse-cache` but a part missing", "`info` says in one line what is missing and "
     "to extract again with `--overwrite`", "test_info_on_a_damaged_cache_is_one_line"),
    ("Ctrl-C during extraction", "one line: the rows computed so far are kept in `CACHE.partial`, re-run the same "
     "command to resume; exit 130", "test_ctrl_c_in_extract_says_what_was_kept_and_how_to_resume"),
    ("Ctrl-C while grid workers start", "one line (workers start with SIGINT ignored and are stopped by the grid); "
     "the same command resumes", "test_ctrl_c_while_grid_workers_start_prints_one_line"),
    ("a kill between the two renames of a replacement (where the one-step exchange is not available)", "the next "
     "writer puts the old output back and removes the partial one",
     "test_a_kill_between_the_two_renames_of_a_replacement_puts_the_old_output_back"),
    ("a truncated, empty or non-number `metrics.json` given to `compare`", "one line naming the file",
     "test_compare_names_a_damaged_metrics_json_in_one_line"),
    ("an `extract --overwrite` interrupted, then the same command again", "it resumes the new cache from "
     "`CACHE.partial` (the finished rows are not computed again) while the old cache stays; `info` shows the new "
     "one's progress", "test_an_interrupted_overwrite_resumes_and_info_shows_the_new_cache_being_written"),
    ("a target whose name holds `[`, `*` or `?`; a regular file named `best` in a grid folder", "another "
     "target's temporary files are never taken for its own; the file is kept and the grid stops with one line",
     "test_temporary_names_of_one_target_never_match_another_and_a_file_at_best_is_kept"),
]


def test_a_kill_between_the_two_renames_of_a_replacement_puts_the_old_output_back(tmp_path):
    """Where the one-step exchange (renameat2) is not available, a replacement is two renames; a kill between
    them leaves the old output at .NAME.old-PID and the new one at .NAME.partial-PID: the next writer takes
    the lock, puts the old one back and removes the partial one."""
    from mmfuse.outputs import new_folder

    target = tmp_path / "run"
    (tmp_path / ".run.old-4242").mkdir()
    (tmp_path / ".run.old-4242" / "head.json").write_text("{}")
    (tmp_path / ".run.partial-4243").mkdir()
    with pytest.raises(Exception, match="already holds a head run"):
        with new_folder(target, "head run"):
            pass
    assert (target / "head.json").read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("damage", ['{"fusion": "concat"', "{}", '{"fusion": "concat", "fit_seconds": 1, '
                                    '"validation": {"macro_f1": "high"}}'])
def test_compare_names_a_damaged_metrics_json_in_one_line(damage, tmp_path):
    cache, run = make_cache(tmp_path), tmp_path / "run"
    assert runner.invoke(app, ["train-head", str(cache), "--out", str(run), "--fusion", "logreg"]).exit_code == 0
    (run / "metrics.json").write_text(damage)
    assert str(run / "metrics.json") in one_line_error(runner.invoke(app, ["compare", str(run)]))


def test_an_interrupted_overwrite_resumes_and_info_shows_the_new_cache_being_written(clean_course_dir, extract_args,
                                                                                     tmp_path, monkeypatch):
    import importlib

    out = tmp_path / "train.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, out)).exit_code == 0
    old = FeatureCache(out).identity
    extract_package = importlib.import_module("mmfuse.extract")
    real = extract_package.encode_images

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(extract_package, "encode_images", interrupted)
    new = extract_args(clean_course_dir, out, "--max-length", "16", "--overwrite")
    assert runner.invoke(app, new).exit_code == 130
    assert FeatureCache(out).identity == old and FeatureCache.progress(out, {"pid": 1})["complete"] is False
    monkeypatch.setattr(extract_package, "encode_images", real)
    result = runner.invoke(app, new)  # the same command again: it resumes the new cache
    assert result.exit_code == 0 and "text 0 in" in result.output, result.output  # the texts are not redone
    assert FeatureCache(out).provenance["text"]["max_length"] == 16 and not partial_path(out).exists()


def test_temporary_names_of_one_target_never_match_another_and_a_file_at_best_is_kept(tmp_path):
    from mmfuse.outputs import new_folder

    other = tmp_path / ".exp1.partial-999"  # another writer's folder in progress
    other.mkdir()
    with new_folder(tmp_path / "exp[1]", "head run") as tmp:
        (tmp / "head.json").write_text("{}")
    assert other.is_dir() and (tmp_path / "exp[1]" / "head.json").is_file()
    cache, out = make_cache(tmp_path), tmp_path / "g"
    assert runner.invoke(app, ["grid", str(cache), "--out", str(out), *GRID]).exit_code == 0
    import shutil
    shutil.rmtree(out / "best")
    (out / "best").write_text("user data")
    assert "is a file or a link" in one_line_error(runner.invoke(app, ["grid", str(cache), "--out", str(out), *GRID]))
    assert (out / "best").read_text() == "user data"
