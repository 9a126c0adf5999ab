"""Each test here failed on the code before the correctness review (issue 13) and passes now."""
from __future__ import annotations

import ast
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mmfuse
from conftest import synthetic_features, write_feature_cache
from mmfuse.cache import CacheWriter, FeatureCache
from mmfuse.cli import app
from mmfuse.errors import CacheError
from mmfuse.grid import _features, expand_grid, read_results, run_grid
from mmfuse.heads import BaggedHead, FeatureSet, Head, HeadConfig, train_head
from mmfuse.heads.estimator import class_weights
from mmfuse.runs import load_run

runner = CliRunner()
FAST = dict(epochs=30, hidden=32, lr=3e-3)


def text_cache(path: Path, n: int = 300, seed: int = 0, identity: str = "x", **changes) -> Path:
    text, image, y, names = synthetic_features("text", n=n, seed=seed)
    return write_feature_cache(path, text, image, y, names, identity=identity, provenance=changes)


# --- feature identity ------------------------------------------------------------------------------
@pytest.mark.parametrize("change, field", [
    ({"text": {"max_length": 16}}, "text max_length"),
    ({"image": {"preprocessing": {"crop": 192}}}, "image preprocessing"),
    ({"precision": "bf16"}, "precision"),
    ({"store_dtype": "float16"}, "store dtype"),
    ({"versions": {"transformers": "9.1.0"}}, "transformers version"),
])
def test_evaluate_and_predict_refuse_a_cache_extracted_otherwise_naming_the_field(tmp_path, change, field):
    run = tmp_path / "run"
    train_head(text_cache(tmp_path / "train.h5"), HeadConfig(fusion="logreg"), out=run)
    other = text_cache(tmp_path / "other.h5", identity="y", **change)
    for cmd in (["evaluate", str(run), str(other)], ["predict", str(run), str(other), "--out", str(tmp_path / "p")]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 1 and f"{field}:" in result.output and "Traceback" not in result.output


def test_same_features_other_data_are_accepted(tmp_path):
    run = tmp_path / "run"
    train_head(text_cache(tmp_path / "train.h5"), HeadConfig(fusion="logreg"), out=run)
    other = text_cache(tmp_path / "test.h5", seed=3, identity="other-data", data={"fingerprint": "0" * 64})
    assert runner.invoke(app, ["evaluate", str(run), str(other)]).exit_code == 0


def test_resume_refuses_another_image_runtime(clean_course_dir, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, out)).exit_code == 0
    result = runner.invoke(app, extract_args(clean_course_dir, out, "--no-optimize"))  # eager: other numerics
    assert result.exit_code == 1 and "another configuration" in result.output


# --- grids: fresh features, what ships is what was scored ---------------------------------------------
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


# --- small silent errors ---------------------------------------------------------------------------
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


def test_balanced_class_weights_are_scikit_learns_with_an_absent_class():
    y = np.array([0, 0, 0, 1])
    w = class_weights(y, 3, "balanced")
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])


# --- the estimator is a scikit-learn estimator ---------------------------------------------------------
def test_head_clones_and_works_in_scikit_learn_model_selection(tmp_path):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

    head = Head(HeadConfig(fusion="concat", **FAST))
    twin = clone(head)
    assert twin.get_params() == head.get_params() and twin.config == head.config
    assert twin.set_params(lr=1e-2).lr == 1e-2 and head.lr == FAST["lr"]
    X = FeatureSet.from_cache(text_cache(tmp_path / "train.h5", n=600))
    scores = cross_val_score(head, X, X.y, cv=StratifiedKFold(3), scoring="f1_macro")
    assert scores.shape == (3,) and scores.mean() > 0.75
    search = GridSearchCV(Head(fusion="logreg"), {"C": [1e-3, 1.0]}, cv=3, scoring="f1_macro").fit(X, X.y)
    assert search.best_params_["C"] in (1e-3, 1.0)
    pair = (X.text, X.image)  # plain arrays, labels by name
    names = np.array(X.label_names)[X.y]
    assert set(Head(fusion="logreg").fit(pair, names).predict(pair)) <= set(X.label_names)


class ArrayHead(Head):
    """A Head on plain 2D arrays, its columns split into text and image halves: scikit-learn's checks
    generate such arrays."""

    @staticmethod
    def _as_features(X, y=None):
        from sklearn.utils.validation import check_array

        if not isinstance(X, FeatureSet):
            X = check_array(X, dtype=np.float32, ensure_all_finite=False)
            X = (X[:, :max(1, X.shape[1] // 2)], X[:, max(1, X.shape[1] // 2):])
        return Head._as_features(X, y)


def test_scikit_learn_estimator_checks():
    """Every check passes but one, excluded by design: a class_weight dict (HeadConfig.class_weight is a
    named mode, serialised to JSON with the run)."""
    from sklearn.utils.estimator_checks import check_estimator

    check_estimator(ArrayHead(fusion="concat", epochs=30, lr=1e-2, hidden=16), on_skip=None,
                    expected_failed_checks={"check_class_weight_classifiers": "class_weight is a named mode"})


def test_fit_leaves_torchs_global_random_state_alone(tmp_path):
    X = FeatureSet.from_cache(text_cache(tmp_path / "train.h5", n=60))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Head(fusion="concat", epochs=2).fit(X)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_logreg_runs_save_no_pickle(tmp_path):
    head, _ = train_head(text_cache(tmp_path / "train.h5"), HeadConfig(fusion="logreg"), out=tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.pkl")) and (tmp_path / "run" / "logreg.npz").is_file()
    X = FeatureSet.from_cache(tmp_path / "train.h5")
    np.testing.assert_allclose(Head.load(tmp_path / "run").predict_proba(X), head.predict_proba(X), rtol=1e-5)


# --- the cache: one writer, chunk-sized writes, interruption during a write -----------------------------
HOLD = textwrap.dedent("""
    import sys, time, numpy as np
    from mmfuse.cache import CacheWriter
    w = CacheWriter.open(sys.argv[1], guids=[str(i) for i in range(600)], labels=np.zeros(600, np.int64),
                         label_names=("a", "b"), multilabel=False, skipped={}, dims={"text/cls": 4},
                         store_dtype="float32", provenance={}, identity="holder")
    w.write("text", np.arange(256), {"text/cls": np.ones((256, 4))})
    print("ready", flush=True)
    time.sleep(120)
""")


def test_a_cache_being_written_is_locked_named_and_readable_for_progress(clean_course_dir, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for extra in ((), ("--overwrite",)):  # --overwrite takes the same lock
            result = runner.invoke(app, extract_args(clean_course_dir, out, *extra))
            assert result.exit_code == 1, result.output
            assert f"being written by another extraction (pid {holder.pid}" in result.output
            assert "--overwrite" not in result.output
        info = runner.invoke(app, ["info", str(out)])
        assert info.exit_code == 0 and f"being written by pid {holder.pid}" in info.output
        assert "text 256/600" in info.output
        with pytest.raises(CacheError, match=f"pid {holder.pid}"):
            FeatureCache(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the killed writer's lock: nothing stale blocks the next run
    result = runner.invoke(app, extract_args(clean_course_dir, out, "--overwrite"))
    assert result.exit_code == 0, result.output


def _io() -> tuple[int, int]:
    d = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(d["wchar"]), int(d["rchar"])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_length_sorted_writes_cost_about_the_features_bytes(tmp_path):
    n, d = 3199, 384
    rng = np.random.default_rng(0)
    w = CacheWriter.open(tmp_path / "c.h5", guids=[str(i) for i in range(n)], labels=np.zeros(n, np.int64),
                         label_names=("a", "b"), multilabel=False, skipped={}, store_dtype="float32",
                         dims={"text/cls": d, "text/mean": d, "image/pooled": 8}, provenance={}, identity="io")
    order = rng.permutation(n)  # like length-sorted batches: rows from all over the file
    before = _io()
    for start in range(0, n, 64):
        rows = order[start:start + 64]
        w.write("text", rows, {"text/cls": rng.normal(size=(len(rows), d)), "text/mean": np.zeros((len(rows), d))})
    written, read = (a - b for a, b in zip(_io(), before))
    w.close()
    features = 2 * n * d * 4
    assert written <= 2 * features and read <= 2 * features, (written / features, read / features)


def test_interrupted_during_a_feature_write_resumes_to_the_clean_cache(clean_course_dir, extract_args, tmp_path,
                                                                     monkeypatch, tiny_bert):
    clean = tmp_path / "clean.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, clean)).exit_code == 0
    original = h5py.Dataset.__setitem__

    def torn_write(self, key, value):
        if self.name == "/image/pooled":  # half the rows land, then the process is interrupted
            value = np.asarray(value)
            half = len(value) // 2
            original(self, slice(key.start, key.start + half) if isinstance(key, slice) else key[:half], value[:half])
            raise KeyboardInterrupt
        return original(self, key, value)

    out = tmp_path / "resumed.h5"
    monkeypatch.setattr(h5py.Dataset, "__setitem__", torn_write)
    with pytest.raises(KeyboardInterrupt):
        mmfuse.extract(clean_course_dir, "train", out, progress=False, log=lambda s: None,
                       text=mmfuse.TextExtractorConfig(str(tiny_bert), 32, 4),
                       image=mmfuse.ImageExtractorConfig("resnet18", "none", 4, 0))
    monkeypatch.setattr(h5py.Dataset, "__setitem__", original)
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(out)
    result = runner.invoke(app, extract_args(clean_course_dir, out))
    assert result.exit_code == 0, result.output
    assert "text 0 in" in result.output and "image 12 in" in result.output  # the torn rows are redone
    a, b = FeatureCache(clean), FeatureCache(out)
    for name in a.feature_names:
        np.testing.assert_allclose(a.features(name), b.features(name), rtol=1e-4, atol=1e-5)


# --- structure -------------------------------------------------------------------------------------------
def test_imports_flow_one_way():
    """No cycle between mmfuse's parts (a subpackage counts as one part), lazy imports included."""
    root = Path(mmfuse.__file__).parent
    part = lambda mod: mod.split(".")[1] if mod.count(".") else "__init__"  # noqa: E731
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        mod = ".".join(("mmfuse", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmfuse."):
                target = node.module
            else:
                continue
            if part(mod) not in ("__init__", "cli") and part(target) != part(mod):
                edges.setdefault(part(mod), set()).add(part(target))

    def reaches(a: str, b: str, seen=()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, (*seen, n))) for n in edges.get(a, ()))

    cycles = [p for p in edges if reaches(p, p)]
    assert not cycles, {p: edges[p] for p in cycles}
    assert "runs" not in set().union(*edges.values())  # run folders are loaded from the top only


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


# --- found by review --------------------------------------------------------------------------------------
def test_a_saved_head_predicts_its_own_labels_after_loading(tmp_path):
    X = FeatureSet.from_cache(text_cache(tmp_path / "train.h5"))
    names = np.array(["pos", "neu", "neg"])[X.y]
    head = Head(fusion="logreg").fit((X.text, X.image), names)
    head.save(tmp_path / "run")
    loaded = Head.load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.predict((X.text, X.image)), head.predict((X.text, X.image)))
    with pytest.raises(ValueError, match="expecting 28 features"):
        loaded.predict((X.text[:, :4], X.image))


def test_refit_modes_replace_each_other_in_one_folder(tmp_path):
    cache = text_cache(tmp_path / "train.h5")
    configs = expand_grid({"fusion": ["concat"], "epochs": [3], "precision": ["fp32"]})
    run_grid(cache, configs, tmp_path / "g", folds=3, jobs=1, progress=False, log=lambda s: None)
    full = run_grid(cache, configs, tmp_path / "g", folds=3, jobs=1, refit_mode="full", pick="one-se",
                    progress=False, log=lambda s: None)
    assert not (full.best_run / "bagged.json").exists() and isinstance(load_run(full.best_run), Head)
    assert full.pick in full.tied


def test_a_torn_cache_file_says_overwrite_not_locked(clean_course_dir, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    out.write_bytes(b"not an HDF5 file")
    result = runner.invoke(app, extract_args(clean_course_dir, out))
    assert result.exit_code == 1 and "--overwrite" in result.output and "being written" not in result.output
    assert not Path(str(out) + ".lock.owner").exists()
    assert runner.invoke(app, extract_args(clean_course_dir, out, "--overwrite")).exit_code == 0
