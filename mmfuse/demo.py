"""A small synthetic course-format data set for the demo and the docs.

Labels are readable partly from the texts (sentiment words) and partly from the images (a
class colour): about 40% of the rows carry the label in the text only, 40% in the image only
and 20% in both, so a fused head should beat either modality alone.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .data import COURSE_TAGS
from .outputs import new_folder

WORDS = {
    "positive": ["love", "wonderful", "happy", "amazing", "great day", "so proud", "beautiful"],
    "neutral": ["meeting at noon", "report", "schedule", "the bus", "update", "weather today"],
    "negative": ["hate", "awful", "sad", "terrible", "worst day", "so angry", "broken"],
}
FILLER = ["photo", "from", "today", "with", "friends", "#instagood", "city", "look", "this", "at", "new"]
COLOURS = {"positive": (235, 180, 40), "neutral": (90, 150, 90), "negative": (40, 50, 140)}
PRIORS = (0.5, 0.2, 0.3)  # imbalanced like real tweets


def _text(rng: np.random.Generator, tag: str | None) -> str:
    words = list(rng.choice(FILLER, size=rng.integers(4, 9)))
    if tag is not None:
        words.insert(int(rng.integers(0, len(words))), str(rng.choice(WORDS[tag])))
    return " ".join(words)


def _image(rng: np.random.Generator, tag: str | None) -> Image.Image:
    w, h = int(rng.integers(120, 320)), int(rng.integers(100, 260))
    base = np.array(COLOURS[tag]) if tag else rng.integers(0, 256, 3)
    colour = np.clip(base + rng.normal(0, 18, 3), 0, 255).astype(np.uint8)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in colour))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # distracting shapes in random colours
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        box = (x0, y0, x0 + int(rng.integers(8, w // 2 + 10)), y0 + int(rng.integers(8, h // 2 + 10)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


def make_demo_data(root: str | Path, n_train: int = 300, n_test: int = 60, seed: int = 0,
                   overwrite: bool = False) -> Path:
    """Write ``root/train.txt``, ``root/test_without_label.txt`` and ``root/data/*``; returns root.

    The true test tags are written to ``root/test_labels.txt`` (same format) so predictions can be
    scored. Every 25th text is saved in GB18030, as in the real course data. The folder is written
    beside ``root`` and renamed into place; an existing demo folder is replaced only with
    ``overwrite``, and a folder mmfuse did not make (a real data set) never.
    """
    with new_folder(root, "demo data set", overwrite) as tmp:
        _write_demo(tmp, n_train, n_test, seed)
        (tmp / DEMO_MARKER).write_text(json.dumps({"n_train": n_train, "n_test": n_test, "seed": seed}) + "\n")
    return Path(root)


DEMO_MARKER = "mmfuse-demo.json"  # says the folder is demo data that mmfuse may replace (outputs.FOLDER_KINDS)


def _write_demo(root: Path, n_train: int, n_test: int, seed: int) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = {"train": [], "test": []}
    for i in range(n_train + n_test):
        guid = str(1000 + i)
        tag = COURSE_TAGS[rng.choice(3, p=PRIORS)]
        where = rng.choice(["text", "image", "both"], p=[0.4, 0.4, 0.2])
        text = _text(rng, tag if where in ("text", "both") else None)
        if i % 25 == 0:
            (root / "data" / f"{guid}.txt").write_bytes((text + " \u2026").encode("gb18030"))
        else:
            (root / "data" / f"{guid}.txt").write_text(text + "\n", encoding="utf-8")
        _image(rng, tag if where in ("image", "both") else None).save(root / "data" / f"{guid}.jpg", quality=90)
        rows["train" if i < n_train else "test"].append((guid, tag))
    (root / "train.txt").write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in rows["train"]))
    (root / "test_without_label.txt").write_text("guid,tag\n" + "".join(f"{g},null\n" for g, _ in rows["test"]))
    (root / "test_labels.txt").write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in rows["test"]))
