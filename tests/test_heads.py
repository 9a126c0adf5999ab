"""Fusion heads: registry-driven module checks, learning on synthetic caches, run folders, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cli import app
from mmfuse.errors import CacheError, MmfuseError
from mmfuse.heads import FeatureSet, Head, HeadConfig, create_head, list_heads, train_head
from mmfuse.metrics import macro_f1

runner = CliRunner()
FAST = dict(epochs=40, patience=40, hidden=64, dropout=0.1, lr=3e-3, batch_size=32, C=1.0)


@pytest.fixture
def caches(tmp_path):
    """Synthetic caches where the label lives in the text, in the image, or only in both together."""
    return {kind: write_feature_cache(tmp_path / f"{kind}.h5", *synthetic_features(kind)[:3],
                                      label_names=synthetic_features(kind)[3])
            for kind in ("text", "image", "both")}


@pytest.mark.parametrize("name", list_heads("module"))
def test_module_shape_finite_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    cfg = HeadConfig(fusion=name, hidden=32, heads=4)
    module = create_head(name, 24, 40, 5, cfg).train()
    text, image = torch.randn(8, 24), torch.randn(8, 40)
    out = module(text, image)
    assert out.logits.shape == (8, 5) and torch.isfinite(out.logits).all()
    loss = torch.nn.functional.cross_entropy(out.logits, torch.randint(0, 5, (8,)))
    (loss if out.aux is None else loss + out.aux).backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname} has no gradient"


@pytest.mark.parametrize("name", list_heads("module"))
def test_module_reads_exactly_the_modalities_it_claims(name):
    torch.manual_seed(0)
    module = create_head(name, 24, 40, 5, HeadConfig(fusion=name, hidden=32, heads=4)).eval()
    text, image = torch.randn(8, 24), torch.randn(8, 40)
    base = module(text, image).logits
    changed = {"text": module(torch.randn(8, 24), image).logits, "image": module(text, torch.randn(8, 40)).logits}
    uses = {"text": {"text"}, "image": {"image"}}.get(name, {"text", "image"})
    for modality, logits in changed.items():
        assert (not torch.allclose(base, logits)) == (modality in uses), (name, modality)


def test_every_registered_head_is_built_the_same_way():
    for name in list_heads():  # one contract: create_head(name, text_dim, image_dim, n_out, cfg)
        head = create_head(name, 24, 40, 5, HeadConfig(fusion=name))
        assert getattr(head, "kind", "module") in ("module", "sklearn")


def test_aligned_returns_its_contrastive_loss_from_forward():
    module = create_head("aligned", 24, 40, 3, HeadConfig(fusion="aligned", hidden=32))
    text, image = torch.randn(8, 24), torch.randn(8, 40)
    assert module.train()(text, image).aux is not None and module.eval()(text, image).aux is None
    assert not any(isinstance(v, torch.Tensor) for v in vars(module).values())  # no state kept between calls


@pytest.mark.parametrize("name", [h for h in list_heads(trained=True) if h != "image"])  # image: blind to it, see
# below; zeroshot learns nothing (tests/test_backbones.py scores it on a cache with class prompts)
def test_every_head_learns_a_signal_in_the_text(caches, name):
    _, m = train_head(caches["text"], HeadConfig(fusion=name, **FAST), val_split=0.25)
    assert m["validation"]["accuracy"] > 0.85, m["validation"]


def test_unimodal_heads_see_only_their_modality(caches):
    _, text_on_image = train_head(caches["image"], HeadConfig(fusion="text", **FAST), val_split=0.25)
    _, image_on_image = train_head(caches["image"], HeadConfig(fusion="image", **FAST), val_split=0.25)
    assert text_on_image["validation"]["accuracy"] < 0.5 < 0.85 < image_on_image["validation"]["accuracy"]


@pytest.mark.parametrize("name", ["concat", "weighted", "attention", "gated", "aligned"])
def test_fusion_beats_both_unimodal_heads_when_the_label_needs_both(caches, name):
    acc = {f: train_head(caches["both"], HeadConfig(fusion=f, **FAST), val_split=0.25)[1]["validation"]["accuracy"]
           for f in (name, "text", "image")}
    # unimodal heads are at chance (0.5; early stopping on validation lifts that a little)
    assert acc[name] > 0.8 and acc["text"] < 0.65 and acc["image"] < 0.65, acc


@pytest.mark.parametrize("name", list_heads(trained=True))
def test_save_load_round_trip_gives_identical_predictions(caches, tmp_path, name):
    head, _ = train_head(caches["text"], HeadConfig(fusion=name, **{**FAST, "epochs": 3}), out=tmp_path / "run")
    X = FeatureSet.from_cache(caches["text"])
    loaded = Head.load(tmp_path / "run")
    np.testing.assert_array_equal(head.predict_proba(X), loaded.predict_proba(X))
    assert loaded.classes_.tolist() == [0, 1, 2] and loaded.label_names_ == ("positive", "neutral", "negative")


def test_same_seed_same_result_and_losses(caches):
    X = FeatureSet.from_cache(caches["text"])
    for cfg in (HeadConfig(fusion="attention", **FAST, seed=3),
                HeadConfig(fusion="concat", loss="hinge", class_weight="balanced", label_smoothing=0.0, **FAST),
                HeadConfig(fusion="weighted", class_weight="balanced", label_smoothing=0.1, **FAST)):
        a = Head(cfg).fit(X.subset(np.arange(400)), val=X.subset(np.arange(400, 600)))
        b = Head(cfg).fit(X.subset(np.arange(400)), val=X.subset(np.arange(400, 600)))
        np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
        assert (a.predict(X.subset(np.arange(400, 600))) == X.y[400:]).mean() > 0.8, cfg


def test_a_moving_average_of_the_weights_is_what_validation_scores_and_the_fit_keeps(caches):
    X = FeatureSet.from_cache(caches["text"])
    train, val = X.subset(np.arange(400)), X.subset(np.arange(400, 600))
    cfg = HeadConfig(fusion="concat", **{**FAST, "epochs": 15, "patience": 15})
    plain, averaged = Head(cfg).fit(train, val=val), Head(cfg.replace(ema=0.9)).fit(train, val=val)
    again = Head(cfg.replace(ema=0.9)).fit(train, val=val)
    np.testing.assert_array_equal(averaged.predict_proba(X), again.predict_proba(X))  # reproducible
    assert not np.allclose(plain.predict_proba(X), averaged.predict_proba(X))
    assert (averaged.predict(val) == val.y).mean() > 0.8
    # validation scored the average, the model kept: its best epoch's score is the kept model's
    kept = macro_f1(val.y, averaged.predict(val), 3)
    assert averaged.history_[averaged.best_epoch_ - 1]["val_macro_f1"] == pytest.approx(kept)
    # without validation rows the fit keeps the average at the end, not the last step's weights
    last, avg = Head(cfg).fit(train), Head(cfg.replace(ema=0.9)).fit(train)
    assert not np.allclose(last.predict_proba(X), avg.predict_proba(X))
    with pytest.raises(MmfuseError, match="ema must be a decay"):
        HeadConfig(ema=1.0)


def test_estimator_interface(caches):
    X = FeatureSet.from_cache(caches["text"])
    head = Head(HeadConfig(fusion="concat", epochs=2))
    assert not hasattr(head, "classes_")  # __init__ only stores
    assert head.fit(X) is head and head.classes_.tolist() == [0, 1, 2]
    proba = head.predict_proba(X)
    assert proba.shape == (600, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert set(head.predict(X)) <= {0, 1, 2}


def test_train_head_cli_writes_a_complete_run_folder(caches, tmp_path):
    out = tmp_path / "runs" / "w"
    result = runner.invoke(app, ["train-head", str(caches["text"]), "--fusion", "weighted", "--out", str(out),
                                 "--epochs", "15", "--hidden", "64", "--class-weight", "balanced", "--ema", "0.9"])
    assert result.exit_code == 0, result.output
    assert "modality weights: text" in result.output and "macro-F1" in result.output
    for name in ("model.pt", "config.json", "head.json", "scaler.npz", "metrics.json", "history.csv",
                 "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["fusion"] == "weighted" and cfg["class_weight"] == "balanced" and cfg["epochs"] == 15
    assert cfg["ema"] == 0.9
    metrics = json.loads((out / "metrics.json").read_text())
    v = metrics["validation"]
    assert {"accuracy", "macro_f1", "weighted_f1", "balanced_accuracy", "per_class", "confusion_matrix"} <= set(v)
    assert sum(map(sum, v["confusion_matrix"])) == 120  # stratified 20% of 600
    w = metrics["modality_weights"]
    assert w["text"] > w["image"]  # the signal is in the text, and the learned weights say so
    head = json.loads((out / "head.json").read_text())
    assert head["provenance"]["text"]["model"] == "tiny-text"
    assert (out / "history.csv").read_text().startswith("epoch,step,train_loss")


def test_evaluate_predict_and_zero_ablation(caches, tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["train-head", str(caches["text"]), "--fusion", "concat", "--out", str(run),
                               "--epochs", "20", "--lr", "3e-3"]).exit_code == 0
    full = runner.invoke(app, ["evaluate", str(run), str(caches["text"])])
    assert full.exit_code == 0, full.output
    no_text = runner.invoke(app, ["evaluate", str(run), str(caches["text"]), "--zero", "text"])
    assert no_text.exit_code == 0 and "(zero text)" in no_text.output
    m_full = json.loads((run / "eval-text.json").read_text())
    m_zero = json.loads((run / "eval-text-zero-text.json").read_text())
    assert m_full["accuracy"] > 0.85 and m_zero["accuracy"] < 0.6

    out = tmp_path / "predictions.txt"
    result = runner.invoke(app, ["predict", str(run), str(caches["text"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "guid,tag" and len(lines) == 601
    assert lines[1].split(",")[0] == "g0" and {ln.split(",")[1] for ln in lines[1:]} <= {"positive", "neutral", "negative"}


def test_refuses_a_cache_from_other_backbones(caches, tmp_path):
    run = tmp_path / "run"
    train_head(caches["text"], HeadConfig(fusion="logreg"), out=run)
    text, image, y, names = synthetic_features("text")
    other = write_feature_cache(tmp_path / "other.h5", text, image, y, names, text_model="another-bert")
    with pytest.raises(CacheError, match="text weights: 'sha-of-tiny-text' vs 'sha-of-another-bert'"):
        Head.load(run).check_compatible(FeatureSet.from_cache(other))
    result = runner.invoke(app, ["predict", str(run), str(other), "--out", str(tmp_path / "p.txt")])
    assert result.exit_code == 1 and "was not extracted like" in result.output and "Traceback" not in result.output
    wide = write_feature_cache(tmp_path / "wide.h5", np.hstack([text, text]), image, y, names)
    result = runner.invoke(app, ["evaluate", str(run), str(wide)])
    assert result.exit_code == 1 and "feature dims" in result.output
    relabelled = write_feature_cache(tmp_path / "relabelled.h5", text, image, y, ("a", "b", "c"))
    result = runner.invoke(app, ["evaluate", str(run), str(relabelled)])
    assert result.exit_code == 1 and "labels: a, b, c unknown to the head" in result.output
    assert "--label-names positive,neutral,negative" in result.output


def test_compare_and_score_commands(caches, tmp_path):
    for fusion in ("text", "concat"):
        assert runner.invoke(app, ["train-head", str(caches["text"]), "--fusion", fusion, "--epochs", "5",
                                   "--out", str(tmp_path / fusion)]).exit_code == 0
    table = runner.invoke(app, ["compare", str(tmp_path / "text"), str(tmp_path / "concat")])
    assert table.exit_code == 0 and table.output.count("\n| ") == 2 and "| concat | concat |" in table.output

    pred = tmp_path / "pred.txt"
    assert runner.invoke(app, ["predict", str(tmp_path / "concat"), str(caches["text"]), "--out", str(pred)]).exit_code == 0
    _, _, y, names = synthetic_features("text")
    truth = tmp_path / "truth.txt"
    truth.write_text("guid,tag\n" + "".join(f"g{i},{names[t]}\n" for i, t in enumerate(y)))
    result = runner.invoke(app, ["score", str(pred), str(truth)])
    assert result.exit_code == 0 and "n=600" in result.output and "macro-F1" in result.output
    truth.write_text(truth.read_text() + "g999,positive\n")
    result = runner.invoke(app, ["score", str(pred), str(truth)])
    assert result.exit_code == 1 and "no prediction for 1 guid(s)" in result.output and "g999" in result.output


def test_too_few_rows_for_a_validation_split_is_a_one_line_error(tmp_path):
    text, image, y, names = synthetic_features("text", n=12)
    small = write_feature_cache(tmp_path / "small.h5", text[:8], image[:8], np.array([0, 0, 1, 1, 2, 2, 0, 1]))
    result = runner.invoke(app, ["train-head", str(small), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "too few for a stratified 0.2 validation split" in result.output


def test_predict_names_rows_skipped_at_extraction(course_dir, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    assert runner.invoke(app, extract_args(course_dir, out, "--on-error", "skip")).exit_code == 0
    run = tmp_path / "run"
    assert runner.invoke(app, ["train-head", str(out), "--fusion", "logreg", "--val-split", "0",
                               "--out", str(run)]).exit_code == 0
    result = runner.invoke(app, ["predict", str(run), str(out), "--out", str(tmp_path / "p.txt")])
    assert result.exit_code == 0
    assert "1 row(s)" in result.output and "107 (image unreadable" in result.output
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 12  # header + the 11 usable rows


def test_logreg_C_auto_searches_by_cross_validation(caches, tmp_path):
    from mmfuse.grid import expand_grid, parse_values
    result = runner.invoke(app, ["train-head", str(caches["text"]), "--fusion", "logreg", "--C", "auto",
                                 "--out", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["C"] == "auto"
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["validation"]["accuracy"] > 0.85
    assert parse_values("C", "auto,1e-3") == ["auto", 1e-3]
    assert len(expand_grid({"fusion": ["logreg"], "C": ["auto", 1e-3]})) == 2
    bad = runner.invoke(app, ["train-head", str(caches["text"]), "--fusion", "logreg", "--C", "big", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and "a number or 'auto'" in bad.output


@pytest.mark.parametrize("name", list_heads())
def test_every_head_says_in_the_registry_how_it_trains_and_which_fields_it_uses(name):
    from mmfuse.heads.registry import TRAINING, head_info

    info = head_info(name)
    assert info.training in TRAINING and set(info.modalities) <= {"text", "image"} and info.modalities
    assert info.uses_field("fusion") and info.uses_field("seed")
    assert info.uses_field("lr") == (info.training == "gradient")  # a closed-form head has no learning rate
    assert info.uses_field("align_weight") == (name == "aligned") and info.uses_field("C") == (name == "logreg")
