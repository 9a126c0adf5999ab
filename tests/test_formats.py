"""WebDataset tar shards, Parquet files and Hugging Face datasets folders: each, built here from the same
course-format pairs, extracts to the course extraction's vectors; their errors name the shard and member
(or file and row); a killed extraction over tars resumes; whole tars are dealt to the ranks of a sharded run."""
from __future__ import annotations

import io
import json
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_course
from mmfuse.cache import FeatureCache
from mmfuse.cli import app
from mmfuse.data import Columns, read_course, read_data
from mmfuse.errors import DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
runner = CliRunner()
TAGS = ("positive", "neutral", "negative")
NAMES = ",".join(TAGS)


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tars(records, folder: Path, shards: int = 2) -> list[Path]:
    """WebDataset shards as img2dataset writes them: KEY.jpg, KEY.txt, KEY.json and KEY.cls (the class index)."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(records) // shards)
    paths = []
    for s in range(shards):
        paths.append(folder / f"{s:05d}.tar")
        with tarfile.open(paths[-1], "w") as tar:
            for r in records[s * per:(s + 1) * per]:
                add(tar, f"{r.guid}.jpg", r.image_path.read_bytes())
                add(tar, f"{r.guid}.txt", r.text.encode())
                add(tar, f"{r.guid}.json", json.dumps({"key": r.guid, "width": 0}).encode())
                if r.labels:
                    add(tar, f"{r.guid}.cls", str(TAGS.index(r.labels[0])).encode())
    return paths


def write_parquet(records, path: Path, labels=None, row_group_size: int = 5) -> Path:
    """One Parquet file: id, text, image bytes and (``labels``: a list per row, or the tag names) a label column."""
    columns = {"id": [r.guid for r in records], "text": [r.text for r in records],
               "image": [r.image_path.read_bytes() for r in records]}
    if labels is not None:
        columns["label"] = labels
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_saved(records, folder: Path) -> Path:
    """A datasets save_to_disk folder: an Image() column and a ClassLabel column."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                  "image": datasets.Image(), "label": datasets.ClassLabel(names=list(TAGS))})
    ds = datasets.Dataset.from_dict({"id": [r.guid for r in records], "text": [r.text for r in records],
                                     "image": [{"bytes": r.image_path.read_bytes(), "path": None} for r in records],
                                     "label": [TAGS.index(r.labels[0]) for r in records]}, features=features)
    ds.save_to_disk(str(folder))
    return folder


def write_imagefolder(records, folder: Path) -> Path:
    """An imagefolder: images under images/ and metadata.jsonl (file_name, id, text, label)."""
    (folder / "images").mkdir(parents=True)
    with open(folder / "metadata.jsonl", "w") as f:
        for r in records:
            (folder / "images" / f"{r.guid}.jpg").write_bytes(r.image_path.read_bytes())
            f.write(json.dumps({"file_name": f"images/{r.guid}.jpg", "id": r.guid, "text": r.text,
                                "label": r.labels[0]}) + "\n")
    return folder


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = write_course(tmp_path_factory.mktemp("formats") / "course", corrupt=False)
    return root, read_course(root, "train").records


@pytest.fixture(scope="module")
def args(tiny_bert):
    def make(data, out, *extra):
        return ["extract", str(data), "--out", str(out), "--text-model", str(tiny_bert), "--image-model", "resnet18",
                "--image-weights", "none", "--batch-size", "4", "--num-workers", "0", "--max-length", "32",
                "--precision", "fp32", "--no-progress", *extra]
    return make


@pytest.fixture(scope="module")
def course_cache(course, args, tmp_path_factory):
    out = tmp_path_factory.mktemp("course-cache") / "train.h5"
    result = runner.invoke(app, args(course[0], out))
    assert result.exit_code == 0, result.output
    return FeatureCache(out)


def assert_same(cache: FeatureCache, ref: FeatureCache) -> None:
    assert cache.guids == ref.guids and cache.label_names == ref.label_names
    assert np.array_equal(cache.labels, ref.labels) and not cache.skipped
    for name in ref.feature_names:
        np.testing.assert_allclose(cache.features(name), ref.features(name), atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind", ["tars", "parquet", "saved", "imagefolder"])
def test_each_format_extracts_the_vectors_of_the_course_folder(kind, course, course_cache, args, tmp_path):
    root, records = course
    data, extra = {
        "tars": lambda: (f"{tmp_path}/shards/{{00000..00001}}.tar", ["--label-names", NAMES]),
        "parquet": lambda: (write_parquet(records, tmp_path / "train.parquet", [r.labels[0] for r in records]),
                            ["--label-names", NAMES]),
        "saved": lambda: (write_saved(records, tmp_path / "saved"), []),  # ClassLabel names
        "imagefolder": lambda: (write_imagefolder(records, tmp_path / "imgs"), ["--label-names", NAMES]),
    }[kind]()
    if kind == "tars":
        write_tars(records, tmp_path / "shards")
    out = tmp_path / "train.h5"
    result = runner.invoke(app, args(data, out, *extra))
    assert result.exit_code == 0, result.output
    cache = FeatureCache(out)
    assert_same(cache, course_cache)
    assert cache.provenance["data"]["fingerprint_method"].startswith("sha256: input files'")
    info = runner.invoke(app, ["info", str(out)])  # the data set is read again: unchanged
    assert info.exit_code == 0 and "changed since" not in info.output and "cannot be read" not in info.output
    again = runner.invoke(app, args(data, out, *extra))  # a second run finds the same identity: nothing to do
    assert again.exit_code == 0 and "text 0 in" in again.output and "image 0 in" in again.output


def test_a_corrupt_image_in_a_tar_is_named_by_shard_and_member(course, args, tmp_path):
    _, records = course
    shards = write_tars(records, tmp_path / "shards")
    raw = shards[1].read_bytes()
    member = records[7].image_path.read_bytes()  # guid 107 sits in the second shard
    at = raw.index(member)
    shards[1].write_bytes(raw[:at] + b"\0" * len(member) + raw[at + len(member):])  # same size: not an image
    out, data = tmp_path / "train.h5", tmp_path / "shards"
    stopped = runner.invoke(app, args(data, out))
    assert stopped.exit_code == 1 and "guid 107" in stopped.output and "00001.tar:107.jpg" in stopped.output
    skipped = runner.invoke(app, args(data, out, "--on-error", "skip"))
    assert skipped.exit_code == 0, skipped.output
    (guid, reason), = FeatureCache(out).skipped
    assert guid == "107" and "image unreadable" in reason and "00001.tar:107.jpg" in reason


def test_tar_errors_name_the_shard_and_member(course, tmp_path):
    _, records = course
    write_tars(records[:4], tmp_path / "a")
    with tarfile.open(tmp_path / "a" / "00001.tar", "a") as tar:
        add(tar, "100.jpg", records[0].image_path.read_bytes())  # key 100 again, in another shard
        add(tar, "100.txt", b"again")
        add(tar, "900.txt", b"a caption without an image")
        add(tar, "901.jpg", records[1].image_path.read_bytes())  # an image without a caption
    ds = read_data(tmp_path / "a")
    errors = {r.guid: (r.source, r.error) for r in ds.errors}
    assert "duplicate key '100' (first in a/00000.tar)" in errors["100"][1] and errors["100"][0] == "00001.tar:100.jpg"
    assert "no image" in errors["900"][1] and errors["900"][0] == "00001.tar:900.txt"
    assert "no text" in errors["901"][1] and errors["901"][0] == "00001.tar:901.jpg"
    with pytest.raises(DataError, match=r"3 bad record\(s\).*guid 100 \(00001.tar:100.jpg\)"):
        ds.check("raise")
    assert len(ds.records) == 7  # every key is a record: none dropped
    path = tmp_path / "a" / "00001.tar"
    raw = path.read_bytes()
    with tarfile.open(path) as tar:
        *_, before, last = tar.getmembers()
    # cut inside the last member's data, inside its header, and right after it (no end-of-archive blocks)
    for cut, named in ((last.offset_data + last.size // 2, before), (last.offset + 100, before),
                       (last.offset_data + 512 * -(-last.size // 512), last)):
        path.write_bytes(raw[:cut])
        with pytest.raises(DataError, match=f"a/00001.tar:{named.name}: the tar is truncated or corrupt after"):
            read_data(tmp_path / "a")
    with pytest.raises(DataError, match="1 of 3 shards not found"):
        read_data(f"{tmp_path}/a/{{00000..00002}}.tar")


def test_brace_patterns_expand_as_webdataset_does():
    from mmfuse.data.webdataset import expand_braces

    assert expand_braces("d/{00008..00011}.tar") == ["d/00008.tar", "d/00009.tar", "d/00010.tar", "d/00011.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.mark.slow
def test_a_killed_extraction_over_tars_resumes_to_the_clean_cache(tiny_bert, args, tmp_path):
    """The child of tests/faults/test_killed_extraction.py, over 4 tars: killed mid-write by SIGKILL, then
    re-run; the resumed cache equals one clean run's."""
    from faults.test_killed_extraction import rows, run_child

    records = read_course(write_course(tmp_path / "course", n=16, corrupt=False, n_test=0), "train").records
    write_tars(records, tmp_path / "shards", shards=4)
    data = f"{tmp_path}/shards/{{00000..00003}}.tar"
    clean, killed = tmp_path / "clean.h5", tmp_path / "killed.h5"
    assert runner.invoke(app, args(data, clean)).exit_code == 0
    assert run_child(data, killed, tiny_bert, "write:3") == -signal.SIGKILL
    assert not killed.exists() and FeatureCache.progress(killed)["text"] > 0  # rows kept in the .partial
    assert run_child(data, killed, tiny_bert, "none") == 0
    a, b = rows(clean), rows(killed)
    assert a["guids"] == b["guids"] == [r.guid for r in records] and np.array_equal(a["labels"], b["labels"])
    for name in ("text/cls", "text/mean", "image/pooled"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_whole_tars_are_dealt_to_two_ranks_and_merge_to_every_row_once(course, args, tmp_path):
    _, records = course
    write_tars(records, tmp_path / "shards", shards=4)  # 3 rows per tar
    data, out = tmp_path / "shards", tmp_path / "train.h5"
    one = runner.invoke(app, args(data, tmp_path / "one.h5"))
    assert one.exit_code == 0, one.output
    for rank in range(2):
        result = runner.invoke(app, args(data, out, "--shard", f"{rank}/2", "--sharding", "whole-files"))
        assert result.exit_code == 0, result.output
    parts = [FeatureCache(tmp_path / f"train.shard-{r}-of-2.h5") for r in range(2)]
    guids = [r.guid for r in records]
    assert parts[0].guids == guids[0:3] + guids[6:9] and parts[1].guids == guids[3:6] + guids[9:12]  # tars 0, 2 / 1, 3
    merged = runner.invoke(app, ["merge", *(str(tmp_path / f"train.shard-{r}-of-2.h5") for r in range(2)),
                                 "--out", str(out)])
    assert merged.exit_code == 0, merged.output
    whole, ref = FeatureCache(out), FeatureCache(tmp_path / "one.h5")
    assert whole.guids == guids and np.array_equal(whole.labels, ref.labels)
    for name in ref.feature_names:
        np.testing.assert_allclose(whole.features(name), ref.features(name), atol=1e-5, err_msg=name)
    too_many = runner.invoke(app, args(data, out, "--shard", "0/5", "--sharding", "whole-files"))
    assert too_many.exit_code == 1 and "4 input files cannot give each of 5 shards a file" in too_many.output


def test_a_list_column_gives_multi_hot_labels_and_no_label_column_unlabelled(course, args, tmp_path):
    _, records = course
    sets = [["cat", "dog"], ["dog"], [], ["bird", "cat"]] * 3
    write_parquet(records, tmp_path / "multi.parquet", sets)
    result = runner.invoke(app, args(tmp_path / "multi.parquet", tmp_path / "multi.h5"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache(tmp_path / "multi.h5")
    assert cache.multilabel and cache.label_names == ("bird", "cat", "dog")
    assert cache.labels[:4].tolist() == [[0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0]]
    write_parquet(records, tmp_path / "test.parquet")  # no label column
    result = runner.invoke(app, args(tmp_path / "test.parquet", tmp_path / "test.h5", "--label-names", NAMES))
    assert result.exit_code == 0, result.output
    cache = FeatureCache(tmp_path / "test.h5")
    assert cache.labels.tolist() == [-1] * 12 and cache.label_names == TAGS and cache.guids[0] == "100"


def test_parquet_image_paths_structs_and_errors_name_the_file_and_row(course, tmp_path):
    _, records = course
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "b.jpg").write_bytes(records[1].image_path.read_bytes())
    table = pa.table({"caption": [r.text for r in records[:3]], "tags": ["neutral x", "", "x"],
                      "picture": [{"bytes": records[0].image_path.read_bytes(), "path": "ignored.jpg"},
                                  {"bytes": None, "path": "../imgs/b.jpg"},  # from the Parquet file's folder
                                  {"bytes": None, "path": None}]})
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "part.parquet")
    ds = read_data(tmp_path / "pq" / "part.parquet", columns=Columns(labels_col="tags", label_sep=" "))
    assert [r.guid for r in ds.records] == ["0", "1", "2"] and ds.multilabel  # no id column: the row index
    assert ds.label_names == ("neutral", "x") and ds.records[0].labels == ("neutral", "x")
    assert ds.records[1].image_path.resolve() == tmp_path / "imgs" / "b.jpg"
    bad, = ds.errors
    assert bad.source == "part.parquet row 2" and "no image (column 'picture' is empty)" in bad.error
    with pytest.raises(DataError, match=r"part.parquet: no column 'nope' \(--text-col\)"):
        read_data(tmp_path / "pq" / "part.parquet", columns=Columns(text_col="nope"))


def test_parquet_cells_are_read_one_row_group_stream_per_process(course, tmp_path, monkeypatch):
    from mmfuse.data import _cells, open_image

    _, records = course
    ds = read_data(write_parquet(records, tmp_path / "p.parquet", [r.labels[0] for r in records], row_group_size=5))
    opened = []
    real = _cells._Cursor.__init__
    monkeypatch.setattr(_cells._Cursor, "__init__", lambda self, *a: (opened.append(a[1:]), real(self, *a))[1])
    _cells._state["pid"] = None
    sizes = [open_image(r.image_path).size for r in ds.records]
    assert sizes == [open_image(r.image_path).size for r in records]
    assert [rg for rg, _ in opened] == [0, 1, 2]  # one stream per row group (12 rows, groups of 5)


def test_inspect_reads_the_new_formats(course, tmp_path):
    _, records = course
    write_tars(records, tmp_path / "shards")
    result = runner.invoke(app, ["inspect", str(tmp_path / "shards"), "--out", str(tmp_path / "eda"),
                                 "--text-model", str(tmp_path / "no-model"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "## train: 12 rows" in result.output and "images that failed to open: 0" in result.output


def test_a_dataset_dict_split_and_a_missing_extra(course, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    _, records = course
    write_saved(records[:4], tmp_path / "train")
    write_saved(records[4:6], tmp_path / "test")
    both = datasets.DatasetDict({s: datasets.load_from_disk(str(tmp_path / s)) for s in ("train", "test")})
    both.save_to_disk(str(tmp_path / "dict"))
    test = read_data(tmp_path / "dict", "test")
    assert [r.guid for r in test.records] == ["104", "105"] and test.label_names == TAGS
    assert test.records[0].labels == (records[4].labels[0],) and str(test.records[0].image_path).endswith(":row 0")
    with pytest.raises(DataError, match="no split 'dev'; it has train, test"):
        read_data(tmp_path / "dict", "dev")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(DataError, match=r"reading Parquet needs pyarrow: pip install 'mmfuse\[formats\]'"):
        read_data(write_parquet(records, tmp_path / "p.parquet"))
