"""Label names that matplotlib would read as math, a labelled test split lacking a rare label, and a text
of megabytes: each used to crash, refuse or take minutes and gigabytes."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from conftest import WORDS, multilabel_features, synthetic_features, write_course, write_feature_cache
from mmfuse.cache import FeatureCache
from mmfuse.cli import app
from mmfuse.data import CsvFormat
from mmfuse.eda import inspect_data
from mmfuse.extract import ImageExtractorConfig, TextExtractorConfig, extract
from mmfuse.extract.text import cut, load_tokenizer, max_chars, tokenize
from mmfuse.heads import HeadConfig, train_head
from mmfuse.runs import evaluate_run

runner = CliRunner()
FAST = dict(epochs=5, hidden=32, batch_size=64)
MATH = ("$\\bad$", "a_b^c", "5$")  # `$\bad$` is a mathtext parse error; the others would render as math

FAULTS_TABLE = [  # (fault, what mmfuse does, the test that injects it)
    ("label names such as `$\\bad$` (matplotlib math)", "plots show them as plain text: training writes "
     "`confusion.png` / `label_f1.png`, `metrics.json` and `mmfuse inspect`'s `labels.png` (the parse error used to "
     "crash after the weights were saved)", "test_label_names_with_math_train_plot_and_inspect"),
    ("a labelled test split that lacks a rare label (24 of 25 genres), or names its labels in another order",
     "`predict` and `evaluate` map its labels into the head's by name; a missing label is all-negative (no row "
     "has that class)", "test_a_split_lacking_a_rare_label_predicts_and_evaluates"),
    ("a cache with a label the head does not know", "refused in one line naming the label and `--label-names` "
     "with the training set's names", "test_a_split_lacking_a_rare_label_predicts_and_evaluates"),
    ("a text of megabytes (27 MB took 45 s and 4.2 GB to tokenise)", "cut to `max(2000, 64 * max_length)` "
     "characters (at a word boundary) before tokenising, recorded as `max_chars` in the cache's text provenance: "
     "a 5 MB text extracts in well under a second, to the features of the text cut there",
     "test_a_long_text_is_cut_before_tokenising_to_the_same_features"),
    ("a text whose cut would change its tokens (its first characters mostly blanks; no whitespace; CJK)",
     "the same tokens as the whole text: a cut that no longer fills `max_length` tokens is cut 16x further on",
     "test_tokenize_gives_the_tokens_of_the_whole_text"),
]


def write_csv(root: Path, labels: list[str], text: str = "a dog") -> Path:
    """A labelled CSV of 2-pixel images, one row per labels cell."""
    (root / "images").mkdir(parents=True)
    lines = ["ImageID,Labels,Caption"]
    for i, cell in enumerate(labels):
        Image.new("RGB", (2, 2), (i, 0, 0)).save(root / "images" / f"{i}.jpg")
        lines.append(f'{i}.jpg,{cell},"{text}"')
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


def test_label_names_with_math_train_plot_and_inspect(tmp_path):
    text, image, y, _ = synthetic_features("text", n=90)
    single = write_feature_cache(tmp_path / "s.h5", text, image, y, MATH)
    _, m = train_head(single, HeadConfig(**FAST), out=tmp_path / "single")
    assert (tmp_path / "single" / "confusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "single" / "metrics.json").read_text())["validation"]["label_names"] == list(MATH)
    text, image, Y, names = multilabel_features(200)
    multi = write_feature_cache(tmp_path / "m.h5", text, image, Y, (*MATH, *names[3:]), multilabel=True)
    train_head(multi, HeadConfig(**FAST), out=tmp_path / "multi")
    for plot in ("label_f1.png", "thresholds.png", "metrics.json"):
        assert (tmp_path / "multi" / plot).stat().st_size > 500
    csv = write_csv(tmp_path / "data", [MATH[0], f"{MATH[1]} {MATH[2]}", MATH[0]])
    inspect_data(csv, tmp_path / "eda", csv_format=CsvFormat(csv.parent / "images"), progress=False, log=lambda s: None)
    assert (tmp_path / "eda" / "labels.png").stat().st_size > 1000


def test_a_split_lacking_a_rare_label_predicts_and_evaluates(tmp_path):
    text, image, Y, names = multilabel_features(600)
    train = write_feature_cache(tmp_path / "train.h5", text, image, Y, names, multilabel=True)
    run = tmp_path / "run"
    train_head(train, HeadConfig(**FAST), out=run)
    text, image, Y, names = multilabel_features(200, seed=1)
    keep = [k for k, n in enumerate(names) if n != "t2"][::-1]  # no t2 (rare), and the others in reverse order
    hold = write_feature_cache(tmp_path / "hold.h5", text, image, Y[:, keep], [names[k] for k in keep], multilabel=True)
    Y[:, names.index("t2")] = 0
    full = write_feature_cache(tmp_path / "full.h5", text, image, Y, names, multilabel=True)

    result = runner.invoke(app, ["evaluate", str(run), str(hold)])
    assert result.exit_code == 0, result.output
    m = json.loads((run / "eval-hold.json").read_text())
    assert m["per_class"]["t2"]["support"] == 0 and m["label_names"] == list(names)
    assert {k: v for k, v in m.items() if k != "source"} == \
        {k: v for k, v in evaluate_run(run, full, save=False).items() if k != "source"}
    result = runner.invoke(app, ["predict", str(run), str(hold), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    runner.invoke(app, ["predict", str(run), str(full), "--out", str(tmp_path / "full.csv")])
    assert (tmp_path / "p.csv").read_text() == (tmp_path / "full.csv").read_text()

    # single-label: a split with two of the three classes, named in another order, is remapped by name
    text, image, y, names = synthetic_features("text", n=300)
    train_head(write_feature_cache(tmp_path / "t1.h5", text, image, y, names), HeadConfig(**FAST), out=tmp_path / "r1")
    rows = y != 1
    sub = write_feature_cache(tmp_path / "sub.h5", text[rows], image[rows], np.where(y[rows] == 2, 0, 1),
                              (names[2], names[0]))
    same = write_feature_cache(tmp_path / "same.h5", text[rows], image[rows], y[rows], names)
    a, b = evaluate_run(tmp_path / "r1", sub, save=False), evaluate_run(tmp_path / "r1", same, save=False)
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["macro_f1"] == b["macro_f1"] > 0.3

    unknown = write_feature_cache(tmp_path / "unknown.h5", text, image, y, (names[0], names[1], "zz"))
    result = runner.invoke(app, ["predict", str(tmp_path / "r1"), str(unknown), "--out", str(tmp_path / "u.csv")])
    line = result.output.strip()
    assert result.exit_code == 1 and len(line.splitlines()) == 1, result.output
    assert "labels: zz unknown to the head" in line and f"--label-names {','.join(names)}" in line


def test_tokenize_gives_the_tokens_of_the_whole_text():
    """Against a real WordPiece vocabulary (the tiny BERT fixture's tokenizer may map every word to [UNK])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS, *"abcdefghijklmnopqrstuvwxyz", *(f"##{c}" for c in "aelops")]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]")
    rng = np.random.default_rng(0)
    words = " ".join(rng.choice(WORDS + ["photos", "Happy"], size=20_000))
    texts = ["good day", words, " \n" * 3000 + words, "\u200b " * 5000 + words,  # blanks, then words: cut further on
             "x" * 50_000, "\u732b" * 20_000 + words, words[:2049], ""]
    got = tokenize(tokenizer, texts, 32)
    want = tokenizer(texts, truncation=True, max_length=32)
    assert got["input_ids"] == want["input_ids"] and got["attention_mask"] == want["attention_mask"]
    assert len(set(map(tuple, want["input_ids"][1:4]))) == 1 and len(want["input_ids"][1]) == 32
    assert 1 not in want["input_ids"][1]  # real tokens, no [UNK]
    assert [cut(t, 5) for t in ("ab cdef", "ab cd ef", "abc  d", "  xyzw", "abcdefg", "ab")] == \
        ["ab ", "ab cd", "abc  ", "  ", "abcde", "ab"]
    assert max_chars(32) == 2048 and max_chars(512) == 32768


def test_a_long_text_is_cut_before_tokenising_to_the_same_features(tmp_path, tiny_bert):
    long = " ".join(np.random.default_rng(0).choice(WORDS, size=1_100_000))  # 5 MB
    limit = max_chars(32)
    caches, seconds = [], []
    for name, text in (("long", long), ("cut", cut(long, limit))):
        root = write_course(tmp_path / name, n=4, corrupt=False, n_test=0)
        (root / "data" / "100.txt").write_text(text)
        report = extract(root, "train", tmp_path / f"{name}.h5", progress=False, log=lambda s: None,
                         text=TextExtractorConfig(model=str(tiny_bert), max_length=32, batch_size=4),
                         image=ImageExtractorConfig(model="resnet18", weights="none", num_workers=0, optimize=False))
        caches.append(FeatureCache(report.path))
        seconds.append(report.seconds["text"])
    assert seconds[0] < 2.0, seconds  # tokenising the whole text took 10 s here
    for key in ("text/cls", "text/mean"):
        np.testing.assert_allclose(caches[0].features(key), caches[1].features(key), rtol=0, atol=1e-6)
    assert caches[0].provenance["text"]["max_chars"] == limit == 2048

    t0 = time.perf_counter()
    inspect_data(tmp_path / "long", tmp_path / "eda", splits=("train",), tokenizer=load_tokenizer(str(tiny_bert)),
                 max_length=32, progress=False, log=lambda s: None)
    assert time.perf_counter() - t0 < 10
    assert f"1 text(s) over {limit} characters counted on their first {limit}" in (tmp_path / "eda" / "summary.md").read_text()
