"""Which cached vectors a head reads (text/proj and image/proj of two-tower models, chosen by auto), and a grid
over backbones: several caches of the same rows crossed as (text cache, image cache) pairs, the heads trained on
a mixed pair predicting from the matching test caches."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cache import CacheWriter, FeatureCache
from mmfuse.cli import app
from mmfuse.errors import CacheError
from mmfuse.grid import GridCell, config_id, expand_grid, read_results
from mmfuse.heads import FeatureSet, Head, HeadConfig
from mmfuse.heads.features import resolve_feature

runner = CliRunner()
NAMES = ("yes", "no")
GRID = ["--fusion", "concat,logreg", "--lr", "1e-3", "--epochs", "5", "--folds", "3", "--jobs", "1",
        "--precision", "fp32", "--no-progress"]


def write_cache(path: Path, features: dict[str, np.ndarray], y, text_model: str, image_model: str,
                guids: list[str] | None = None, fingerprint: str = "f" * 64) -> Path:
    """A finished cache holding any feature datasets ("text/proj", "image/cls", ...), extracted (so its
    provenance says) by ``text_model`` and ``image_model`` from the data ``fingerprint``."""
    n = len(y)
    provenance = {"text": {"model": text_model, "weights_sha256": f"sha-of-{text_model}", "revision": None,
                           "max_length": 32, "source": text_model, "architecture": "Tower"},
                  "image": {"model": image_model, "weights": f"weights-of-{image_model}",
                            "preprocessing": {"crop": 224}},
                  "data": {"root": str(path.parent), "split": "train", "fingerprint": fingerprint, "encodings": {}},
                  "precision": "fp32", "store_dtype": "float32", "device": "cpu", "versions": {}, "created": "now"}
    w = CacheWriter.open(path, guids=guids or [f"g{i}" for i in range(n)], labels=np.asarray(y, np.int64),
                         label_names=NAMES, multilabel=False, skipped={}, store_dtype="float32",
                         provenance=provenance, identity=f"{path.name}:{text_model}:{image_model}:{fingerprint}",
                         dims={name: a.shape[1] for name, a in features.items()})
    for modality in ("text", "image"):
        w.write(modality, np.arange(n), {k: a for k, a in features.items() if k.startswith(modality + "/")})
    assert w.finish()
    w.close()
    return path


def two_backbones(root: Path, n: int, prefix: str = "", seed: int = 0, fingerprint: str = "f" * 64):
    """Two caches of the same n rows: minilm.h5 (MiniLM text, ResNet images) and clip.h5 (CLIP, both towers).
    The label is readable only from MiniLM's text and CLIP's projected images together."""
    rng = np.random.default_rng(seed)
    minilm_text, resnet, clip_text, clip_image = (rng.normal(size=(n, 6)).astype(np.float32) for _ in range(4))
    y = (minilm_text[:, 0] + clip_image[:, 0] > 0).astype(np.int64)
    guids = [f"{prefix}g{i}" for i in range(n)]
    a = write_cache(root / f"{prefix}minilm.h5", {"text/cls": minilm_text, "text/mean": minilm_text,
                                                  "image/pooled": resnet}, y, "sentence-transformers/minilm",
                    "resnet50", guids, fingerprint)
    b = write_cache(root / f"{prefix}clip.h5", {"text/pooled": clip_text, "text/proj": clip_text,
                                                "image/pooled": rng.normal(size=(n, 5)).astype(np.float32),
                                                "image/proj": clip_image}, y, "openai/clip", "openai/clip", guids,
                    fingerprint)
    return a, b


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A grid over minilm.h5 and clip.h5 (concat and logreg on 4 backbone pairs), and two test caches."""
    root = tmp_path_factory.mktemp("backbones")
    a, b = two_backbones(root, 240)
    test_a, test_b = two_backbones(root, 60, prefix="test-", seed=1, fingerprint="t" * 64)
    result = runner.invoke(app, ["grid", str(a), str(b), "--out", str(root / "g"), *GRID])
    assert result.exit_code == 0, result.output
    return {"root": root, "a": a, "b": b, "test_a": test_a, "test_b": test_b, "out": root / "g",
            "output": result.output}


def test_auto_reads_a_two_tower_models_projections(tmp_path):
    rng = np.random.default_rng(0)
    x = {name: rng.normal(size=(20, 4)).astype(np.float32) for name in ("a", "b", "c")}
    y = np.arange(20) % 2
    two_tower = write_cache(tmp_path / "clip.h5", {"text/pooled": x["a"], "text/proj": x["b"], "image/pooled": x["a"],
                                                   "image/cls": x["c"], "image/mean": x["c"], "image/proj": x["b"]},
                            y, "clip", "clip")
    X = FeatureSet.from_cache(two_tower)
    assert (X.text_feature, X.image_feature) == ("proj", "proj")
    np.testing.assert_array_equal(X.text, x["b"])
    chosen = FeatureSet.from_cache(two_tower, "pooled", "cls")
    assert (chosen.text_feature, chosen.image_feature) == ("pooled", "cls")
    # a BERT-family cache: auto as before (cls for a plain encoder, image/pooled)
    bert = write_feature_cache(tmp_path / "bert.h5", x["a"], x["b"], y, NAMES)
    assert (FeatureSet.from_cache(bert).text_feature, FeatureSet.from_cache(bert).image_feature) == ("cls", "pooled")
    # a two-tower cache without projections: its text tower's pooled output
    pooled_only = write_cache(tmp_path / "towers.h5", {"text/pooled": x["a"], "image/pooled": x["b"]}, y, "t", "t")
    assert resolve_feature(FeatureCache(pooled_only), "text") == "pooled"

    train = runner.invoke(app, ["train-head", str(two_tower), "--fusion", "logreg", "--image-feature", "mean",
                                "--val-split", "0", "--out", str(tmp_path / "run")])
    assert train.exit_code == 0, train.output
    assert "on text/proj and image/mean" in train.output
    meta = json.loads((tmp_path / "run" / "head.json").read_text())
    assert (meta["text_feature"], meta["image_feature"]) == ("proj", "mean")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["image_feature"] == "mean"


def test_a_feature_the_cache_lacks_is_one_line(tmp_path):
    text, image, y, names = synthetic_features("text", n=60)
    cache = write_feature_cache(tmp_path / "bert.h5", text, image, y, names)
    result = runner.invoke(app, ["train-head", str(cache), "--image-feature", "proj", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"{cache} has no image/proj features" in result.output
    assert "it holds image/pooled, text/cls, text/mean: choose --image-feature pooled" in result.output
    with pytest.raises(CacheError, match="has no text/proj features"):
        FeatureSet.from_cache(cache, "proj")


def test_the_ids_of_existing_configurations_do_not_change():
    # computed before image_feature existed: grid folders made then resume with the same ids
    assert config_id(HeadConfig()) == "4cfc14efdef4"
    assert config_id(HeadConfig(fusion="logreg", text_feature="mean", C=1e-2)) == "c4f9b7f11c5a"
    assert config_id(HeadConfig(fusion="gated", lr=1e-3, epochs=20, precision="bf16")) == "06ecf43d91b8"
    assert config_id(HeadConfig(image_feature="proj")) != config_id(HeadConfig())
    # a cell of a grid over several caches is a configuration on a backbone pair
    assert config_id(GridCell(backbone="")) == config_id(HeadConfig())
    assert config_id(GridCell(backbone="minilm + clip")) != config_id(GridCell(backbone="clip + clip"))
    # logreg reads the image vector: an image_feature axis multiplies its configurations
    assert len(expand_grid({"fusion": ["logreg"], "image_feature": ["pooled", "proj"]})) == 2


def test_a_run_saved_before_image_features_were_chosen_loads_as_image_pooled(tmp_path):
    text, image, y, names = synthetic_features("image", n=90)
    cache = write_feature_cache(tmp_path / "train.h5", text, image, y, names)
    trained = runner.invoke(app, ["train-head", str(cache), "--fusion", "logreg", "--out", str(tmp_path / "r")])
    assert trained.exit_code == 0, trained.output
    before = Head.load(tmp_path / "r").predict_proba(FeatureSet.from_cache(cache))
    for name in ("config.json", "head.json"):  # as an older mmfuse wrote them
        data = json.loads((tmp_path / "r" / name).read_text())
        del data["image_feature"]
        (tmp_path / "r" / name).write_text(json.dumps(data))
    old = Head.load(tmp_path / "r")
    assert old.image_feature_ == "pooled" and old.config.image_feature == "auto"
    _, proba = old.predict_cache(cache)
    np.testing.assert_allclose(proba, before)


def test_a_grid_over_two_caches_trains_every_backbone_pair(grid):
    out = grid["out"]
    assert "2 configurations x 4 backbone pairs x 3 folds = 24 fits" in grid["output"]
    pairs = {"minilm + resnet50", "minilm + clip", "clip + resnet50", "clip + clip"}
    rows = read_results(out)
    assert {(r["backbone"], r["fusion"]) for r in rows} == {(p, f) for p in pairs for f in ("concat", "logreg")}
    assert len({r["config_id"] for r in rows}) == 8
    top = max(rows, key=lambda r: r["macro_f1_mean"])
    assert top["backbone"] == "minilm + clip"  # the label needs MiniLM's text and CLIP's images
    assert f"on minilm + clip ({top['config_id']})" in grid["output"]
    summary = (out / "summary.md").read_text()
    assert "| rank | backbone | fusion |" in summary and "(4 backbone pairs)" in summary
    for pair in pairs:
        assert f"`{pair}`" in summary
    assert f"`minilm + clip`: text from {grid['a']}, images from {grid['b']}" in summary
    assert (out / "backbones.png").stat().st_size > 1000 and (out / "heatmaps.png").is_file()
    # best/ records both backbones: text from minilm.h5, images from clip.h5
    head = json.loads((out / "best" / "folds" / "0" / "head.json").read_text())
    assert head["provenance"]["text"]["model"] == "sentence-transformers/minilm"
    assert head["provenance"]["image"]["model"] == "openai/clip"
    assert (head["text_feature"], head["image_feature"]) == ("cls", "proj")
    assert json.loads((out / "best" / "grid-pick.json").read_text())["backbone"] == "minilm + clip"

    again = runner.invoke(app, ["grid", str(grid["a"]), str(grid["b"]), "--out", str(out), *GRID])
    assert again.exit_code == 0 and "8 of 8 configurations already done" in again.output
    assert "0 fits in" in again.output
    swapped = runner.invoke(app, ["grid", str(grid["b"]), str(grid["a"]), "--out", str(out), *GRID])
    assert swapped.exit_code == 1 and "another cache or other folds" in swapped.output
    one = runner.invoke(app, ["grid", str(grid["a"]), "--out", str(out), *GRID])
    assert one.exit_code == 1 and "written by a grid over several caches" in one.output


def test_pairs_can_be_chosen(grid, tmp_path):
    same = runner.invoke(app, ["grid", str(grid["a"]), str(grid["b"]), "--pairs", "same", "--fusion", "logreg",
                               "--out", str(tmp_path / "same"), *GRID[2:]])
    assert same.exit_code == 0, same.output
    assert {r["backbone"] for r in read_results(tmp_path / "same")} == {"minilm + resnet50", "clip + clip"}
    named = runner.invoke(app, ["grid", str(grid["a"]), str(grid["b"]), "--pairs", "minilm:clip", "--fusion",
                                "logreg", "--out", str(tmp_path / "same"), *GRID[2:]])  # one more pair, same folder
    assert named.exit_code == 0 and "1 backbone pair x 3 folds" in named.output
    assert {r["backbone"] for r in read_results(tmp_path / "same")} == {"minilm + resnet50", "clip + clip",
                                                                        "minilm + clip"}
    assert "top: logreg on minilm + clip" in named.output
    bad = runner.invoke(app, ["grid", str(grid["a"]), str(grid["b"]), "--pairs", "minilm:siglip",
                              "--out", str(tmp_path / "bad"), *GRID])
    assert bad.exit_code == 1 and "'siglip' is not one of the caches" in bad.output


def test_caches_of_other_rows_are_refused_in_one_line(grid, tmp_path):
    text, image, _, _ = synthetic_features("text", n=240)
    other = {"text/cls": text, "image/pooled": image}
    guids = [f"g{i}" for i in range(240)]
    guids[5] = "x5"
    labels = FeatureCache(grid["a"]).labels
    moved = write_cache(tmp_path / "moved.h5", other, labels, "m", "r", guids)
    result = runner.invoke(app, ["grid", str(grid["a"]), str(moved), "--out", str(tmp_path / "g"), *GRID])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"{grid['a']} and {moved} do not hold the same rows" in result.output
    assert "row 6: guid g5 vs x5" in result.output
    elsewhere = write_cache(tmp_path / "elsewhere.h5", other, labels, "m", "r", fingerprint="e" * 64)
    result = runner.invoke(app, ["grid", str(grid["a"]), str(elsewhere), "--out", str(tmp_path / "g"), *GRID])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "data fingerprint ffffffffffff vs eeeeeeeeeeee" in result.output
    assert not (tmp_path / "g" / "results.csv").exists()


def test_a_mixed_pair_head_predicts_from_the_matching_test_caches(grid, tmp_path):
    best, test_a, test_b = grid["out"] / "best", grid["test_a"], grid["test_b"]
    for order in ((test_a, test_b), (test_b, test_a)):  # each modality from the cache extracted like the head's
        result = runner.invoke(app, ["predict", str(best), *map(str, order), "--out", str(tmp_path / "p.txt")])
        assert result.exit_code == 0, result.output
        with open(tmp_path / "p.txt", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["guid", "tag"] and [r[0] for r in rows[1:]] == [f"test-g{i}" for i in range(60)]
    evaluated = runner.invoke(app, ["evaluate", str(best), str(test_a), str(test_b)])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((best / "eval-test-minilm+test-clip.json").read_text())["macro_f1"] > 0.8

    alone = runner.invoke(app, ["predict", str(best), str(test_a), "--out", str(tmp_path / "q.txt")])
    assert alone.exit_code == 1 and len(alone.output.strip().splitlines()) == 1
    assert "from two caches: pass a cache for each" in alone.output
    rng = np.random.default_rng(2)
    y = FeatureCache(test_a).labels
    siglip = write_cache(tmp_path / "siglip.h5", {"text/proj": rng.normal(size=(60, 6)).astype(np.float32),
                                                  "image/proj": rng.normal(size=(60, 6)).astype(np.float32)},
                         y, "siglip", "siglip", [f"test-g{i}" for i in range(60)], "t" * 64)
    wrong = runner.invoke(app, ["predict", str(best), str(test_a), str(siglip), "--out", str(tmp_path / "q.txt")])
    assert wrong.exit_code == 1 and len(wrong.output.strip().splitlines()) == 1
    assert "holds image features extracted like the head's" in wrong.output and "'openai/clip' vs" in wrong.output
    assert not (tmp_path / "q.txt").exists()


def test_an_ensemble_of_a_grid_over_backbones_predicts_from_both_test_caches(grid, tmp_path):
    built = runner.invoke(app, ["ensemble", str(grid["out"]), "--top", "3", "--out", str(tmp_path / "ens")])
    assert built.exit_code == 0, built.output
    result = runner.invoke(app, ["predict", str(tmp_path / "ens"), str(grid["test_a"]), str(grid["test_b"]),
                                 "--out", str(tmp_path / "p.txt")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 61


def test_a_grid_folder_from_before_image_features_resumes(tmp_path):
    text, image, y, names = synthetic_features("text", n=120)
    cache = write_feature_cache(tmp_path / "train.h5", text, image, y, names)
    args = ["grid", str(cache), "--out", str(tmp_path / "g"), "--fusion", "logreg", "--folds", "3", "--jobs", "1",
            "--precision", "fp32", "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    path = tmp_path / "g" / "results.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:  # results.csv as an older mmfuse wrote it: no image_feature column
        columns = [c for c in rows[0] if c != "image_feature"]
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 fits in" in again.output and rows[0]["config_id"] in again.output
    assert read_results(tmp_path / "g")[0]["config_id"] == rows[0]["config_id"]
    other = runner.invoke(app, [*args, "--image-feature", "auto,pooled"])
    assert other.exit_code == 1 and "without the image_feature column" in other.output
