"""Extraction end to end through the CLI, resume, refusal to overwrite, and the read API."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
from typer.testing import CliRunner

import mmfuse
from mmfuse.cache import CacheWriter, FeatureCache
from mmfuse.cli import app
from mmfuse.errors import BackboneError, CacheError

runner = CliRunner()


def invoke(args):
    result = runner.invoke(app, args)
    return result


def test_extract_end_to_end_and_read_back(clean_course_dir, extract_args, tmp_path):
    out = tmp_path / "f" / "train.h5"
    result = invoke(extract_args(clean_course_dir, out))
    assert result.exit_code == 0, result.output
    assert "12 rows, 0 skipped" in result.output and "1 of 12 texts were not UTF-8" in result.output

    cache = FeatureCache(out)
    assert cache.guids == [str(100 + i) for i in range(12)]  # file order
    assert cache.label_names == ("positive", "neutral", "negative")
    assert cache.labels.tolist()[:3] == [0, 1, 2]
    assert cache.features("text/cls").shape == (12, 32)
    assert cache.features("text/mean").shape == (12, 32)
    assert cache.features("image/pooled").shape == (12, 512)  # resnet18 pooled
    assert cache.features("image/pooled", torch=True).dtype.is_floating_point
    for name in cache.feature_names:
        x = cache.features(name)
        assert np.isfinite(x).all() and np.abs(x).sum(1).min() > 0  # every row written
    p = cache.provenance
    assert p["image"]["weights"] == "random init (seed 0)" and p["image"]["node"] == "flatten"
    assert p["text"]["weights_sha256"] and p["data"]["fingerprint"] and p["versions"]["torch"]

    info = invoke(["info", str(out)])
    assert info.exit_code == 0 and "12 rows (0 skipped)" in info.output
    assert "image/pooled   (12, 512)" in info.output and "positive 6 (50%)" in info.output


def test_unlabelled_split_has_label_minus_one(clean_course_dir, extract_args, tmp_path):
    result = invoke(extract_args(clean_course_dir, tmp_path / "test.h5", "--split", "test"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache(tmp_path / "test.h5")
    assert cache.labels.tolist() == [-1, -1, -1] and not cache.labelled


def test_corrupt_image_is_an_error_naming_guid_and_path(course_dir, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    result = invoke(extract_args(course_dir, out))
    assert result.exit_code == 1
    assert "guid 107" in result.output and "107.jpg" in result.output and "--on-error skip" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(CacheError, match="incomplete"):  # what was written never reads as complete
        FeatureCache(out)
    assert "INCOMPLETE: re-run the extract command to resume" in invoke(["info", str(out)]).output
    # the suggested fix resumes the same cache and records the skipped row
    result = invoke(extract_args(course_dir, out, "--on-error", "skip"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache(out)
    assert len(cache) == 11 and "107" not in cache.guids
    assert cache.skipped[0][0] == "107" and "image unreadable" in cache.skipped[0][1]


def test_on_error_skip_records_every_skipped_guid(course_dir, extract_args, tmp_path):
    (course_dir / "data" / "101.txt").unlink()
    out = tmp_path / "train.h5"
    result = invoke(extract_args(course_dir, out, "--on-error", "skip"))
    assert result.exit_code == 0, result.output
    assert "skipping guid 101: text file missing" in result.output
    assert "skipping guid 107: image unreadable" in result.output
    cache = FeatureCache(out)
    assert [g for g, _ in cache.skipped] == ["101", "107"] and len(cache) == 10
    info = invoke(["info", str(out)])
    assert "skipped guid 101: text file missing" in info.output


def test_resume_after_interruption_gives_the_clean_rows(clean_course_dir, extract_args, tiny_bert, tmp_path,
                                                        monkeypatch):
    clean = tmp_path / "clean.h5"
    assert invoke(extract_args(clean_course_dir, clean)).exit_code == 0

    original, calls = CacheWriter.write, {"n": 0}

    def interrupted_write(self, modality, rows, features):
        if modality == "image" and calls["n"] == 1:
            raise KeyboardInterrupt  # the user presses Ctrl-C midway through the images
        calls["n"] += modality == "image"
        return original(self, modality, rows, features)

    out = tmp_path / "resumed.h5"
    monkeypatch.setattr(CacheWriter, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        mmfuse.extract(clean_course_dir, "train", out, progress=False, log=lambda s: None,
                       text=mmfuse.TextExtractorConfig(str(tiny_bert), 32, 8),
                       image=mmfuse.ImageExtractorConfig("resnet18", "none", 4, 0))
    with pytest.raises(CacheError, match=r"incomplete \(4/12 rows\)"):
        FeatureCache(out)
    monkeypatch.setattr(CacheWriter, "write", original)

    result = invoke(extract_args(clean_course_dir, out))
    assert result.exit_code == 0, result.output
    assert "image 8 in" in result.output and "text 0 in" in result.output  # only the rest was computed
    a, b = FeatureCache(clean), FeatureCache(out)
    assert a.guids == b.guids and a.labels.tolist() == b.labels.tolist()
    for name in a.feature_names:
        np.testing.assert_allclose(a.features(name), b.features(name), rtol=1e-4, atol=1e-5)


def test_refuses_to_overwrite_another_configuration(clean_course_dir, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    assert invoke(extract_args(clean_course_dir, out)).exit_code == 0
    again = invoke(extract_args(clean_course_dir, out))  # same configuration: nothing to do
    assert again.exit_code == 0 and "text 0 in" in again.output and "image 0 in" in again.output
    other = extract_args(clean_course_dir, out)
    other[other.index("--max-length") + 1] = "16"
    result = invoke(other)
    assert result.exit_code == 1 and "another configuration" in result.output and "--overwrite" in result.output
    assert FeatureCache(out).provenance["text"]["max_length"] == 32  # untouched
    result = invoke(other + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert FeatureCache(out).provenance["text"]["max_length"] == 16


def test_bf16_autocast_keeps_features_close(clean_course_dir, extract_args, tmp_path):
    fp32, bf16 = tmp_path / "fp32.h5", tmp_path / "bf16.h5"
    assert invoke(extract_args(clean_course_dir, fp32)).exit_code == 0
    result = invoke(extract_args(clean_course_dir, bf16, "--precision", "bf16", "--store-dtype", "float16"))
    assert result.exit_code == 0, result.output
    a, b = FeatureCache(fp32), FeatureCache(bf16)
    assert b.dtypes["image/pooled"] == "float16"
    for name in a.feature_names:
        x, y = a.features(name), b.features(name)
        cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
        assert cos.min() > 0.98, name


def test_decoding_in_worker_processes(clean_course_dir, extract_args, tmp_path):
    args = extract_args(clean_course_dir, tmp_path / "w.h5")
    args[args.index("--num-workers") + 1] = "2"
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert len(FeatureCache(tmp_path / "w.h5")) == 12


def test_offline_text_model_error_says_how_to_pass_a_local_folder(monkeypatch):
    from mmfuse.extract import hub, text

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(BackboneError, match="not in the local Hugging Face cache.*local model folder.*minilm"):
        text.load_text_encoder(text.TextExtractorConfig("some-org/not-cached-model"))
    with pytest.raises(BackboneError, match="text model folder not found"):
        text.load_text_encoder(text.TextExtractorConfig("./no/such/folder"))


def test_offline_image_weights_error_says_how_to_pass_a_file(monkeypatch, clean_course_dir, extract_args,
                                                             tmp_path):
    from torchvision.models import ResNet18_Weights

    def no_network(self, *a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", no_network)
    args = extract_args(clean_course_dir, tmp_path / "x.h5")
    args[args.index("--image-weights") + 1] = "DEFAULT"
    result = invoke(args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "could not download resnet18 weights IMAGENET1K_V1" in result.output
    assert "--image-weights path/to/state_dict.pth" in result.output
    assert not (tmp_path / "x.h5").exists()  # nothing half-written


def test_image_weights_from_a_file(clean_course_dir, extract_args, tmp_path):
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(1)
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    args = extract_args(clean_course_dir, tmp_path / "x.h5")
    args[args.index("--image-weights") + 1] = str(tmp_path / "r18.pth")
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert FeatureCache(tmp_path / "x.h5").provenance["image"]["weights"]["sha256"]
    args[args.index("--image-model") + 1] = "resnet34"
    bad = invoke(args + ["--overwrite"])
    assert bad.exit_code == 1 and "do not fit resnet34" in bad.output


def test_optimized_cpu_runtime_gives_the_eager_features(clean_course_dir, extract_args, tmp_path, monkeypatch):
    from mmfuse.extract import image

    monkeypatch.setattr(image, "OPTIMIZE_MIN_IMAGES", 1)  # a dozen images: optimised all the same
    fast, eager = tmp_path / "fast.h5", tmp_path / "eager.h5"
    assert invoke(extract_args(clean_course_dir, fast, "--optimize", "--precision", "fp32")).exit_code == 0
    assert FeatureCache(fast).provenance["numerics"]["image_runtime"] == "torchscript-optimized"
    assert invoke(extract_args(clean_course_dir, eager, "--no-optimize", "--precision", "fp32")).exit_code == 0
    np.testing.assert_allclose(FeatureCache(fast).features("image/pooled"),
                               FeatureCache(eager).features("image/pooled"), rtol=1e-3, atol=1e-4)


def test_the_optimisation_is_opt_in_and_runs_only_where_the_split_pays_for_it(clean_course_dir, extract_args,
                                                                                tmp_path):
    from mmfuse.extract.image import OPTIMIZE_MIN_IMAGES, ImageExtractorConfig, optimize_pays

    assert ImageExtractorConfig("resnet18").optimize is False  # eager unless asked for
    assert not optimize_pays(OPTIMIZE_MIN_IMAGES - 1) and optimize_pays(OPTIMIZE_MIN_IMAGES)
    out = tmp_path / "small.h5"  # asked for, on a dozen images: skipped all the same
    assert invoke(extract_args(clean_course_dir, out, "--optimize", "--precision", "fp32")).exit_code == 0
    prov = FeatureCache(out).provenance
    assert prov["numerics"]["image_runtime"] == "eager" and prov["image_config"]["optimize"] is False


def test_hub_ids_with_dots_are_not_taken_for_folders(monkeypatch):
    from mmfuse.extract import hub, text

    assert text.resolve_text_model("BAAI/bge-small-en-v1.5") == ("BAAI/bge-small-en-v1.5", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(BackboneError, match="'BAAI/bge-small-en-v1.5' is not in the local Hugging Face cache"):
        text.load_text_encoder(text.TextExtractorConfig("BAAI/bge-small-en-v1.5"))


def test_empty_split_and_all_rows_skipped_are_one_line_errors(clean_course_dir, extract_args, tmp_path):
    (clean_course_dir / "test_without_label.txt").write_text("guid,tag\n")
    result = invoke(extract_args(clean_course_dir, tmp_path / "t.h5", "--split", "test"))
    assert result.exit_code == 1 and "lists no rows" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("t.h5*"))  # no file, no .partial left behind
    for i in range(12):
        (clean_course_dir / "data" / f"{100 + i}.txt").unlink()
    result = invoke(extract_args(clean_course_dir, tmp_path / "s.h5", "--on-error", "skip"))
    assert result.exit_code == 1 and "every row" in result.output and "was skipped" in result.output


def test_unknown_device_is_a_one_line_error(clean_course_dir, extract_args, tmp_path):
    result = invoke(extract_args(clean_course_dir, tmp_path / "d.h5", "--device", "gpu"))
    assert result.exit_code == 1 and "unknown --device 'gpu'" in result.output


def test_auto_text_feature_follows_the_encoders_trained_pooling(clean_course_dir, extract_args, tiny_bert, tmp_path):
    """``auto`` reads a sentence-transformers folder's Pooling config (mean here); a plain BERT gets CLS."""
    import json
    import shutil

    from mmfuse.heads import FeatureSet
    st = tmp_path / "st-model"
    shutil.copytree(tiny_bert, st)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": False,
                                                              "pooling_mode_mean_tokens": True}))
    for model, expected in ((tiny_bert, "cls"), (st, "mean")):
        out = tmp_path / f"{model.name}.h5"
        args = extract_args(clean_course_dir, out)
        args[args.index("--text-model") + 1] = str(model)
        assert invoke(args).exit_code == 0
        X = FeatureSet.from_cache(out, "auto")
        assert X.text_feature == expected
        np.testing.assert_array_equal(X.text, FeatureCache(out).features(f"text/{expected}"))
        result = invoke(["train-head", str(out), "--fusion", "logreg", "--val-split", "0", "--out", str(tmp_path / expected)])
        assert result.exit_code == 0 and f"on text/{expected}" in result.output
        assert json.loads((tmp_path / expected / "head.json").read_text())["text_feature"] == expected


def test_bf16_on_a_cpu_without_native_bf16_warns(clean_course_dir, extract_args, tmp_path, monkeypatch):
    import importlib
    ex = importlib.import_module("mmfuse.extract")
    monkeypatch.setattr(ex, "native_bf16", lambda: False)  # as on an AVX2 CPU
    result = invoke(extract_args(clean_course_dir, tmp_path / "c.h5", "--precision", "bf16"))
    assert result.exit_code == 0 and "warning: this CPU has no native bf16" in result.output, result.output
