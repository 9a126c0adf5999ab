"""Grids: fresh features per cache identity, what ships (best/) is what was scored, out-of-fold rows from
models that never saw them, refit modes, forced bf16 training. From the correctness review (issue 13):
each test failed on the code before it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cache import FeatureCache
from mmfuse.cli import app
from mmfuse.grid import _features, expand_grid, read_results, run_grid
from mmfuse.heads import BaggedHead, FeatureSet, Head
from mmfuse.runs import load_run

runner = CliRunner()


def text_cache(path: Path, n: int = 300, seed: int = 0, identity: str = "x", **changes) -> Path:
    text, image, y, names = synthetic_features("text", n=n, seed=seed)
    return write_feature_cache(path, text, image, y, names, identity=identity, provenance=changes)


def test_a_cache_re_extracted_to_the_same_path_is_read_again(tmp_path):
    path = text_cache(tmp_path / "train.h5", identity="first")
    first = _features(path, "cls").text.copy()
    path.unlink()
    text_cache(path, seed=9, identity="second")
    fresh = _features(path, "cls").text
    assert not np.allclose(first, fresh)
    np.testing.assert_array_equal(fresh, FeatureCache(path).features("text/cls"))


def test_best_holds_the_fold_models_whose_out_of_fold_predictions_were_scored(tmp_path):
    cache = text_cache(tmp_path / "train.h5")
    result = run_grid(cache, expand_grid({"fusion": ["concat"], "epochs": [6], "precision": ["fp32"]}),
                      tmp_path / "g", folds=3, jobs=1, progress=False, log=lambda s: None)
    best = load_run(result.best_run)
    assert isinstance(best, BaggedHead) and len(best.members) == 3
    fold = np.load(tmp_path / "g" / "folds.npy")
    oof = np.load(tmp_path / "g" / "oof" / f"{result.rows[0]['config_id']}.npy")
    data = FeatureSet.from_cache(cache)
    for k, member in enumerate(best.members):
        np.testing.assert_allclose(member.predict_proba(data.subset(np.flatnonzero(fold == k))), oof[fold == k],
                                   atol=1e-6)


def test_full_refit_repeats_the_fold_fits_schedule_in_steps(tmp_path):
    cache = text_cache(tmp_path / "train.h5")
    result = run_grid(cache, expand_grid({"fusion": ["concat"], "epochs": [6], "precision": ["fp32"]}),
                      tmp_path / "g", folds=3, jobs=1, refit_mode="full", progress=False, log=lambda s: None)
    import csv
    import json
    metrics = json.loads((result.best_run / "metrics.json").read_text())
    with open(result.best_run / "history.csv") as f:
        history = list(csv.DictReader(f))
    # a fold fit: 300 * 2/3 rows, 85% of them fit -> 170 rows, 3 steps of 64 per epoch
    assert metrics["schedule_steps"] == 6 * 3
    assert int(history[-1]["step"]) == metrics["steps"] == round(result.rows[0]["best_epoch_mean"] * 3)


def test_out_of_fold_rows_come_from_a_model_that_never_saw_them(tmp_path):
    # random labels on wide random features: a logistic regression with a weak penalty memorises its
    # training rows (in-sample accuracy 1.0) and is at chance on rows it has not seen
    rng = np.random.default_rng(0)
    n = 150
    text, image, y = rng.normal(size=(n, 300)), rng.normal(size=(n, 20)), rng.integers(0, 3, n)
    cache = write_feature_cache(tmp_path / "noise.h5", text.astype(np.float32), image.astype(np.float32), y)
    result = run_grid(cache, expand_grid({"fusion": ["logreg"], "C": [100.0]}), tmp_path / "g", folds=3, jobs=1,
                      refit_best=False, progress=False, log=lambda s: None)
    oof = np.load(tmp_path / "g" / "oof" / f"{result.rows[0]['config_id']}.npy")
    assert not np.isnan(oof).any()
    in_sample = Head(fusion="logreg", C=100.0).fit(FeatureSet.from_cache(cache)).predict(FeatureSet.from_cache(cache))
    assert (in_sample == y).mean() == 1.0 and (oof.argmax(1) == y).mean() < 0.5


def test_grid_with_forced_bf16_training_scores_like_fp32(tmp_path):
    cache = text_cache(tmp_path / "train.h5", n=600)
    scores = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = runner.invoke(app, ["grid", str(cache), "--out", str(out), "--fusion", "concat", "--lr", "3e-3",
                                     "--weight-decay", "0", "--epochs", "30", "--folds", "3", "--jobs", "1",
                                     "--precision", precision, "--no-progress"])
        assert result.exit_code == 0, result.output
        import json
        assert json.loads((out / "grid.json").read_text())["precision"] == [precision]
        (row,) = read_results(out)
        assert row["precision"] == precision
        scores[precision] = row["macro_f1_mean"], np.load(out / "oof" / f"{row['config_id']}.npy")
    assert scores["fp32"][0] > 0.75 and abs(scores["bf16"][0] - scores["fp32"][0]) < 0.05, scores
    assert not np.array_equal(scores["bf16"][1], scores["fp32"][1])  # bf16 did run: other numbers


def test_refit_modes_replace_each_other_in_one_folder(tmp_path):
    cache = text_cache(tmp_path / "train.h5")
    configs = expand_grid({"fusion": ["concat"], "epochs": [3], "precision": ["fp32"]})
    run_grid(cache, configs, tmp_path / "g", folds=3, jobs=1, progress=False, log=lambda s: None)
    full = run_grid(cache, configs, tmp_path / "g", folds=3, jobs=1, refit_mode="full", pick="one-se",
                    progress=False, log=lambda s: None)
    assert not (full.best_run / "bagged.json").exists() and isinstance(load_run(full.best_run), Head)
    assert full.pick in full.tied
