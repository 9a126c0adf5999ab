"""End-to-end fine-tuning with tiny models on CPU: the CLI, freezing, resume, tuned backbones -> extract."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mmfuse.finetune as ft
from mmfuse.cache import FeatureCache
from mmfuse.cli import app
from mmfuse.demo import make_demo_data
from mmfuse.errors import MmfuseError
from mmfuse.extract.image import ImageExtractorConfig, encode_images, load_image_model
from mmfuse.extract.text import TextExtractorConfig, encode_texts
from mmfuse.finetune import FineTuneConfig, finetune, loop
from mmfuse.heads import HeadConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("ft") / "data", n_train=30, n_test=6, seed=1)


def options(tiny_bert, **changes) -> FineTuneConfig:
    base = dict(text=TextExtractorConfig(str(tiny_bert), 32), image=ImageExtractorConfig("resnet18", "none"),
                unfreeze_text_layers=1, unfreeze_image_blocks=1, epochs=2, batch_size=8, grad_accum=2,
                lr_backbone=1e-3, lr_head=3e-3, patience=5, precision="fp32")
    return FineTuneConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def run(data, tiny_bert, tmp_path_factory):
    """One 2-epoch fine-tune (last text layer, ResNet layer4) shared by the tests below."""
    out = tmp_path_factory.mktemp("ft") / "run"
    model, metrics = finetune(data, out, options(tiny_bert), HeadConfig(fusion="concat", hidden=32),
                              progress=False, log=lambda s: None)
    return out, model, metrics


def test_cli_runs_an_epoch_and_writes_a_run_that_predicts_from_raw_data(data, tiny_bert, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(data), "--out", str(out), "--fusion", "weighted",
                                 "--text-model", str(tiny_bert), "--image-model", "resnet18", "--image-weights", "none",
                                 "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--precision", "fp32",
                                 "--augment", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "epoch 1: train loss" in result.output and "peak memory" in result.output
    for name in ("finetune.json", "config.json", "head.json", "head.pt", "image.pt", "text/config.json",
                 "text/tokenizer.json", "metrics.json", "history.csv", "curves.png", "confusion.png", "checkpoint.pt"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["fusion"] == "weighted"
    spec = json.loads((out / "finetune.json").read_text())["finetune"]  # the backbones nested, extract's defaults
    assert spec["text"] == asdict(TextExtractorConfig(str(tiny_bert), 32))
    assert spec["image"] == asdict(ImageExtractorConfig("resnet18", "none"))
    pred = runner.invoke(app, ["predict", str(out), str(data), "--split", "test", "--out", str(tmp_path / "p.txt")])
    assert pred.exit_code == 0, pred.output
    lines = (tmp_path / "p.txt").read_text().splitlines()
    assert lines[0] == "guid,tag" and len(lines) == 7
    ev = runner.invoke(app, ["evaluate", str(out), str(data), "--split", "train"])
    assert ev.exit_code == 0 and "n=30" in ev.output
    wrong = runner.invoke(app, ["predict", str(out), str(out / "metrics.json"), "--out", str(tmp_path / "q.txt")])
    assert wrong.exit_code == 1 and "predicts from raw data" in wrong.output


def test_loss_falls_and_the_best_epoch_is_kept(run):
    out, _, metrics = run
    import csv
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    assert all(float(h["peak_memory_mb"]) > 0 and float(h["seconds_per_step"]) > 0 for h in history)
    best = max(range(len(history)), key=lambda i: float(history[i]["val_macro_f1"])) + 1
    assert metrics["best_epoch"] == best
    assert metrics["validation"]["macro_f1"] == pytest.approx(float(history[best - 1]["val_macro_f1"]))


def test_frozen_parameters_and_batchnorm_statistics_never_change(run, tiny_bert):
    out, model, _ = run
    from transformers import AutoModel
    before_text = AutoModel.from_pretrained(tiny_bert).state_dict()
    after_text = model.text.state_dict()
    for k, v in before_text.items():
        same = torch.equal(v, after_text[k])
        trainable = k.startswith("encoder.layer.1.")  # the last of 2 layers
        assert same != trainable or "position_ids" in k, k
    image_before = load_image_model(ImageExtractorConfig("resnet18", "none"))[0].state_dict()
    image_after = torch.load(out / "image.pt", weights_only=True)
    for k, v in image_before.items():
        if k.startswith("fc."):
            continue
        changed = not torch.equal(v, image_after[k])
        if k.startswith("layer4.") and not k.endswith("num_batches_tracked"):
            assert changed, k  # weights and BatchNorm statistics of the trained stage moved
        elif not k.startswith("layer4."):
            assert not changed, k  # stem, layer1-3 (weights and running stats) are bit-identical


def test_resume_after_an_interruption_gives_the_same_weights(run, data, tiny_bert, tmp_path, monkeypatch):
    full, _, _ = run
    out = tmp_path / "resumed"
    original = loop._save_atomic  # where the loop writes its checkpoint

    def interrupted(obj, path):
        original(obj, path)
        if path.name == "checkpoint.pt":
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(loop, "_save_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(data, out, options(tiny_bert), HeadConfig(fusion="concat", hidden=32), progress=False,
                 log=lambda s: None)
    monkeypatch.setattr(loop, "_save_atomic", original)
    with pytest.raises(MmfuseError, match="--resume"):
        finetune(data, out, options(tiny_bert), HeadConfig(fusion="concat", hidden=32), progress=False,
                 log=lambda s: None)
    finetune(data, out, options(tiny_bert), HeadConfig(fusion="concat", hidden=32), resume=True, progress=False,
             log=lambda s: None)
    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]

    for name in ("image.pt", "head.pt"):
        a = dict(flat(torch.load(full / name, weights_only=True)))
        b = dict(flat(torch.load(out / name, weights_only=True)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    from safetensors.torch import load_file
    a, b = load_file(full / "text" / "model.safetensors"), load_file(out / "text" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MmfuseError, match="other options"):
        finetune(data, out, options(tiny_bert, lr_head=1e-2), HeadConfig(fusion="concat", hidden=32), resume=True,
                 progress=False, log=lambda s: None)


def test_tuned_backbones_feed_extract_with_the_in_memory_features(run, data, tmp_path):
    out, model, _ = run
    cache = tmp_path / "tuned.h5"
    result = runner.invoke(app, ["extract", str(data), "--out", str(cache), "--text-model", str(out / "text"),
                                 "--image-model", "resnet18", "--image-weights", str(out / "image.pt"),
                                 "--max-length", "32", "--batch-size", "8", "--num-workers", "0", "--no-progress",
                                 "--precision", "fp32"])  # compared with the in-memory fp32 features below
    assert result.exit_code == 0, result.output
    c = FeatureCache(cache)
    assert c.provenance["image"]["finetune_run"]["run"] == str(out.resolve())
    assert c.provenance["text"]["finetune_run"]["run"] == str(out.resolve())
    from mmfuse.data import read_course
    records = read_course(data, "train").records
    text_cfg = TextExtractorConfig(str(out / "text"), 32, 8)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(out / "text")
    cls = np.zeros((len(records), model.text.config.hidden_size), np.float32)
    for pos, feats in encode_texts([r.text for r in records], tokenizer, model.text.eval(), text_cfg,
                                   torch.device("cpu")):
        cls[pos] = feats["cls"]
    np.testing.assert_allclose(c.features("text/cls"), cls, rtol=1e-4, atol=1e-5)
    prep = c.provenance["image"]["preprocessing"]
    pooled = np.zeros((len(records), 512), np.float32)
    for pos, feats, _ in encode_images([r.image_path for r in records], model.image.eval(), prep,
                                    ImageExtractorConfig("resnet18", optimize=False, batch_size=8, num_workers=0),
                                    torch.device("cpu")):
        pooled[pos] = feats["pooled"]
    np.testing.assert_allclose(c.features("image/pooled"), pooled, rtol=1e-3, atol=1e-4)
    head = runner.invoke(app, ["train-head", str(cache), "--fusion", "logreg", "--val-split", "0.3",
                               "--out", str(tmp_path / "h")])
    assert head.exit_code == 0, head.output


def test_refusals_are_one_line_errors(data, tiny_bert, tmp_path):
    base = ["finetune", str(data), "--out", str(tmp_path / "r"), "--text-model", str(tiny_bert),
            "--image-model", "resnet18", "--image-weights", "none", "--no-progress"]
    for extra, message in ((["--fusion", "logreg"], "cannot be fine-tuned end to end"),
                           (["--unfreeze-text-layers", "0", "--unfreeze-image-blocks", "0"], "mmfuse extract + mmfuse train-head"),
                           (["--resume"], "nothing to resume"),
                           (["--unfreeze-text-layers", "some"], "a number or 'all'")):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    with pytest.raises(MmfuseError, match="ema"):  # the weight average is a cached-feature option
        ft.finetune(data, tmp_path / "e", head_cfg=HeadConfig(ema=0.9))


def test_image_stages_of_other_torchvision_families():
    from torchvision.models import get_model

    from mmfuse.extract.image import feature_extractor
    for name, first, last in (("resnet18", ("conv1", "bn1"), ("layer4",)),
                              ("densenet121", ("features.conv0",), ("features.norm5",)),
                              ("mobilenet_v3_small", ("features.0",), ("features.12", "classifier"))):
        model = get_model(name, weights=None)
        features, _ = feature_extractor(model)
        stages = ft.image_stages(model, features)
        assert stages[0] == first and stages[-1][-len(last):] == last, (name, stages[:2], stages[-1])
        for stage in stages:
            for module in stage:
                features.get_submodule(module)  # every stage names modules of the extractor


def test_frozen_image_blocks_are_deterministic_in_training_mode(tiny_bert):
    """EfficientNet-Lite's traced training graph applies drop-connect in every block; frozen blocks must not."""
    cfg = options(tiny_bert, image=ImageExtractorConfig("efficientnet-lite0", "none"), unfreeze_image_blocks=1)
    model, _, prep, _, image_prov, image_model = ft.build_model(cfg, HeadConfig(fusion="concat", hidden=16), 3)
    parts = ft.freeze(model.text, image_model, model.image, cfg)
    ft._train_mode(model, parts, image_prov["node"])
    x = torch.randn(2, 3, prep["crop"], prep["crop"])
    with torch.no_grad():
        assert torch.equal(model.image(x)["pooled"], model.image(x)["pooled"])


def test_a_runs_image_weights_load_with_the_preprocessing_it_trained_with(run, tmp_path):
    import shutil
    out, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    spec = json.loads((copy / "finetune.json").read_text())
    spec["image_preprocessing"] = {**spec["image_preprocessing"], "resize": 232}  # as resnet's named weights
    (copy / "finetune.json").write_text(json.dumps(spec))
    _, prep, _ = load_image_model(ImageExtractorConfig("resnet18", str(copy / "image.pt")))
    assert prep["resize"] == 232 and ft.FineTunedRun(copy).prep["resize"] == 232


def flat_entry(entry: dict) -> dict:
    """finetune.json's ``finetune`` entry in the flat shape runs were written in before it nested the extractor
    configurations (text_model, image_model, image_weights, max_length first, then the other fields)."""
    e = dict(entry)
    text, image = e.pop("text"), e.pop("image")
    return {"text_model": text["model"], "image_model": image["model"], "image_weights": image["weights"],
            "max_length": text["max_length"], **e}


def test_the_config_composes_the_extractor_configs_and_reads_both_shapes(tiny_bert):
    from dataclasses import replace
    cfg = options(tiny_bert, seed=3)
    assert cfg.text == TextExtractorConfig(str(tiny_bert), 32)
    assert cfg.image == ImageExtractorConfig("resnet18", "none", seed=3)  # the run's seed is the image init's
    assert replace(cfg, seed=7).image.seed == 7 and FineTuneConfig(seed=5).image.seed == 5
    entry = json.loads(json.dumps(cfg.to_dict()))  # as finetune.json holds it
    assert entry["text"]["model"] == str(tiny_bert) and entry["image"]["weights"] == "none"
    assert not {"text_model", "image_model", "image_weights", "max_length"} & entry.keys()
    assert FineTuneConfig.from_dict(entry) == cfg
    assert FineTuneConfig.from_dict(flat_entry(entry)) == cfg  # a run written before the configs were nested
    assert cfg.text_extractor("run/text") == replace(cfg.text, model="run/text")  # a run's saved backbones
    assert cfg.image_extractor("run/image.pt") == replace(cfg.image, weights="run/image.pt")
    knobs = replace(cfg, image=replace(cfg.image, batch_size=4, num_workers=2, draft=False, optimize=False),
                    text=replace(cfg.text, batch_size=4))
    assert knobs.identity() == cfg.identity() and knobs != cfg  # extraction-only knobs do not define the run
    for other in (replace(cfg, image=replace(cfg.image, weights="DEFAULT")),
                  replace(cfg, text=replace(cfg.text, max_length=64)), replace(cfg, seed=4)):
        assert other.identity() != cfg.identity()
    with pytest.raises(KeyError):
        FineTuneConfig.from_dict({k: v for k, v in flat_entry(entry).items() if k != "image_weights"})


def test_an_earlier_runs_flat_finetune_json_loads_and_resumes(run, data, tiny_bert, tmp_path):
    import shutil
    out, _, _ = run
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    spec = json.loads((copy / "finetune.json").read_text())
    assert spec["finetune"] == json.loads(json.dumps(options(tiny_bert).to_dict()))  # written nested
    (copy / "finetune.json").write_text(json.dumps({**spec, "finetune": flat_entry(spec["finetune"])}))
    assert ft.FineTunedRun(copy).cfg == options(tiny_bert)
    head = HeadConfig(fusion="concat", hidden=32)
    with pytest.raises(MmfuseError, match="other options"):
        finetune(data, copy, options(tiny_bert, lr_head=1e-2), head, resume=True, progress=False, log=lambda s: None)
    with pytest.raises(MmfuseError, match="other options"):
        finetune(data, copy, options(tiny_bert, text=TextExtractorConfig(str(tiny_bert), 16)), head, resume=True,
                 progress=False, log=lambda s: None)
    _, metrics = finetune(data, copy, options(tiny_bert), head, resume=True, progress=False, log=lambda s: None)
    assert metrics["best_epoch"] == run[2]["best_epoch"]
    # saved extraction-only knobs that differ (another version's defaults) do not refuse a resume either
    spec["finetune"]["image"].update(batch_size=64, num_workers=8, optimize=False)
    spec["finetune"]["text"]["batch_size"] = 7
    (copy / "finetune.json").write_text(json.dumps(spec))
    finetune(data, copy, options(tiny_bert), head, resume=True, progress=False, log=lambda s: None)
