"""Backbone families through `mmfuse extract`, each checked against the library's own reference call on
the same images and texts: two-tower CLIP and SigLIP checkpoints, Hugging Face vision encoders (ViT,
DINOv2, ConvNeXt) and timm models. Every model is a tiny random one saved locally (no downloads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmfuse.cache import FeatureCache
from mmfuse.cli import app
from mmfuse.data import open_image, read_data

runner = CliRunner()
TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "happy", "sad", "day", "the", "a", "photo",
         "love", "hate", "city", "at", "that", "feels", "positive", "neutral", "negative", "."]


def _tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    tok.save_pretrained(folder)
    return tok


def save(model, processor, folder: Path) -> Path:
    torch.manual_seed(0)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("tiny-clip")
    _tokenizer(folder)
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(**TOWER, vocab_size=len(VOCAB), max_position_embeddings=77, bos_token_id=2,
                                         eos_token_id=3, pad_token_id=0),
                        vision_config=dict(**TOWER, image_size=32, patch_size=8), projection_dim=16)
    return save(CLIPModel(config), CLIPImageProcessor(size={"shortest_edge": 32},
                                                      crop_size={"height": 32, "width": 32}), folder)


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = tmp_path_factory.mktemp("tiny-siglip")
    _tokenizer(folder)
    torch.manual_seed(0)
    config = SiglipConfig(text_config=dict(**TOWER, vocab_size=len(VOCAB), max_position_embeddings=16),
                          vision_config=dict(**TOWER, image_size=32, patch_size=8))
    return save(SiglipModel(config), SiglipImageProcessor(size={"height": 32, "width": 32}), folder)


def vision_model(kind: str, folder: Path) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    if kind.startswith("vit"):  # vit-classifier: a checkpoint without pooler weights, as ViTForImageClassification's
        model = tf.ViTModel(tf.ViTConfig(**TOWER, image_size=32, patch_size=8), add_pooling_layer=kind == "vit")
        proc = tf.ViTImageProcessor(size={"height": 32, "width": 32})
    elif kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**TOWER, image_size=32, patch_size=8))
        proc = tf.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    else:
        model = tf.ConvNextModel(tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]))
        proc = tf.ConvNextImageProcessor(size={"shortest_edge": 32})
    return save(model, proc, folder)


def extract(data: Path, out: Path, *options: str, expect_ok: bool = True):
    result = runner.invoke(app, ["extract", str(data), "--out", str(out), "--batch-size", "4", "--num-workers",
                                 "0", "--no-progress", "--precision", "fp32", *options])  # the reference: fp32
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


def images_and_texts(data: Path, cache: FeatureCache):
    records = {r.guid: r for r in read_data(data, "train").records}
    draft = cache.provenance["image"]["preprocessing"]["jpeg_draft"]
    return ([open_image(records[g].image_path, draft or None) for g in cache.guids],
            [records[g].text for g in cache.guids])


def pixel_values(folder: Path, images) -> torch.Tensor:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]


def as_tensor(out):
    return out if torch.is_tensor(out) else out.pooler_output


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_two_tower_checkpoint_extracts_both_towers_like_the_model_itself(family, clean_course_dir, tmp_path,
                                                                         tiny_clip, tiny_siglip):
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_clip if family == "clip" else tiny_siglip
    out = tmp_path / "pair.h5"
    extract(clean_course_dir, out, "--model", str(folder))
    cache = FeatureCache(out)
    assert {"text/pooled", "text/mean", "text/proj", "image/pooled", "image/mean", "image/proj"} <= set(cache.dims)
    assert cache.dims["text/proj"] == cache.dims["image/proj"]  # one shared space
    text_prov = cache.provenance["text"]
    assert text_prov["max_length"] == (77 if family == "clip" else 16)  # the tower's own, not --max-length 128
    model, tok = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    images, texts = images_and_texts(clean_course_dir, cache)
    with torch.inference_mode():
        ref_image = as_tensor(model.get_image_features(pixel_values=pixel_values(folder, images)))
        pad = {"padding": "max_length"} if family == "siglip" else {}
        ref_text = torch.cat([as_tensor(model.get_text_features(
            **{k: v for k, v in tok([t], truncation=True, max_length=text_prov["max_length"], return_tensors="pt",
                                    **pad).items() if k in tok.model_input_names})) for t in texts])
        ref_pooled = model.vision_model(pixel_values=pixel_values(folder, images)).pooler_output
    np.testing.assert_allclose(cache.features("image/proj"), ref_image.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(cache.features("text/proj"), ref_text.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(cache.features("image/pooled"), ref_pooled.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "vit-classifier", "dinov2", "convnext"])
def test_hugging_face_vision_encoder_stores_its_pooled_output(kind, clean_course_dir, tmp_path, tiny_bert):
    from transformers import AutoModel

    folder = vision_model(kind, tmp_path / kind)
    out = tmp_path / f"{kind}.h5"
    extract(clean_course_dir, out, "--text-model", str(tiny_bert), "--image-model", str(folder))
    cache = FeatureCache(out)
    images, _ = images_and_texts(clean_course_dir, cache)
    model = AutoModel.from_pretrained(folder, **({"add_pooling_layer": False} if kind == "vit-classifier" else {}))
    with torch.inference_mode():
        ref = model.eval()(pixel_values=pixel_values(folder, images))
    pooled = ref.pooler_output if kind != "vit-classifier" else ref.last_hidden_state[:, 0]  # no random pooler
    np.testing.assert_allclose(cache.features("image/pooled"), pooled.flatten(1).numpy(), atol=1e-5, rtol=1e-5)
    if kind.startswith("vit") or kind == "dinov2":  # token models: the class token and the mean of the patch tokens too
        np.testing.assert_allclose(cache.features("image/cls"), ref.last_hidden_state[:, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(cache.features("image/mean"), ref.last_hidden_state[:, 1:].mean(1).numpy(),
                                   atol=1e-5)
    assert cache.provenance["image"]["family"] == "transformers"


@pytest.mark.parametrize("name", ["timm:resnet10t", "timm/vit_tiny_patch16_224"])
def test_timm_model_stores_its_pre_logits_vector(name, clean_course_dir, tmp_path, tiny_bert):
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    out = tmp_path / "timm.h5"
    extract(clean_course_dir, out, "--text-model", str(tiny_bert), "--image-model", name, "--image-weights", "none")
    cache = FeatureCache(out)
    torch.manual_seed(0)  # the seed --image-weights none initialises with
    model = timm.create_model(name.split(":")[-1].split("/")[-1], pretrained=False, num_classes=0).eval()
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    images, _ = images_and_texts(clean_course_dir, cache)
    with torch.inference_mode():
        ref = model.forward_head(model.forward_features(torch.stack([transform(i) for i in images])), pre_logits=True)
    np.testing.assert_allclose(cache.features("image/pooled"), ref.numpy(), atol=1e-5, rtol=1e-5)
    assert cache.provenance["image"]["preprocessing"]["library"] == "timm"


def test_a_clip_checkpoint_as_text_model_alone_gives_its_text_tower(clean_course_dir, tmp_path, tiny_clip):
    out = tmp_path / "clip-text.h5"
    extract(clean_course_dir, out, "--text-model", str(tiny_clip), "--image-model", "resnet18",
            "--image-weights", "none")
    cache = FeatureCache(out)
    assert {"text/pooled", "text/mean", "text/proj", "image/pooled"} == set(cache.dims)


def test_class_prompts_are_stored_with_the_cache(clean_course_dir, tmp_path, tiny_clip, tiny_bert):
    out = tmp_path / "prompts.h5"
    extract(clean_course_dir, out, "--model", str(tiny_clip), "--class-prompts", "a photo that feels {}")
    cache = FeatureCache(out)
    zs = cache.provenance["zeroshot"]
    assert zs["prompts"] == [f"a photo that feels {n}" for n in cache.label_names]
    assert cache.extras["zeroshot/text"].shape == (3, cache.dims["text/proj"])
    info = runner.invoke(app, ["info", str(out)])
    assert "zeroshot prompts" in info.output and "a photo that feels neutral" in info.output
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("good\nbad\n")
    result = extract(clean_course_dir, tmp_path / "p2.h5", "--model", str(tiny_clip), "--class-prompts",
                     str(prompts), expect_ok=False)
    assert result.exit_code == 1 and "2 prompts for 3 classes" in result.output
    result = extract(clean_course_dir, tmp_path / "p3.h5", "--text-model", str(tiny_bert), "--image-model",
                     "resnet18", "--image-weights", "none", "--class-prompts", "a {}", expect_ok=False)
    assert result.exit_code == 1 and "two-tower" in result.output and "Traceback" not in result.output


def test_unknown_or_unreachable_backbones_are_one_line(clean_course_dir, tmp_path, tiny_bert, monkeypatch):
    from mmfuse.extract import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    for image_model, weights, words in [("some-org/not-cached-vit", "DEFAULT", "local folder"),
                                        ("some-org/not-cached-vit", "none", "weights are those of its folder"),
                                        ("timm:no_such_net", "none", "unknown timm"), ("resnet5000", "none", "timm:NAME")]:
        result = extract(clean_course_dir, tmp_path / "x.h5", "--text-model", str(tiny_bert), "--image-model",
                         image_model, "--image-weights", weights, expect_ok=False)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and len(errors) == 1 and words in errors[0], result.output


def test_a_timm_name_without_timm_says_how_to_install_it(clean_course_dir, tmp_path, tiny_bert, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError(name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_timm)
    result = extract(clean_course_dir, tmp_path / "x.h5", "--text-model", str(tiny_bert), "--image-model",
                     "timm:resnet10t", "--image-weights", "none", expect_ok=False)
    assert result.exit_code == 1 and "pip install" in result.output and "mmfuse[backbones]" in result.output


def test_zeroshot_head_scores_the_prompts_without_training(tmp_path, tiny_clip, tiny_bert):
    """Labels that follow the prompts: each text is its label's prompt, so text-to-prompt similarity is exact."""
    import json

    from conftest import TAGS, write_course
    from mmfuse.heads import FeatureSet, Head

    data = write_course(tmp_path / "course", n=36, corrupt=False)  # 36 rows: enough for a 2-fold grid
    for i in range(36):
        (data / "data" / f"{100 + i}.txt").write_text(f"a photo that feels {TAGS[i % len(TAGS)]}\n")
    cache = tmp_path / "clip.h5"
    extract(data, cache, "--model", str(tiny_clip), "--class-prompts", "a photo that feels {}")
    result = runner.invoke(app, ["train-head", str(cache), "--fusion", "zeroshot", "--zeroshot-from", "text",
                                 "--val-split", "0", "--out", str(tmp_path / "zs")])
    assert result.exit_code == 0, result.output
    head = Head.load(tmp_path / "zs")
    X = FeatureSet.from_cache(cache)
    assert (head.predict(X) == X.y).mean() == 1.0  # chance is 1/3
    assert json.loads((tmp_path / "zs" / "metrics.json").read_text())["text_feature"] == "proj"
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "zs"), str(cache)])
    assert evaluated.exit_code == 0 and "accuracy 1.000" in evaluated.output, evaluated.output
    for source in ("image", "both"):  # random towers: any score, but every row gets one
        run = tmp_path / f"zs-{source}"
        assert runner.invoke(app, ["train-head", str(cache), "--fusion", "zeroshot", "--zeroshot-from", source,
                                   "--val-split", "0", "--out", str(run)]).exit_code == 0
        assert Head.load(run).predict_proba(X).shape == (36, 3)
    grid = runner.invoke(app, ["grid", str(cache), "--fusion", "zeroshot,logreg", "--folds", "2", "--zeroshot-from",
                               "text", "--out", str(tmp_path / "grid"), "--no-progress"])
    assert grid.exit_code == 0 and "zeroshot" in (tmp_path / "grid" / "summary.md").read_text(), grid.output
    plain = tmp_path / "plain.h5"
    extract(data, plain, "--text-model", str(tiny_bert), "--image-model", "resnet18", "--image-weights", "none")
    result = runner.invoke(app, ["train-head", str(plain), "--fusion", "zeroshot", "--out", str(tmp_path / "no")])
    assert result.exit_code == 1 and "--class-prompts" in result.output and "Traceback" not in result.output
