"""Fixtures: a tiny course-format data set and a tiny random BERT, built locally (no downloads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TAGS = ["positive", "neutral", "negative", "positive", "positive", "negative",
        "positive", "neutral", "negative", "positive", "negative", "positive"]
WORDS = ["good", "bad", "happy", "sad", "day", "the", "a", "photo", "love", "hate", "city", "at"]


def write_course(root: Path, n: int = 12, corrupt: bool = True, n_test: int = 3) -> Path:
    """A dozen pairs: a GB18030 text, a PNG saved as .jpg, grayscale, CMYK and RGBA images, and
    (``corrupt=True``) one truncated JPEG at guid 7."""
    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    guids = [str(100 + i) for i in range(n + n_test)]
    for i, guid in enumerate(guids):
        text = " ".join(rng.choice(WORDS, size=3 + i % 5))
        if i == 2:
            (data / f"{guid}.txt").write_bytes(f"{text} \u201cquoted\u201d \u2026".encode("gb18030"))
        else:
            (data / f"{guid}.txt").write_text(text + "\n", encoding="utf-8")
        pixels = rng.integers(0, 256, (40 + 7 * i, 60 + 5 * i, 3), dtype=np.uint8)
        img = Image.fromarray(pixels)
        path = data / f"{guid}.jpg"
        if i == 3:
            img.save(path, format="PNG")  # a PNG with a .jpg name
        elif i == 4:
            img.convert("L").save(path, format="JPEG")
        elif i == 5:
            img.convert("CMYK").save(path, format="JPEG")
        elif i == 6:
            img.convert("RGBA").save(path, format="PNG")
        else:
            img.save(path, format="JPEG")
    if corrupt:
        good = (data / f"{guids[7]}.jpg").read_bytes()
        (data / f"{guids[7]}.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    (root / "train.txt").write_text("guid,tag\n" + "".join(f"{g},{TAGS[i % len(TAGS)]}\n"
                                                           for i, g in enumerate(guids[:n])))
    (root / "test_without_label.txt").write_text("guid,tag\n" + "".join(f"{g},null\n" for g in guids[n:]))
    return root


@pytest.fixture
def course_dir(tmp_path) -> Path:
    return write_course(tmp_path / "course", corrupt=True)


@pytest.fixture
def clean_course_dir(tmp_path) -> Path:
    return write_course(tmp_path / "course", corrupt=False)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with a tiny WordPiece vocab, saved as a local HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz",
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"], *".,!?#@\u201c\u201d\u2026"]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    import torch
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture
def extract_args(tiny_bert):
    """CLI options for a fast extraction with the tiny BERT and a random ResNet-18."""
    def args(data_dir: Path, out: Path, *extra: str) -> list[str]:
        return ["extract", str(data_dir), "--out", str(out), "--text-model", str(tiny_bert),
                "--image-model", "resnet18", "--image-weights", "none", "--batch-size", "4",
                "--num-workers", "0", "--max-length", "32", "--no-progress", *extra]
    return args


def write_feature_cache(path: Path, text: np.ndarray, image: np.ndarray, y: np.ndarray,
                        label_names=("positive", "neutral", "negative"), text_model: str = "tiny-text",
                        guids: list[str] | None = None, identity: str = "x", provenance: dict | None = None,
                        multilabel: bool = False) -> Path:
    """A finished feature cache with the given arrays, written through the cache's own writer.
    ``provenance`` overrides entries: ``{"text": {"max_length": 16}, "precision": "bf16"}``, ..."""
    from mmfuse.cache import CacheWriter

    n = len(y)
    guids = guids or [f"g{i}" for i in range(n)]
    prov = {"text": {"model": text_model, "weights_sha256": f"sha-of-{text_model}", "revision": None,
                     "max_length": 32, "source": text_model, "architecture": "BertModel"},
            "image": {"model": "tiny-image", "weights": "random init (seed 0)", "preprocessing": {"crop": 224}},
            "data": {"root": str(path.parent), "split": "train", "fingerprint": "f" * 64, "encodings": {}},
            "precision": "fp32", "store_dtype": "float32", "device": "cpu", "versions": {}, "created": "now"}
    for key, value in (provenance or {}).items():
        prov[key] = {**prov[key], **value} if isinstance(value, dict) else value
    w = CacheWriter.open(path, guids=guids, labels=np.asarray(y, np.int8 if multilabel else np.int64),
                         label_names=tuple(label_names), multilabel=multilabel, skipped={}, store_dtype="float32", provenance=prov, identity=identity,
                         dims={"text/cls": text.shape[1], "text/mean": text.shape[1], "image/pooled": image.shape[1]})
    rows = np.arange(n)
    w.write("text", rows, {"text/cls": text, "text/mean": text})
    w.write("image", rows, {"image/pooled": image})
    assert w.finish()
    w.close()
    return path


def synthetic_features(kind: str, n: int = 600, seed: int = 0):
    """(text, image, y, label_names): the label is readable from the text only (``text``), the image
    only (``image``), or only from both together (``both``: an XOR of one text and one image sign)."""
    rng = np.random.default_rng(seed)
    text, image = rng.normal(size=(n, 16)).astype(np.float32), rng.normal(size=(n, 12)).astype(np.float32)
    if kind == "text":
        return text, image, np.argmax(text[:, :3] @ np.eye(3) * 3, 1), ("positive", "neutral", "negative")
    if kind == "image":
        return text, image, np.argmax(image[:, :3], 1), ("positive", "neutral", "negative")
    text, image = rng.normal(size=(2 * n, 8)).astype(np.float32), rng.normal(size=(2 * n, 8)).astype(np.float32)
    y = ((text[:, 0] > 0) ^ (image[:, 0] > 0)).astype(np.int64)
    return text, image, y, ("yes", "no")


def multilabel_features(n: int = 900, seed: int = 0):
    """(text, image, Y, label_names): six labels, t0-t2 readable only from the text, i0-i2 only from the
    image; t2 and i2 are rare (about 5% of rows), the others 30-50%."""
    rng = np.random.default_rng(seed)
    text, image = rng.normal(size=(n, 16)).astype(np.float32), rng.normal(size=(n, 12)).astype(np.float32)
    Y = np.stack([text[:, 0] > 0.5, text[:, 1] > 0, text[:, 2] > 1.65,
                  image[:, 0] > 0.5, image[:, 1] > 0, image[:, 2] > 1.65], 1).astype(np.int8)
    return text, image, Y, ("t0", "t1", "t2", "i0", "i1", "i2")
