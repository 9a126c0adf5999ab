"""Bounded memory: a cache's features read in blocks straight into one array, heads that take their
training part, validation part and folds as rows of the features (not copies) and standardise a batch or a
block at a time, and a grid whose worker processes memory-map one shared copy. Each gives the numbers of the
whole-array way, bit for bit."""
from __future__ import annotations

import csv
import h5py
import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

import mmfuse.cache_read as cache_read
import mmfuse.grid._search as search
from conftest import synthetic_features, write_feature_cache
from mmfuse.cache import CacheWriter, FeatureCache
from mmfuse.cli import app
from mmfuse.heads import FeatureSet, Head
from mmfuse.heads import rows as rows_mod
from mmfuse.heads.rows import Rows, Standardised, fit_scaler, standardise

runner = CliRunner()


def skipped_float16_cache(path, n=50, skipped=(3, 20, 21, 49)):
    """A float16 cache of ``n`` rows, some skipped."""
    rng = np.random.default_rng(0)
    w = CacheWriter.open(path, guids=[f"g{i}" for i in range(n)], labels=rng.integers(0, 3, n), label_names=("a", "b", "c"),
                         multilabel=False, skipped={i: "unreadable image" for i in skipped}, store_dtype="float16",
                         provenance={}, identity="f16", dims={"text/cls": 8, "image/pooled": 5})
    rows = np.array([i for i in range(n) if i not in skipped])
    w.write("text", rows, {"text/cls": rng.normal(size=(len(rows), 8))})
    w.write("image", rows, {"image/pooled": rng.normal(size=(len(rows), 5))})
    assert w.finish()
    w.close()
    return path


def test_features_are_read_in_blocks_with_the_values_of_a_whole_read(tmp_path, monkeypatch):
    path = skipped_float16_cache(tmp_path / "f16.h5")
    monkeypatch.setattr(cache_read, "READ_ROWS", 7)  # many blocks, some with skipped rows, one whole
    cache = FeatureCache(path)
    assert [g for g, _ in cache.skipped] == ["g3", "g20", "g21", "g49"] and cache.skipped[0][1] == "unreadable image"
    with h5py.File(path) as f:
        keep = ~f["skipped"][:]
        for name in ("text/cls", "image/pooled"):
            x = cache.features(name)
            assert x.dtype == np.float32 and x.shape == (46, f[name].shape[1])
            np.testing.assert_array_equal(x, f[name][:][keep].astype(np.float32))


def test_a_shared_copy_is_memory_mapped_written_once_and_rewritten_when_torn(tmp_path):
    cache = FeatureCache(skipped_float16_cache(tmp_path / "f16.h5"))
    x = cache.shared("text/cls", tmp_path / "shared")
    assert isinstance(x, np.memmap) and x.dtype == np.float32
    np.testing.assert_array_equal(x, cache.features("text/cls"))
    file = cache.shared_path("text/cls", tmp_path / "shared")
    stamp = file.stat().st_mtime_ns
    cache.shared("text/cls", tmp_path / "shared")
    assert file.stat().st_mtime_ns == stamp  # reused, not written again
    file.write_bytes(file.read_bytes()[:200])  # torn (a copy by another program, a full disk)
    np.testing.assert_array_equal(cache.shared("text/cls", tmp_path / "shared"), cache.features("text/cls"))
    assert [p.name for p in (tmp_path / "shared").iterdir()] == [file.name]  # no temporary file left


@pytest.mark.parametrize("n, d", [(3000, 257), (300, 33), (9, 1), (20000, 40)])
def test_the_blocked_scaler_and_standardised_rows_are_scikit_learns_bit_for_bit(n, d, monkeypatch):
    monkeypatch.setattr(rows_mod, "SCALER_BYTES", 8 * n * 16)  # blocks of 16 columns (a last one of 1 joins)
    monkeypatch.setattr(rows_mod, "BLOCK_ROWS", 1000)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.01, 5, d) + rng.normal(size=d)).astype(np.float32)
    idx = rng.permutation(n)[: 3 * n // 4]
    ref = StandardScaler().fit(x[idx])
    expected = ref.transform(x[idx]).astype(np.float32)
    for a in (x[idx], Rows(x, idx)):
        s = fit_scaler(a)
        for name in ("mean_", "var_", "scale_"):
            np.testing.assert_array_equal(getattr(s, name), getattr(ref, name))
        np.testing.assert_array_equal(standardise(a, s), expected)
        batch = torch.tensor([min(5, len(idx) - 1), 0, 2])
        np.testing.assert_array_equal(Standardised(a, s)[batch].numpy(), expected[batch.numpy()])


@pytest.mark.parametrize("fusion", ["concat", "logreg"])
def test_a_head_fit_on_views_is_the_head_fit_on_copies(fusion):
    text, image, y, names = synthetic_features("text", n=600)
    X = FeatureSet(text, image, y, [str(i) for i in range(600)], names)
    fit, val, test = np.arange(400), np.arange(400, 500), np.arange(500, 600)
    a = Head(fusion=fusion, epochs=3).fit(X.view(fit), val=X.view(val))
    b = Head(fusion=fusion, epochs=3).fit(X.subset(fit), val=X.subset(val))
    assert isinstance(X.view(fit).text, Rows) and not isinstance(X.subset(fit).text, Rows)
    np.testing.assert_array_equal(a.predict_proba(X.view(test)), b.predict_proba(X.subset(test)))


def test_logits_a_block_at_a_time_are_the_whole_sets(monkeypatch):
    text, image, y, names = synthetic_features("text", n=600)
    X = FeatureSet(text, image, y, [str(i) for i in range(600)], names)
    head = Head(fusion="concat", epochs=2).fit(X)
    whole = head.logits(X)  # one block
    monkeypatch.setattr(rows_mod, "BLOCK_ROWS", 256)
    assert [hi - lo for lo, hi in rows_mod.blocks(600)] == [200, 200, 200]  # evened out: no small last block
    np.testing.assert_array_equal(head.logits(X), whole)


def test_grid_workers_share_one_memory_mapped_copy_removed_at_the_end(tmp_path, monkeypatch):
    text, image, y, names = synthetic_features("text", n=300)
    cache = write_feature_cache(tmp_path / "train.h5", text, image, y, names)
    seen = []
    release = search.release_shared
    monkeypatch.setattr(search, "release_shared", lambda folder: (
        seen.extend(sorted(p.name.split("-", 1)[1] for p in folder.glob("*.npy"))), release(folder)))
    args = ["--fusion", "concat", "--lr", "1e-3,3e-3", "--epochs", "2", "--folds", "2", "--precision", "fp32",
            "--no-progress"]
    two = runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "two"), "--jobs", "2", *args])
    assert two.exit_code == 0, two.output
    assert seen == ["image-pooled.npy", "text-cls.npy"]  # what the workers mapped: the vectors the grid reads
    assert not (tmp_path / "two" / "shared").exists()
    one = runner.invoke(app, ["grid", str(cache), "--out", str(tmp_path / "one"), "--jobs", "1", *args])
    assert one.exit_code == 0, one.output
    rows = [{r["config_id"]: {k: v for k, v in r.items() if "seconds" not in k}
             for r in csv.DictReader(open(tmp_path / g / "results.csv"))} for g in ("one", "two")]
    assert rows[0] == rows[1] and len(rows[0]) == 2  # the same scores in worker processes reading the mapped copy
