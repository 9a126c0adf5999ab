"""Multi-label data sets end to end: a messy CSV read row for row, BCE heads with tuned thresholds,
union late fusion, and the grid / ensemble / predict / score commands on multi-label caches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import multilabel_features, write_feature_cache
from mmfuse.cli import app
from mmfuse.data import CsvFormat, parse_label_names, read_csv
from mmfuse.errors import DataError
from mmfuse.heads import FeatureSet, Head, HeadConfig, create_head, list_heads
from mmfuse.metrics import multilabel_metrics
from mmfuse.multilabel import decide, iterative_stratification, tune_thresholds

runner = CliRunner()
FAST = dict(epochs=40, patience=10, hidden=64, dropout=0.1, lr=3e-3, batch_size=32)


# --- the CSV reader: every quirk, with the exact rows expected ------------------------------------------
def images(root: Path, n: int) -> Path:
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(folder / f"{i}.jpg")
    return folder


def read(tmp_path, body: bytes | str, n_images: int = 6, **fmt):
    path = tmp_path / "data.csv"
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    ds = read_csv(path, CsvFormat(images(tmp_path, n_images), **fmt))
    return ds, [(r.guid, r.labels, r.text) for r in ds.records]


def test_unescaped_quotes_commas_and_line_breaks_inside_a_caption_keep_every_row(tmp_path):
    _, rows = read(tmp_path, 'ImageID,Labels,Caption\n'
                             '0.jpg,1,"A cow with writing that reads "oh no, not beef!""\n'
                             '1.jpg,1 19,"Two lines,\nin one caption"\n'
                             '2.jpg,3,"He said ""hi"" twice"\n'
                             '3.jpg,3,A plain caption, with a comma\n')
    assert rows == [("0.jpg", ("1",), 'A cow with writing that reads "oh no, not beef!"'),
                    ("1.jpg", ("1", "19"), "Two lines,\nin one caption"),
                    ("2.jpg", ("3",), 'He said "hi" twice'),
                    ("3.jpg", ("3",), "A plain caption, with a comma")]


def test_crlf_bom_blank_lines_and_an_empty_trailing_column(tmp_path):
    body = ("\ufeffImageID,Labels,Caption,\r\n0.jpg,2,first,\r\n\r\n1.jpg,4 2,\"second, quoted\",\r\n"
            "2.jpg,,no labels,\r\n").encode()
    ds, rows = read(tmp_path, body)
    assert rows == [("0.jpg", ("2",), "first"), ("1.jpg", ("4", "2"), "second, quoted"), ("2.jpg", (), "no labels")]
    assert ds.label_names == ("2", "4")  # numeric order
    np.testing.assert_array_equal(ds.label_array(), [[1, 0], [1, 1], [0, 0]])  # an empty cell: all negative
    assert [r.source for r in ds.records] == ["data.csv:2", "data.csv:4", "data.csv:5"]


def test_an_unclosed_quote_is_an_error_on_its_line_and_never_shifts_the_rows_after_it(tmp_path):
    ds, rows = read(tmp_path, 'ImageID,Labels,Caption\n0.jpg,1,"never closed\n1.jpg,2,second\n2.jpg,1,third\n')
    assert rows[1:] == [("1.jpg", ("2",), "second"), ("2.jpg", ("1",), "third")]
    bad = ds.records[0]
    assert bad.guid == "0.jpg" and "cannot parse line 2" in bad.error and bad.source == "data.csv:2"
    with pytest.raises(DataError, match=r"guid 0\.jpg \(data\.csv:2\).*--on-error skip"):
        ds.check("raise")
    assert [r.guid for r in ds.check("skip")] == ["0.jpg"]  # skipped and recorded, the others intact


def test_an_unclosed_quote_never_takes_a_multiline_record_or_a_row_with_a_missing_image(tmp_path):
    ds, rows = read(tmp_path, 'ImageID,Labels,Caption\n0.jpg,1,"never closed\n1.jpg,2,"two\nlines"\n'
                              '9.jpg,2,"image missing"\n2.jpg,1,"Sign reads "STOP"\nand a car below"\n3.jpg,1,last\n')
    assert rows[1:] == [("1.jpg", ("2",), "two\nlines"), ("9.jpg", ("2",), "image missing"),
                        ("2.jpg", ("1",), 'Sign reads "STOP"\nand a car below'), ("3.jpg", ("1",), "last")]
    assert [r.source for r in ds.errors] == ["data.csv:2", "data.csv:5"]  # unclosed; 9.jpg: image missing
    assert "image file missing" in ds.errors[1].error


def test_classic_mac_line_ends_and_a_lone_cr_inside_a_caption(tmp_path):
    _, rows = read(tmp_path, "ImageID,Labels,Caption\r0.jpg,1,a\r1.jpg,2,b\r")
    assert rows == [("0.jpg", ("1",), "a"), ("1.jpg", ("2",), "b")]
    _, rows = read(tmp_path, "ImageID,Labels,Caption\n0.jpg,1,a\rb\n1.jpg,2,c\n")
    assert rows == [("0.jpg", ("1",), "a\rb"), ("1.jpg", ("2",), "c")]


def test_mixed_encodings_are_decoded_per_line(tmp_path):
    body = "ImageID,Labels,Caption\n0.jpg,1,caf\u00e9\n".encode() + "1.jpg,2,\u4e2d\u6587\n".encode("gb18030")
    ds, rows = read(tmp_path, body)
    assert rows == [("0.jpg", ("1",), "caf\u00e9"), ("1.jpg", ("2",), "\u4e2d\u6587")]
    assert ds.encodings == {"utf-8": 1, "gb18030": 1}


def test_bad_rows_name_the_row_and_the_image(tmp_path):
    ds, _ = read(tmp_path, "ImageID,Labels,Caption\n0.jpg,1,a\n9.jpg,1,missing image\n1.jpg,7,unknown label\n"
                           "0.jpg,2,duplicate\n../0.jpg,1,outside\n/etc/passwd,1,absolute\n",
                 label_names=("1", "2"))
    errors = {r.source: r.error for r in ds.errors}
    assert "image file missing" in errors["data.csv:3"] and "9.jpg" in errors["data.csv:3"]
    assert "unknown label(s) ['7']" in errors["data.csv:4"]
    assert "duplicate ImageID '0.jpg' (first at line 2)" in errors["data.csv:5"]
    assert "not a file name inside" in errors["data.csv:6"] and "not a file name inside" in errors["data.csv:7"]
    assert len(ds.records) == 6  # nothing dropped


def test_label_names_fix_the_set_and_order_and_other_columns_are_named_by_option(tmp_path):
    (tmp_path / "labels.txt").write_text("3\n1\n2\n")
    names = parse_label_names(tmp_path / "labels.txt")
    assert names == ("3", "1", "2") and parse_label_names("a,b") == ("a", "b")
    ds, rows = read(tmp_path, "id;x,text,tags\n0,hello,1|3\n", label_names=names, id_col="id;x",
                    text_col="text", labels_col="tags", label_sep="|")
    assert rows == [("0", ("1", "3"), "hello")]  # an id without extension finds 0.jpg
    np.testing.assert_array_equal(ds.label_array(), [[1, 1, 0]])  # label 2 never occurs, still a column


def test_an_unlabelled_csv_has_no_labels_column(tmp_path):
    ds, rows = read(tmp_path, "ImageID,Caption\n0.jpg,a\n1.jpg,b\n", label_names=("1", "2"))
    assert not ds.labelled and rows == [("0.jpg", (), "a"), ("1.jpg", (), "b")]
    assert (ds.label_array() == -1).all()
    with pytest.raises(DataError, match="no column 'Caption'"):
        read(tmp_path, "ImageID,Text\n0.jpg,a\n")


# --- decisions and splits ------------------------------------------------------------------------------
def test_iterative_stratification_shares_every_label_and_sizes_the_parts():
    _, _, Y, _ = multilabel_features(900)
    part = iterative_stratification(Y, [1] * 5, seed=0)
    sizes = np.bincount(part)
    assert sizes.sum() == 900 and sizes.max() - sizes.min() <= 2
    for k in range(5):  # each fold holds a fifth of each label's positives, within one row
        assert np.all(np.abs(Y[part == k].sum(0) - Y.sum(0) / 5) <= 1.0 + 1e-9)
    np.testing.assert_array_equal(part, iterative_stratification(Y, [1] * 5, seed=0))  # reproducible


def test_decide_gives_an_empty_row_its_top_label_unless_min_labels_is_0():
    p = np.array([[0.2, 0.4], [0.9, 0.1]])
    np.testing.assert_array_equal(decide(p, 0.5, 1), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(decide(p, 0.5, 0), [[0, 0], [1, 0]])
    np.testing.assert_array_equal(decide(p, [0.1, 0.9], 0), [[1, 0], [1, 0]])


# --- heads ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_heads("module"))
def test_every_module_trains_with_bce_in_multilabel_mode(name):
    torch.manual_seed(0)
    module = create_head(name, 24, 40, 5, HeadConfig(fusion=name, hidden=32, heads=4), "multilabel").train()
    out = module(torch.randn(8, 24), torch.randn(8, 40))
    assert out.logits.shape == (8, 5) and torch.isfinite(out.logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, torch.randint(0, 2, (8, 5)).float())
    (loss if out.aux is None else loss + out.aux).backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname} has no gradient"


@pytest.fixture(scope="module")
def split():
    text, image, Y, names = multilabel_features(1200)
    part = iterative_stratification(Y, [3, 1, 1], seed=0)
    fs = FeatureSet(text, image, Y, [str(i) for i in range(len(Y))], names)
    return tuple(fs.subset(np.flatnonzero(part == k)) for k in range(3))


def fit_score(split, **cfg):
    train, val, test = split
    head = Head(**{**FAST, **cfg}).fit(train, val=val)
    return head, multilabel_metrics(test.y, head.predict(test), test.label_names, head.predict_proba(test))


def test_a_fused_head_beats_both_unimodal_heads_on_micro_f1(split):
    scores = {f: fit_score(split, fusion=f)[1]["micro_f1"] for f in ("text", "image", "concat", "weighted")}
    assert min(scores["concat"], scores["weighted"]) > max(scores["text"], scores["image"]) + 0.1, scores


def test_tuned_per_label_thresholds_beat_0_5_on_a_rare_label(split):
    head, tuned = fit_score(split, fusion="concat", class_weight="none", thresholds="per-label")
    _, fixed = fit_score(split, fusion="concat", class_weight="none", thresholds="fixed")
    assert head.thresholds_[2] != 0.5 and head.thresholds_[5] != 0.5
    rare = ("t2", "i2")
    assert sum(tuned["per_class"][r]["f1"] for r in rare) > sum(fixed["per_class"][r]["f1"] for r in rare), (tuned, fixed)
    assert tuned["micro_f1"] >= fixed["micro_f1"] - 0.01


def test_union_late_fusion_recovers_labels_each_modality_alone_misses(split):
    _, union = fit_score(split, fusion="late", combine="union")
    _, text = fit_score(split, fusion="text")
    _, image = fit_score(split, fusion="image")
    # a label visible in the text only: the image head can only guess it (it says it for most rows, F1 ~0.5);
    # union takes it from the text head, and the other way round
    for label in ("t0", "t1"):
        assert union["per_class"][label]["f1"] > image["per_class"][label]["f1"] + 0.2, (union, image)
    for label in ("i0", "i1"):
        assert union["per_class"][label]["f1"] > text["per_class"][label]["f1"] + 0.2, (union, text)
    assert union["micro_f1"] > max(text["micro_f1"], image["micro_f1"]) + 0.1


def test_logreg_is_one_vs_rest_and_saves_arrays(split, tmp_path):
    head, m = fit_score(split, fusion="logreg", C=1.0)
    assert m["micro_f1"] > 0.7
    head.save(tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.pkl"))
    loaded = Head.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(split[2]), head.predict_proba(split[2]), rtol=1e-5)
    np.testing.assert_array_equal(loaded.predict(split[2]), head.predict(split[2]))


def test_tune_thresholds_modes():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 2)) < [0.5, 0.05]).astype(int)
    proba = np.clip(y * 0.3 + rng.random((400, 2)) * 0.5, 0, 1)
    assert (tune_thresholds(y, proba, "fixed") == 0.5).all()
    g = tune_thresholds(y, proba, "global")
    assert g[0] == g[1]
    per = tune_thresholds(y, proba, "per-label")
    assert per[0] != per[1]  # each label with enough positives gets its own


# --- the commands on a multi-label CSV -------------------------------------------------------------------
def write_csv_data(root: Path, n: int = 40, unlabelled: bool = False) -> Path:
    """Captions naming colours; labels: red/blue from the image, 'dog'/'cat' from the caption."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    lines = ["ImageID,Caption" if unlabelled else "ImageID,Labels,Caption"]
    for i in range(n):
        red, dog = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        Image.new("RGB", (32, 32), (220, 20, 20) if red else (20, 20, 220)).save(folder / f"{i}.jpg")
        labels = " ".join(x for x, on in (("red", red), ("blue", not red), ("dog", dog), ("cat", not dog)) if on)
        caption = f'"a {"dog" if dog else "cat"}, seen ""here"""'
        lines.append(f"{i}.jpg,{caption}" if unlabelled else f"{i}.jpg,{labels},{caption}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


def test_extract_train_predict_score_evaluate_on_a_multilabel_csv(tmp_path, extract_args):
    train_csv = write_csv_data(tmp_path / "train")
    test_csv = write_csv_data(tmp_path / "test", 8, unlabelled=True)
    names = ["--label-names", "blue,cat,dog,red"]
    for csv_path, out in ((train_csv, "train.h5"), (test_csv, "test.h5")):
        args = extract_args(csv_path, tmp_path / out, "--images", str(csv_path.parent / "images"), *names)
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["info", str(tmp_path / "train.h5")])
    assert "labels (rows carrying each): blue" in info.output and "labels per row: mean 2.00 (0: 0, 1: 0, 2: 40)" in info.output
    info = runner.invoke(app, ["info", str(tmp_path / "test.h5")])
    assert "labels: none (unlabelled rows); label names blue, cat, dog, red" in info.output, info.output
    result = runner.invoke(app, ["finetune", str(train_csv), "--out", str(tmp_path / "ft")])
    assert result.exit_code == 1 and "is a file: fine-tuning reads single-label course-format folders" in result.output
    result = runner.invoke(app, ["train-head", str(tmp_path / "train.h5"), "--fusion", "concat", "--out",
                                 str(tmp_path / "run"), "--epochs", "5", "--val-split", "0.25"])
    assert result.exit_code == 0, result.output
    assert "micro-F1" in result.output and "thresholds: blue" in result.output and " on disk)" in result.output
    for plot in ("label_f1.png", "thresholds.png", "curves.png"):
        assert (tmp_path / "run" / plot).stat().st_size > 1000
    result = runner.invoke(app, ["train-head", str(tmp_path / "train.h5"), "--fusion", "late", "--combine", "union",
                                 "--out", str(tmp_path / "union"), "--epochs", "5", "--val-split", "0.25"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "run"), str(tmp_path / "union")])
    assert result.exit_code == 0 and "| run | fusion | micro-F1 | macro-F1 | samples-F1 | mAP |" in result.output
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "test.h5"), "--out",
                                 str(tmp_path / "predictions.csv")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "ImageID,Labels" and [ln.split(",")[0] for ln in lines[1:]] == [f"{i}.jpg" for i in range(8)]
    assert all(set(ln.split(",")[1].split()) <= {"blue", "cat", "dog", "red"} and ln.split(",")[1] for ln in lines[1:])
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "train.h5")])
    assert result.exit_code == 0 and "samples-F1" in result.output, result.output
    # score: the model's own predictions of the training rows against the training labels
    runner.invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "train.h5"), "--out", str(tmp_path / "p.csv")])
    result = runner.invoke(app, ["score", str(tmp_path / "p.csv"), str(train_csv)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "run" / "eval-train.json").read_text())
    assert f"micro-F1 {evaluated['micro_f1']:.3f}" in result.output  # the file scores as evaluate did


def test_score_names_an_unknown_label_and_a_missing_prediction(tmp_path):
    (tmp_path / "truth.csv").write_text("ImageID,Labels\n0.jpg,1 2\n1.jpg,3\n")
    (tmp_path / "pred.csv").write_text("ImageID,Labels\n0.jpg,1\n")
    result = runner.invoke(app, ["score", str(tmp_path / "pred.csv"), str(tmp_path / "truth.csv")])
    assert result.exit_code == 1 and "no prediction for 1 id(s)" in result.output and "1.jpg" in result.output
    (tmp_path / "pred.csv").write_text("ImageID,Labels\n0.jpg,1 9\n1.jpg,3\n")
    result = runner.invoke(app, ["score", str(tmp_path / "pred.csv"), str(tmp_path / "truth.csv"),
                                 "--label-names", "1,2,3"])
    assert result.exit_code == 1 and "unknown label(s) ['9'] for 0.jpg" in result.output


def test_grid_and_ensemble_run_on_a_multilabel_cache(tmp_path):
    text, image, Y, names = multilabel_features(300)
    cache = write_feature_cache(tmp_path / "ml.h5", text, image, Y, label_names=names, multilabel=True)
    result = runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "g"), "--fusion", "concat,late,logreg",
                                 "--combine", "mean,union", "--lr", "3e-3", "--weight-decay", "0", "--epochs", "5",
                                 "--folds", "3", "--jobs", "1", "--precision", "fp32", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "CV micro-F1" in result.output
    summary = (tmp_path / "g" / "summary.md").read_text()
    assert "micro-F1" in summary and "samples-F1" in summary and "iterative stratification" in summary
    assert (tmp_path / "g" / "best" / "bagged.json").is_file()
    result = runner.invoke(app, ["ensemble", str(tmp_path / "g"), "--top", "3", "--out", str(tmp_path / "e"),
                                 "--meta", "lr"])
    assert result.exit_code == 0, result.output
    assert "CV micro-F1" in result.output
    meta = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert len(meta["thresholds"]) == 6
    result = runner.invoke(app, ["predict", str(tmp_path / "e"), str(cache), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "ImageID,Labels"
    result = runner.invoke(app, ["evaluate", str(tmp_path / "e"), str(cache)])
    assert result.exit_code == 0 and "micro-F1" in result.output, result.output


def test_monitor_chooses_the_early_stopping_score(split):
    train, val, _ = split
    head = Head(**{**FAST, "epochs": 6}, fusion="concat", monitor="map").fit(train, val=val)
    maps = [h["val_map"] for h in head.history_]
    assert head.best_epoch_ == 1 + int(np.argmax(maps))  # the restored epoch is the best by mAP
    assert {"val_micro_f1", "val_samples_f1", "val_macro_f1"} <= set(head.history_[0])
    X = FeatureSet(train.text, train.image, train.y.argmax(1), train.guids, train.label_names)
    with pytest.raises(Exception, match="multi-label score"):
        Head(fusion="concat", epochs=1, monitor="micro_f1").fit(X, val=X)


def test_one_label_is_refused_and_a_single_label_grid_ignores_multilabel_axes(tmp_path):
    with pytest.raises(DataError, match="at least 2 labels"):
        read(tmp_path, "ImageID,Labels,Caption\n0.jpg,a,x\n1.jpg,,y\n")
    from mmfuse.grid import for_task, row_config
    configs = [HeadConfig(thresholds=t, combine=c) for t in ("global", "per-label") for c in ("mean", "union")]
    assert len(for_task(configs, multilabel=False)) == 1 and len(for_task(configs, multilabel=True)) == 4
    old_row = {k: v for k, v in vars(HeadConfig(fusion="late")).items() if k not in ("monitor", "combine")}
    assert row_config(old_row) == HeadConfig(fusion="late")  # a grid written before these fields existed
