"""``mmfuse export``: a cache as .npy parts + Parquet metadata, or as Parquet, read back with numpy and pyarrow."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mmfuse.cache import CacheWriter
from mmfuse.cli import app

runner = CliRunner()
NAMES = ("positive", "neutral", "negative")


def make_cache(path: Path, n: int = 23, skip: dict[int, str] | None = None, multilabel: bool = False,
               dtype: str = "float32", finish: bool = True, shard: dict | None = None) -> Path:
    """A cache of ``n`` rows written through the cache's writer. Rows in ``skip`` get their text vectors
    written and are then skipped (as a row whose image fails to decode after its text was computed)."""
    skip = {3: "image: truncated JPEG", 17: "text: undecodable bytes"} if skip is None else skip
    rng = np.random.default_rng(0)
    if multilabel:
        labels = rng.integers(0, 2, (n, 3)).astype(np.int8)
        labels[5] = -1  # an unlabelled row
    else:
        labels = np.arange(n) % 3
        labels[6] = -1
    prov = {"text": {"model": "tiny-text", "max_length": 32}, "image": {"model": "tiny-image", "weights": "none"},
            "data": {"root": str(path.parent), "split": "train", "fingerprint": "f" * 64}, "store_dtype": dtype}
    w = CacheWriter.open(path, guids=[f"g{i}" for i in range(n)], labels=labels, label_names=NAMES,
                         multilabel=multilabel, skipped={}, dims={"text/cls": 8, "image/pooled": 5},
                         store_dtype=dtype, provenance=prov, identity="export-test", shard=shard)
    rows = np.arange(n)
    w.write("text", rows, {"text/cls": rng.normal(size=(n, 8))})
    for row, reason in skip.items():
        w.skip(row, reason)
    kept = np.array([r for r in rows if r not in skip])
    w.write("image", kept, {"image/pooled": rng.normal(size=(len(kept), 5))} if finish else {})
    if finish:
        assert w.finish()
    w.close()
    return path


def cache_arrays(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {"text/cls": f["text/cls"][:], "image/pooled": f["image/pooled"][:], "label": f["label"][:],
                "skipped": f["skipped"][:], "reason": f["skip_reason"].asstr()[:]}


def export(*args: str):
    result = runner.invoke(app, ["export", *map(str, args)])
    return result, result.output


def test_npy_export_reads_back_bitwise_in_parts(tmp_path):
    cache = make_cache(tmp_path / "train.h5", dtype="float16")
    result, out = export(cache, tmp_path / "emb", "--to", "npy", "--rows-per-part", 10)
    assert result.exit_code == 0, out
    assert "23 rows (2 skipped) in 3 parts" in out
    emb = tmp_path / "emb"
    assert sorted(p.name for p in (emb / "text_cls").iterdir()) == ["0000.npy", "0001.npy", "0002.npy"]
    assert [len(np.load(p)) for p in sorted((emb / "text_cls").glob("*.npy"))] == [10, 10, 3]

    c = cache_arrays(cache)
    text = np.concatenate([np.load(p, allow_pickle=False) for p in sorted((emb / "text_cls").glob("*.npy"))])
    image = np.concatenate([np.load(p, allow_pickle=False) for p in sorted((emb / "image_pooled").glob("*.npy"))])
    meta = pa.concat_tables([pq.read_table(p) for p in sorted((emb / "metadata").glob("*.parquet"))]).to_pydict()
    kept = ~c["skipped"]
    assert text.dtype == np.float16 and text.shape == (23, 8) and image.shape == (23, 5)
    assert text[kept].tobytes() == c["text/cls"][kept].tobytes()  # bit for bit, in the cache's dtype
    assert image[kept].tobytes() == c["image/pooled"][kept].tobytes()
    assert not text[~kept].any() and not image[~kept].any()  # skipped rows: zeros, not their stale text vectors
    assert c["text/cls"][3].any()  # (the cache does hold a text vector for row 3, skipped after its text)
    assert meta["row"] == list(range(23)) and meta["guid"] == [f"g{i}" for i in range(23)]
    assert meta["label_index"] == c["label"].tolist()
    assert meta["label"] == [NAMES[y] if y >= 0 else None for y in c["label"]] and meta["label"][6] is None
    assert meta["skipped"] == c["skipped"].tolist() and sum(meta["skipped"]) == 2
    assert meta["reason"][3] == "image: truncated JPEG" and meta["reason"][17] == "text: undecodable bytes"
    assert meta["reason"][0] is None

    m = json.loads((emb / "_manifest.json").read_text())
    assert m["format"] == "mmfuse-export" and m["to"] == "npy" and m["cache"] == str(cache.resolve())
    assert m["cache_identity"] == "export-test" and m["provenance"]["text"]["model"] == "tiny-text"
    assert m["features"]["text/cls"] == {"dim": 8, "dtype": "float16", "cache_dtype": "float16", "folder": "text_cls"}
    assert [p["rows"] for p in m["parts"]] == [10, 10, 3] and m["rows"] == 23 and m["skipped_rows"] == 2
    assert m["label_names"] == list(NAMES)
    assert not list(tmp_path.glob(".emb*")) and not (tmp_path / "emb.lock").exists()  # no temp folder, no lock


def test_parquet_export_of_a_multilabel_cache(tmp_path):
    cache = make_cache(tmp_path / "ml.h5", multilabel=True)
    result, out = export(cache, tmp_path / "pq", "--to", "parquet", "--rows-per-part", 8)
    assert result.exit_code == 0, out
    files = sorted((tmp_path / "pq").glob("*.parquet"))
    assert [f.name for f in files] == ["0000.parquet", "0001.parquet", "0002.parquet"]
    table = pq.read_table(tmp_path / "pq")  # the folder reads as one table, parts in order
    assert table.schema.field("text_cls").type == pa.list_(pa.float32(), 8)
    c = cache_arrays(cache)
    text = table.column("text_cls").combine_chunks().flatten().to_numpy().reshape(-1, 8)
    kept = ~c["skipped"]
    assert text[kept].tobytes() == c["text/cls"][kept].tobytes() and not text[~kept].any()
    image = np.stack(table.column("image_pooled").to_numpy(zero_copy_only=False))
    assert np.array_equal(image[kept], c["image/pooled"][kept])
    meta = table.select(["guid", "label", "label_index"]).to_pydict()
    assert meta["guid"] == [f"g{i}" for i in range(23)]
    for y, names, index in zip(c["label"], meta["label"], meta["label_index"]):
        if (y < 0).any():
            assert names is None and index is None
        else:
            assert index == np.flatnonzero(y).tolist() and names == [NAMES[j] for j in index]
    assert meta["label"][5] is None and any(len(n) > 1 for n in meta["label"] if n)


def test_drop_skipped_and_chosen_features(tmp_path):
    cache = make_cache(tmp_path / "train.h5")
    result, out = export(cache, tmp_path / "emb", "--to", "npy", "--drop-skipped", "--feature", "text/cls",
                         "--rows-per-part", 10)
    assert result.exit_code == 0, out
    emb = tmp_path / "emb"
    assert sorted(p.name for p in emb.iterdir()) == ["_manifest.json", "metadata", "text_cls"]
    meta = pq.read_table(emb / "metadata").to_pydict()
    keep = [i for i in range(23) if i not in (3, 17)]
    assert meta["row"] == keep and not any(meta["skipped"])  # row: the row in the cache, to trace back
    text = np.concatenate([np.load(p) for p in sorted((emb / "text_cls").glob("*.npy"))])
    assert np.array_equal(text, cache_arrays(cache)["text/cls"][keep])
    assert [len(np.load(p)) for p in sorted((emb / "text_cls").glob("*.npy"))] == [10, 10, 1]

    result, out = export(cache, tmp_path / "other", "--to", "npy", "--feature", "text/pooled")
    assert result.exit_code == 1 and "has no features 'text/pooled'; it has image/pooled, text/cls" in out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "other").exists()


def test_the_cache_is_read_in_blocks_whatever_the_part_size(tmp_path, monkeypatch):
    import mmfuse.export as export_module

    cache = make_cache(tmp_path / "train.h5", n=40, skip={i: "bad" for i in (0, 1, 2, 9, 10, 11, 12, 13, 39)})
    spans = []
    read = export_module._Reader._read

    def recording(self, name, lo, hi, sel):
        spans.append(hi - lo)
        return read(self, name, lo, hi, sel)

    monkeypatch.setattr(export_module, "BLOCK_ROWS", 4)
    monkeypatch.setattr(export_module._Reader, "_read", recording)
    result, out = export(cache, tmp_path / "emb", "--to", "parquet", "--drop-skipped")  # one part of 31 rows
    assert result.exit_code == 0, out
    assert spans and max(spans) <= 4
    table = pq.read_table(tmp_path / "emb")
    keep = [i for i in range(40) if i not in (0, 1, 2, 9, 10, 11, 12, 13, 39)]
    assert table.column("row").to_pylist() == keep
    image = table.column("image_pooled").combine_chunks().flatten().to_numpy().reshape(-1, 5)
    assert image.tobytes() == cache_arrays(cache)["image/pooled"][keep].tobytes()


def test_an_existing_folder_is_replaced_only_if_it_is_an_export(tmp_path):
    cache = make_cache(tmp_path / "train.h5")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ((), ("--overwrite",)):
        result, out = export(cache, mine, "--to", "npy", *extra)
        assert result.exit_code == 1 and "never replaced" in out and len(out.strip().splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    assert export(cache, tmp_path / "emb", "--to", "npy")[0].exit_code == 0
    result, out = export(cache, tmp_path / "emb", "--to", "parquet")
    assert result.exit_code == 1 and "already holds an export: pass --overwrite" in out
    assert (tmp_path / "emb" / "text_cls").is_dir()
    result, out = export(cache, tmp_path / "emb", "--to", "parquet", "--overwrite")
    assert result.exit_code == 0, out
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["0000.parquet", "_manifest.json"]


def test_an_incomplete_cache_is_refused(tmp_path):
    cache = make_cache(tmp_path / "train.h5", finish=False)
    assert not cache.exists() and (tmp_path / "train.h5.partial").exists()
    result, out = export(cache, tmp_path / "emb", "--to", "npy")
    assert result.exit_code == 1 and "is incomplete" in out and len(out.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5.partial"]


def test_a_failure_midway_leaves_no_folder_and_keeps_the_old_export(tmp_path, monkeypatch):
    import errno
    import mmfuse.export as export_module

    cache = make_cache(tmp_path / "train.h5")
    write_part, calls = export_module._write_part, []

    def full_disk(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_part(*args, **kw)

    monkeypatch.setattr(export_module, "_write_part", full_disk)
    result, out = export(cache, tmp_path / "emb", "--to", "npy", "--rows-per-part", 10)
    errors = [line for line in out.splitlines() if line.startswith("error")]
    assert result.exit_code == 1 and len(errors) == 1 and "No space left on device" in errors[0]
    assert out.splitlines()[0] == "part 1/3: 10 rows"  # the first part was written, then the disk filled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]  # no DIR, no temp folder, no lock

    monkeypatch.setattr(export_module, "_write_part", write_part)
    assert export(cache, tmp_path / "emb", "--to", "npy")[0].exit_code == 0
    before = (tmp_path / "emb" / "_manifest.json").read_text()
    calls.clear()
    monkeypatch.setattr(export_module, "_write_part", full_disk)
    result, out = export(cache, tmp_path / "emb", "--to", "npy", "--rows-per-part", 10, "--overwrite")
    assert result.exit_code == 1
    assert (tmp_path / "emb" / "_manifest.json").read_text() == before  # the old export, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb", "train.h5"]


def test_without_pyarrow_one_line_says_what_to_install(tmp_path, monkeypatch):
    import sys

    cache = make_cache(tmp_path / "train.h5")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    result, out = export(cache, tmp_path / "emb", "--to", "parquet")
    assert result.exit_code == 1 and "pip install 'mmfuse[formats]'" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "emb").exists()


def test_a_shards_rows_are_numbered_in_the_whole_data_set(tmp_path):
    whole = np.arange(1, 70, 3)  # shard 1 of 3, round-robin, of a 69-row data set: rows 1, 4, 7, ...
    shard = {"rows": whole, "rank": 1, "world": 3, "how": "round-robin", "total": 69, "identity": "whole"}
    cache = make_cache(tmp_path / "sh.shard-1-of-3.h5", shard=shard)
    result, out = export(cache, tmp_path / "emb", "--to", "parquet")
    assert result.exit_code == 0, out
    table = pq.read_table(tmp_path / "emb" / "0000.parquet")
    assert table["row"].to_pylist() == whole.tolist()
    assert table["guid"].to_pylist() == [f"g{i}" for i in range(23)]
