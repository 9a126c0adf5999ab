"""Sharded extraction: shards from plain processes or torchrun merge into the cache one process writes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_course
from mmfuse.cache import FeatureCache
from mmfuse.shards import shard_rows
from mmfuse.cli import app
from mmfuse.errors import MmfuseError

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A dozen pairs, one with a truncated image (skipped with --on-error skip), and the one-process cache."""
    return write_course(tmp_path_factory.mktemp("scale") / "course", corrupt=True)


def cli(extract_args, data, out, *extra) -> list[str]:
    return [sys.executable, "-m", "mmfuse.cli", *extract_args(data, out, "--on-error", "skip", *extra)]


def assert_same_cache(a, b):
    a, b = FeatureCache(a), FeatureCache(b)
    assert a.identity == b.identity and a.guids == b.guids and np.array_equal(a.labels, b.labels)
    assert a.skipped == b.skipped and len(a.skipped) == 1
    for name in a.feature_names:
        assert np.allclose(a.features(name), b.features(name), atol=1e-5), name  # other thread counts


def test_rows_are_dealt_to_shards_exactly_once():
    for how in ("round-robin", "contiguous"):
        rows = np.concatenate([shard_rows(10, r, 3, how) for r in range(3)])
        assert sorted(rows) == list(range(10))
    assert shard_rows(10, 1, 3).tolist() == [1, 4, 7]
    assert shard_rows(10, 1, 3, "contiguous").tolist() == [3, 4, 5, 6]
    with pytest.raises(MmfuseError, match="3 rows cannot give each of 4 shards a row"):
        shard_rows(3, 0, 4)


def test_a_shard_of_only_bad_rows_is_fine_and_threads_are_restored(course, extract_args, tmp_path):
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "train.h5"  # row 7 (the truncated image) alone in its shard
    only_bad = runner.invoke(app, extract_args(course, out, "--on-error", "skip", "--shard", "7/12",
                                               "--sharding", "contiguous"))
    assert only_bad.exit_code == 0, only_bad.output
    assert len(FeatureCache(tmp_path / "train.shard-7-of-12.h5").skipped) == 1 and torch.get_num_threads() == before
    refused = runner.invoke(app, extract_args(course, out, "--on-error", "skip", "--shard", "7/12",
                                              "--sharding", "contiguous", "--max-length", "16"))
    assert refused.exit_code == 1 and "another configuration" in refused.output
    assert torch.get_num_threads() == before  # also when the run stops early


def test_two_shard_processes_merge_into_the_one_process_cache(course, extract_args, tmp_path):
    whole = tmp_path / "one.h5"
    subprocess.run(cli(extract_args, course, whole), check=True, env=ENV, capture_output=True)
    out = tmp_path / "train.h5"
    procs = [subprocess.Popen(cli(extract_args, course, out, "--shard", f"{r}/2"), env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for p in procs:
        assert p.wait() == 0, p.stdout.read()
    shards = [tmp_path / f"train.shard-{r}-of-2.h5" for r in range(2)]
    assert [len(FeatureCache(s)) + len(FeatureCache(s).skipped) for s in shards] == [6, 6]
    result = runner.invoke(app, ["merge", *map(str, shards), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert_same_cache(out, whole)
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "INCOMPLETE" not in info.output
    again = runner.invoke(app, extract_args(course, out, "--on-error", "skip"))  # one process: nothing left
    assert again.exit_code == 0 and "text 0 in" in again.output


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_shards_and_merges_after_a_barrier(course, extract_args, tmp_path):
    whole = tmp_path / "one.h5"
    subprocess.run(cli(extract_args, course, whole), check=True, env=ENV, capture_output=True)
    out = tmp_path / "train.h5"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "mmfuse.cli", *extract_args(course, out, "--on-error", "skip", "--merge")],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "merged 2 shards into" in run.stdout
    assert_same_cache(out, whole)


def test_merge_refuses_missing_overlapping_incomplete_and_foreign_shards(course, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    for r in range(2):
        assert runner.invoke(app, extract_args(course, out, "--on-error", "skip", "--shard", f"{r}/2")).exit_code == 0
    s0, s1 = tmp_path / "train.shard-0-of-2.h5", tmp_path / "train.shard-1-of-2.h5"
    again = runner.invoke(app, extract_args(course, out, "--on-error", "skip", "--shard", "0/2"))
    assert again.exit_code == 0 and "text 0 in" in again.output  # a finished shard resumes to nothing to do
    with h5py.File(s0, "r+") as f:  # as if killed before its last chunk of images: that chunk runs again
        f["done/image"][:] = False
        f["complete"][0] = False
    resumed = runner.invoke(app, extract_args(course, out, "--on-error", "skip", "--shard", "0/2"))
    assert resumed.exit_code == 0 and "text 0 in" in resumed.output and "image 6 in" in resumed.output

    def merge(*shards):
        return runner.invoke(app, ["merge", *map(str, shards), "--out", str(tmp_path / "merged.h5")])

    missing = merge(s0)
    assert missing.exit_code == 1 and "shard(s) 1 of 2 missing" in missing.output
    twice = merge(s0, s0)
    assert twice.exit_code == 1 and "are both shard 0 of 2" in twice.output
    other = tmp_path / "contiguous" / "train.h5"  # the other way of cutting: rows overlap
    assert runner.invoke(app, extract_args(course, other, "--on-error", "skip", "--shard", "1/2",
                                           "--sharding", "contiguous")).exit_code == 0
    overlap = merge(s0, other.with_name("train.shard-1-of-2.h5"))
    assert overlap.exit_code == 1 and "covered twice" in overlap.output
    foreign = tmp_path / "foreign" / "train.h5"  # another extraction: another max length
    assert runner.invoke(app, extract_args(course, foreign, "--on-error", "skip", "--shard", "1/2",
                                           "--max-length", "16")).exit_code == 0  # the last --max-length wins
    refused = merge(s0, foreign.with_name("train.shard-1-of-2.h5"))
    assert refused.exit_code == 1 and "another extraction" in refused.output and "max_length" in refused.output
    shutil.copy(s1, tmp_path / "cut.h5")
    with h5py.File(tmp_path / "cut.h5", "r+") as f:
        f["done/image"][0] = False  # as if killed before its last chunk
        f["complete"][0] = False
    incomplete = merge(s0, tmp_path / "cut.h5")
    assert incomplete.exit_code == 1 and "is incomplete" in incomplete.output and "--shard 1/2" in incomplete.output
    plain = tmp_path / "plain.h5"
    assert runner.invoke(app, extract_args(course, plain, "--on-error", "skip")).exit_code == 0
    not_a_shard = merge(plain)
    assert not_a_shard.exit_code == 1 and "is not a shard" in not_a_shard.output
    assert not (tmp_path / "merged.h5").exists()  # nothing half-written by a refusal
    assert merge(s0, s1).exit_code == 0
