"""Grids: k-fold CV of every configuration, resume, the Dask backend, plots, the best run, stacking."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cli import app
from mmfuse.ensemble import build_ensemble
from mmfuse.grid import DEFAULT_GRID, expand_grid, heatmap_axis, read_results
from mmfuse.heads import HeadConfig

runner = CliRunner()
GRID = ["--fusion", "concat,text", "--lr", "1e-3,3e-3", "--weight-decay", "0,1e-2", "--epochs", "6",
        "--folds", "3", "--precision", "fp32", "--no-progress"]  # pinned: not the machine's choice


@pytest.fixture
def cache(tmp_path):
    text, image, y, names = synthetic_features("text", n=300)
    return write_feature_cache(tmp_path / "train.h5", text, image, y, names)


def rows_of(path):
    with open(path / "results.csv", newline="") as f:
        return {r["config_id"]: r for r in csv.DictReader(f)}


def test_grid_scores_every_configuration_on_the_same_folds(cache, tmp_path):
    out = tmp_path / "g"
    result = runner.invoke(app, ["grid", str(cache), "--out", str(out), "--jobs", "1", *GRID])
    assert result.exit_code == 0, result.output
    assert "8 configurations x 3 folds = 24 fits" in result.output
    rows = rows_of(out)
    assert len(rows) == 8
    assert {(r["fusion"], r["lr"], r["weight_decay"]) for r in rows.values()} == {
        (f, lr, wd) for f in ("concat", "text") for lr in ("0.001", "0.003") for wd in ("0.0", "0.01")}
    for r in rows.values():
        assert 0 <= float(r["macro_f1_mean"]) <= 1 and float(r["macro_f1_std"]) >= 0
        assert float(r["seconds_per_fit"]) > 0
    fold = np.load(out / "folds.npy")
    assert sorted(np.bincount(fold)) == [100, 100, 100]
    for cid in rows:  # every configuration predicted every row exactly once, out of fold
        oof = np.load(out / "oof" / f"{cid}.npy")
        assert oof.shape == (300, 3) and np.allclose(oof.sum(1), 1, atol=1e-4)
    summary = (out / "summary.md").read_text()
    assert summary.count("\n| ") == 9 and "Picked: the top by mean" in summary  # header + 8 rows
    for png in ("heatmaps.png", "fusions.png"):
        assert (out / png).stat().st_size > 1000
    assert "within one standard error of the top" in summary and "tied with the top" in summary
    assert json.loads((out / "best" / "config.json").read_text())["fusion"] in ("concat", "text")
    pred = runner.invoke(app, ["predict", str(out / "best"), str(cache), "--out", str(tmp_path / "p.txt")])
    assert pred.exit_code == 0 and len((tmp_path / "p.txt").read_text().splitlines()) == 301


def test_grid_resumes_and_skips_finished_configurations(cache, tmp_path):
    out = tmp_path / "g"
    assert runner.invoke(app, ["grid", str(cache), "--out", str(out), "--jobs", "1", *GRID]).exit_code == 0
    first = rows_of(out)
    lines = (out / "results.csv").read_text().splitlines()
    (out / "results.csv").write_text("\n".join(lines[:4]) + "\n")  # as if interrupted after 3 configurations,
    kept = [line.split(",")[0] for line in lines[1:4]]
    lost = [cid for cid in first if cid not in kept]
    for cid in lost[1:]:
        shutil.rmtree(out / "splits" / cid)  # the 4th with its splits done, the others not started
    again = runner.invoke(app, ["grid", str(cache), "--out", str(out), "--jobs", "2", *GRID])
    assert again.exit_code == 0, again.output
    assert "4 of 8 configurations already done (12 of 24 fits)" in again.output and "12 fits in" in again.output
    assert rows_of(out).keys() == first.keys()
    for cid, r in rows_of(out).items():  # recomputed rows match, even in worker processes
        assert r["macro_f1_mean"] == first[cid]["macro_f1_mean"]
    other = runner.invoke(app, ["grid", str(cache), "--out", str(out), *GRID[:-5], "--folds", "4"])
    assert other.exit_code == 1 and "another cache or other folds" in other.output


def test_dask_backend_gives_the_same_table_as_local(cache, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        result = runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "dask"), "--backend", "dask",
                                     "--scheduler", cluster.scheduler_address, *GRID])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "local"), "--jobs", "1", *GRID]).exit_code == 0
    local, dask = rows_of(tmp_path / "local"), rows_of(tmp_path / "dask")
    assert local.keys() == dask.keys()
    for cid in local:
        for k, v in local[cid].items():
            if k != "seconds_per_fit":
                assert dask[cid][k] == v, (cid, k)


def test_grid_from_a_toml_file(cache, tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text('folds = 3\n[grid]\nfusion = ["logreg", "concat"]\nC = [0.01, 1.0]\nepochs = 3\n')
    result = runner.invoke(app, ["grid", str(cache), "--config", str(spec), "--out", str(tmp_path / "g"),
                                 "--lr", "1e-3", "--weight-decay", "0", "--jobs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    # logreg x 2 C; concat ignores C, so its two C values are one configuration
    assert "3 configurations x 3 folds" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[grid]\nlearning_rate = [1]\n')
    result = runner.invoke(app, ["grid", str(cache), "--config", str(bad), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "unknown grid parameter 'learning_rate'" in result.output


def test_expand_grid_drops_duplicates_of_ignored_fields():
    configs = expand_grid({"fusion": ["logreg", "concat", "aligned"], "lr": [1e-3, 1e-2], "align_weight": [0.1, 1.0]})
    assert sum(c.fusion == "logreg" for c in configs) == 1
    assert sum(c.fusion == "concat" for c in configs) == 2
    assert sum(c.fusion == "aligned" for c in configs) == 4
    assert all(isinstance(c, HeadConfig) for c in configs)


def test_ensemble_is_no_worse_than_its_best_member_when_members_err_differently(tmp_path):
    # half the rows carry the label in the text, the other half in the image: the text heads
    # err on the image half and the image heads on the text half
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 3, n)
    text, image = rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(n, 8)).astype(np.float32)
    half = rng.random(n) < 0.5
    text[half, y[half]] += 3.0
    image[~half, y[~half]] += 3.0
    cache = write_feature_cache(tmp_path / "mix.h5", text, image, y)
    result = runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "g"), "--fusion", "text,image",
                                 "--lr", "3e-3", "--weight-decay", "0", "--epochs", "15", "--folds", "3",
                                 "--jobs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    _, m = build_ensemble(tmp_path / "g", top=2)
    assert m["cv"]["macro_f1_mean"] >= m["best_member"]["macro_f1_mean"]
    out = runner.invoke(app, ["ensemble", str(tmp_path / "g"), "--top", "2", "--out", str(tmp_path / "ens")])
    assert out.exit_code == 0, out.output
    assert "best single configuration" in out.output and "mean of probabilities" in out.output
    assert "(mean of probabilities, saved)" in out.output  # the default
    lr = runner.invoke(app, ["ensemble", str(tmp_path / "g"), "--top", "2", "--meta", "lr",
                             "--out", str(tmp_path / "ens-lr")])
    assert lr.exit_code == 0 and "(logistic regression, saved)" in lr.output
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "ens"), str(cache)])
    assert ev.exit_code == 0, ev.output
    pred = runner.invoke(app, ["predict", str(tmp_path / "ens"), str(cache), "--out", str(tmp_path / "p.txt")])
    assert pred.exit_code == 0 and len((tmp_path / "p.txt").read_text().splitlines()) == n + 1
    assert len(read_results(tmp_path / "g")) == 2


def test_grid_folder_refuses_a_re_extracted_cache(cache, tmp_path):
    out = tmp_path / "g"
    assert runner.invoke(app, ["grid", str(cache), "--out", str(out), "--jobs", "1", *GRID]).exit_code == 0
    text, image, y, names = synthetic_features("text", n=300, seed=5)  # same path, other features
    import h5py
    write_feature_cache(tmp_path / "other.h5", text, image, y, names)
    cache.unlink()
    (tmp_path / "other.h5").rename(cache)
    with h5py.File(cache, "r+") as f:
        f.attrs["identity"] = "another-extraction"
    again = runner.invoke(app, ["grid", str(cache), "--out", str(out), "--jobs", "1", *GRID])
    assert again.exit_code == 1 and "another cache or other folds" in again.output
    ens = runner.invoke(app, ["ensemble", str(out), "--out", str(tmp_path / "e")])
    assert ens.exit_code == 1 and "no longer holds the features" in ens.output


def test_precision_choice_follows_the_cpus_bf16_support(monkeypatch):
    from mmfuse import precision as common
    from mmfuse.grid import fast_precision

    monkeypatch.setattr(common, "native_bf16", lambda: False)
    assert {fast_precision()[0] for _ in range(3)} == {"fp32"}  # no timing, no flip
    assert "no native bf16" in fast_precision()[1]
    monkeypatch.setattr(common, "native_bf16", lambda: True)
    choice, reason = fast_precision()
    assert choice in ("fp32", "bf16") and "measured" in reason


def test_torch_kernels_below_avx512_mean_no_native_bf16(monkeypatch):
    import torch

    from mmfuse.extract.common import native_bf16
    from mmfuse.grid import fast_precision

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not native_bf16()
    assert fast_precision() == ("fp32", "this CPU has no native bf16 (torch capability AVX2)")


def test_one_standard_error_rule_picks_the_simplest_tied_configuration():
    from mmfuse.grid import one_se_pick

    rows = [{"config_id": "a", "fusion": "attention", "macro_f1_mean": 0.80, "macro_f1_std": 0.02, "parameters": 900_000},
            {"config_id": "b", "fusion": "logreg", "macro_f1_mean": 0.79, "macro_f1_std": 0.02, "parameters": 5_000},
            {"config_id": "c", "fusion": "text", "macro_f1_mean": 0.70, "macro_f1_std": 0.01, "parameters": 1_000}]
    pick, tied = one_se_pick(rows, folds=5)  # SE of the top: 0.02 / 2 = 0.01 -> bar 0.79
    assert [r["config_id"] for r in tied] == ["a", "b"] and pick["config_id"] == "b"
    pick, tied = one_se_pick([{**rows[0], "macro_f1_std": 0.0}, *rows[1:]], folds=5)
    assert pick["config_id"] == "a" and len(tied) == 1  # nothing within a zero standard error


def test_stacking_with_a_logistic_regression_works_on_two_classes(tmp_path):
    text, image, y, names = synthetic_features("both", n=150)  # two classes: yes, no
    cache = write_feature_cache(tmp_path / "two.h5", text, image, y, names)
    args = ["grid", str(cache), "--out", str(tmp_path / "g"), "--fusion", "concat,late", "--lr", "3e-3",
            "--weight-decay", "0", "--epochs", "3", "--folds", "3", "--jobs", "1", "--precision", "fp32", "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["ensemble", str(tmp_path / "g"), "--top", "2", "--meta", "lr", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output  # scikit-learn's "f1_macro" scorer failed here on two classes


def test_successive_halving_keeps_the_best_configuration_and_resumes(tmp_path):
    """The label is in the text: text-reading heads with a sane lr beat the image head and a tiny lr."""
    text, image, y, names = synthetic_features("text", n=240)
    cache = write_feature_cache(tmp_path / "c.h5", text, image, y, names)
    common = ["--fusion", "concat,image", "--lr", "1e-5,3e-3", "--weight-decay", "0,1e-2", "--epochs", "9", "--folds",
              "3", "--jobs", "1", "--precision", "fp32", "--no-progress"]
    args = ["grid", str(cache), "--out", str(tmp_path / "g"), *common, "--search", "halving"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "8 configurations x 3 folds, successive halving over folds (a full search: 24 fits)" in result.output
    assert "rung 1 of 2: 8 configurations x 1 of 3 splits" in result.output
    assert "rung 2 of 2: 3 configurations x 3 of 3 splits" in result.output
    assert "14 fits in" in result.output  # 8 x 1 + 3 x 2 more, against 24 for the full grid
    last = read_results(tmp_path / "g")  # only configurations that ran every split are rows
    assert len(last) == 3 and {r["fusion"] for r in last} == {"concat"}
    full = runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "f"), *common, "--search", "full"])
    assert full.exit_code == 0 and "24 fits in" in full.output, full.output
    full_rows = {r["config_id"]: r for r in read_results(tmp_path / "f")}
    assert len(full_rows) == 8
    for r in last:  # a finalist has exactly the row and out-of-fold probabilities the full grid gives it
        assert r["macro_f1_mean"] == full_rows[r["config_id"]]["macro_f1_mean"]
        assert np.array_equal(np.load(tmp_path / "g" / "oof" / f"{r['config_id']}.npy"),
                              np.load(tmp_path / "f" / "oof" / f"{r['config_id']}.npy"))
    best_full = min(full_rows.values(), key=lambda r: (-r["macro_f1_mean"], r["config_id"]))  # as the grid ranks
    pick = json.loads((tmp_path / "g" / "best" / "config.json").read_text())
    assert (pick["fusion"], pick["lr"], pick["weight_decay"]) == (
        best_full["fusion"], best_full["lr"], best_full["weight_decay"]) and pick["lr"] == 3e-3
    summary = (tmp_path / "g" / "summary.md").read_text()
    assert "Successive halving over splits: rungs of 1, 3 of 3 splits" in summary
    assert "| rung | splits |" in summary and summary.count(" | 0 | 1 | ") == 5  # the 5 that stopped after 1 split
    # killed in the second rung: one finalist had run only its first split, another its first two
    first, second = last[0]["config_id"], last[1]["config_id"]
    csv_lines = (tmp_path / "g" / "results.csv").read_text().splitlines(keepends=True)
    (tmp_path / "g" / "results.csv").write_text("".join(l for l in csv_lines if not l.startswith((first, second))))
    for cid, kept in ((first, 1), (second, 2)):
        for split in range(kept, 3):
            (tmp_path / "g" / "splits" / cid / f"{split}.npz").unlink()
    (tmp_path / "g" / "splits" / first / "1.npz").write_bytes(b"PK\x03\x04 torn")  # a torn write: runs again
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output and "3 fits in" in again.output  # 2 for the first, 1 for the second
    assert {r["config_id"]: r["macro_f1_mean"] for r in read_results(tmp_path / "g")} == {
        r["config_id"]: r["macro_f1_mean"] for r in last}  # the same survivors, the same scores
    ens = runner.invoke(app, ["ensemble", str(tmp_path / "g"), "--top", "8", "--out", str(tmp_path / "e")])
    assert ens.exit_code == 0, ens.output
    members = json.loads((tmp_path / "e" / "ensemble.json").read_text())["members"]
    assert members == [r["config_id"] for r in sorted(last, key=lambda r: (-r["macro_f1_mean"], r["config_id"]))]
    small = runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "g"), *common[:2], "--lr", "3e-3",
                                "--weight-decay", "0", *common[6:], "--search", "halving"])
    assert small.exit_code == 0, small.output  # a second, smaller halving grid in the same folder
    assert "rung 1 of 2: 2 configurations x 1 of 3 splits" in small.output and "0 fits in" in small.output
    stopped = [line for line in (tmp_path / "g" / "summary.md").read_text().splitlines() if line.startswith("| - |")]
    assert len(stopped) == 1 and "| image |" in stopped[0]  # this run's; the first run's 5 are not listed


def test_split_files_of_other_folds_are_not_read(cache, tmp_path):
    out = tmp_path / "g"
    args = ["grid", str(cache), "--out", str(out), "--jobs", "1", *GRID]
    assert runner.invoke(app, args).exit_code == 0
    for name in ("grid.json", "folds.npy", "results.csv"):
        (out / name).unlink()  # the folder's record gone, its splits/ left behind
    other = runner.invoke(app, args[:-5] + ["--seed", "7", *GRID[-5:]])
    assert other.exit_code == 0, other.output  # other folds (seed 7): every split runs again
    assert "resuming" not in other.output and "24 fits in" in other.output


def test_halving_plans_halve_the_splits_down_to_one():
    from mmfuse.grid import halving_plan

    assert halving_plan(5, 36) == [1, 2, 5] and halving_plan(3, 8) == [1, 3] and halving_plan(10, 200) == [1, 2, 5, 10]
    assert halving_plan(5, 2) == [2, 5] and halving_plan(1, 50) == [1]
    assert halving_plan(15, 36) == [1, 3, 7, 15]  # 3 folds x 5 repeats: no more rungs than 36 -> 1 takes


def test_repeated_k_fold_runs_every_repeat_and_ships_every_split(cache, tmp_path):
    out = tmp_path / "g"
    args = ["grid", str(cache), "--out", str(out), "--jobs", "1", "--fusion", "concat,text", "--lr", "3e-3",
            "--weight-decay", "0", "--epochs", "4", "--folds", "3", "--repeats", "2", "--precision", "fp32",
            "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 configurations x 3 folds x 2 repeats = 12 fits" in result.output
    fold = np.load(out / "folds.npy")
    assert fold.shape == (2, 300) and not np.array_equal(fold[0], fold[1])  # each repeat reshuffled
    assert all(sorted(np.bincount(f)) == [100, 100, 100] for f in fold)
    for cid in rows_of(out):  # the mean of each row's two out-of-fold predictions
        assert np.allclose(np.load(out / "oof" / f"{cid}.npy").sum(1), 1, atol=1e-4)
    assert json.loads((out / "best" / "bagged.json").read_text())["members"] == 6  # 3 folds x 2 repeats
    assert "3-fold stratified CV repeated 2 times" in (out / "summary.md").read_text()
    other = runner.invoke(app, [a if a != "2" else "1" for a in args])  # the same folder, one repeat
    assert other.exit_code == 1 and "3 folds x 2 repeats" in other.output
    ens = runner.invoke(app, ["ensemble", str(out), "--top", "2", "--out", str(tmp_path / "e")])
    assert ens.exit_code == 0, ens.output


def test_the_tied_configurations_averaged_are_scored_against_the_top(tmp_path):
    from mmfuse.metrics import macro_f1

    text, image, y, names = synthetic_features("both", n=240)
    cache = write_feature_cache(tmp_path / "c.h5", text, image, y, names)
    out = tmp_path / "g"
    result = runner.invoke(app, ["grid", str(cache), "--out", str(out), "--jobs", "1", "--fusion", "concat,late,gated",
                                 "--lr", "3e-3", "--weight-decay", "0,1e-2", "--epochs", "5", "--folds", "3",
                                 "--precision", "fp32", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = (out / "summary.md").read_text()
    n_tied = summary.count("| yes |")
    assert n_tied >= 2, summary  # easy data: several configurations tie
    ranked = sorted(read_results(out), key=lambda r: (-r["macro_f1_mean"], r["config_id"]))
    fold = np.load(out / "folds.npy")
    proba = np.mean([np.load(out / "oof" / f"{r['config_id']}.npy") for r in ranked[:n_tied]], axis=0)
    per_fold = [macro_f1(y[fold == k], proba[fold == k].argmax(1), 2) for k in range(3)]
    assert f"The {n_tied} tied configurations averaged (mean of their probabilities) score {np.mean(per_fold):.3f}" in summary
    ahead = sum(a > t for a, t in zip(per_fold, [macro_f1(y[fold == k], np.load(
        out / "oof" / f"{ranked[0]['config_id']}.npy")[fold == k].argmax(1), 2) for k in range(3)]))
    assert f"ahead on {ahead} of 3" in summary
    assert ("Recommended final model: `mmfuse ensemble" in summary) == ("recommended: mmfuse ensemble" in result.output)


def test_the_heatmaps_show_lr_against_the_grid_s_other_main_axis():
    def axis(grid):
        return heatmap_axis([{**asdict(c), "macro_f1_mean": 0.5} for c in expand_grid(grid)])

    assert axis({**DEFAULT_GRID, "dropout": [0, 0.2, 0.5]}) == "dropout"
    assert axis({"fusion": ["concat"], "lr": [1e-3], "hidden": [64, 128, 256], "dropout": [0, 0.5]}) == "hidden"
    assert axis({"fusion": ["concat"], "lr": [1e-3], "weight_decay": [0, 1e-2], "dropout": [0, 0.5]}) == "dropout"
    assert axis(DEFAULT_GRID) == "weight_decay"  # nothing but lr varies: one column (the fallback)


def test_the_cli_and_run_grid_share_one_set_of_defaults(cache, tmp_path, monkeypatch):
    import mmfuse.grid as grid
    from mmfuse import precision as common
    from mmfuse.errors import MmfuseError

    monkeypatch.setattr(common, "native_bf16", lambda: False)  # fp32, with no timing
    seen = {}

    def captured(cache, configs, out, config=None, **options):
        seen.update(configs=configs, config=config, options=options)
        raise MmfuseError("captured")

    monkeypatch.setattr(grid, "run_grid", captured)
    result = runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "g")])
    assert result.exit_code == 1 and "captured" in result.output
    assert "training precision fp32" in result.output and "12 configurations x 5 folds = 60 fits" in result.output
    assert seen["config"] == grid.GridConfig()  # what run_grid(cache, None, out) runs with
    assert seen["configs"] == grid.grid_configs(None, tmp_path / "g", log=lambda s: None)
    assert set(seen["options"]) == {"progress", "log"}


def test_grid_options_come_from_the_command_line_over_the_file_over_the_defaults(tmp_path):
    from dataclasses import FrozenInstanceError

    from mmfuse.grid import GridConfig

    spec = tmp_path / "grid.toml"
    spec.write_text('folds = 3\nseed = 4\njobs = 2\n[grid]\nlr = [1e-3]\nfusion = ["text"]\n')
    setup = GridConfig.from_options(spec, {"fusion": "concat,late", "dropout": None}, folds=None, seed=7, jobs=None,
                                    pick="one-se", scheduler=None)
    assert (setup.folds, setup.repeats, setup.seed, setup.jobs, setup.pick) == (3, 1, 7, 2, "one-se")
    assert setup.axes == {**DEFAULT_GRID, "epochs": [20], "lr": [1e-3], "fusion": ["concat", "late"]}
    assert GridConfig.from_options() == GridConfig()
    with pytest.raises(FrozenInstanceError):
        setup.folds = 5
