"""Fault injection: extraction killed with SIGKILL at a dozen points, mid-write and mid-finish included.

Each point is a real subprocess that dies by SIGKILL; the next run resumes what it left. After the
last one, the cache must equal a clean run's row for row. The kill points are injected in the child
(a patched h5py write that puts half of a chunk's rows on disk and then kills the process, or a kill
while ``complete`` is written), plus kills from outside at a moment the child does not choose.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import write_course
from mmfuse.cache import FeatureCache, metadata_bytes, partial_path

# Runs one extraction with 4-row chunks (40 rows: 10 text chunks x 2 datasets, then 10 image chunks),
# killing itself at the point named by argv[3]: "none", "write:K" (the K-th feature write is torn:
# half its rows written and flushed, then SIGKILL) or "complete" (SIGKILL right after the complete
# flag's bytes are written, before the final flush).
CHILD = textwrap.dedent("""
    import importlib, os, signal, sys
    import h5py
    cache = importlib.import_module("mmfuse.cache")
    ex = importlib.import_module("mmfuse.extract")  # the package (mmfuse.extract is also the function)
    cache.CHUNK_ROWS = ex.CHUNK_ROWS = 4
    ex.TEXT_BLOCK = 8
    importlib.import_module("mmfuse.extract.image").OPTIMIZE_MIN_IMAGES = 1  # the opt-in TorchScript path: its trace
    # keeps the run long enough for the outside kills to land mid-run (eager, the default, can finish first)
    data, out, kill, bert = sys.argv[1:5]
    count = [0]
    setitem = h5py.Dataset.__setitem__

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def torn(self, key, value):
        if kill.startswith("write:") and self.name.startswith(("/text/", "/image/")):
            count[0] += 1
            if count[0] == int(kill[6:]):
                half = len(value) // 2
                part = slice(key.start, key.start + half) if isinstance(key, slice) else key[:half]
                setitem(self, part, value[:half])
                self.file.flush()
                die()
        setitem(self, key, value)
        if kill == "complete" and self.name == "/complete":
            die()

    h5py.Dataset.__setitem__ = torn
    opened = cache.CacheWriter.open

    def announce(*a, **k):
        w = opened(*a, **k)
        print("opened", flush=True)
        return w

    cache.CacheWriter.open = ex.CacheWriter.open = announce
    ex.extract(data, "train", out, text=ex.TextExtractorConfig(bert, 32, 4),
               image=ex.ImageExtractorConfig("resnet18", "none", 4, 0, optimize=True), precision="fp32", progress=False,
               log=lambda s: None)
    print("done", flush=True)
""")

# (kind, argument): an injected kill point, or ("outside", seconds after the child opened the cache)
POINTS = [("write", 1), ("write", 3), ("outside", 0.05), ("write", 2), ("write", 5), ("write", 1),
          ("outside", 0.3), ("write", 4), ("write", 2), ("write", 6), ("write", 1), ("complete", None)]


def run_child(data: Path, out: Path, bert: Path, kill: str, outside: float | None = None) -> int:
    """Run CHILD; return its exit code (-9: killed). A child that fails otherwise fails the test."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(out), kill, str(bert)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if outside is not None:
        line = p.stdout.readline()
        if line.strip() == "opened":
            time.sleep(outside)
            p.send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    assert p.returncode in (0, -signal.SIGKILL), err[-3000:]
    return p.returncode


def rows(path: Path) -> dict:
    c = FeatureCache(path)
    return {"guids": c.guids, "labels": c.labels, "skipped": c.skipped,
            **{n: c.features(n) for n in ("text/cls", "text/mean", "image/pooled")}}


@pytest.mark.slow
def test_extraction_killed_at_a_dozen_points_resumes_to_a_clean_runs_cache(tiny_bert, tmp_path):
    data = write_course(tmp_path / "data", n=40, corrupt=False, n_test=0)  # 10 chunks of 4 rows
    clean, killed = tmp_path / "clean.h5", tmp_path / "killed.h5"
    assert run_child(data, clean, tiny_bert, "none") == 0
    kills, done_before = 0, -1
    for kind, arg in POINTS:
        spec = {"outside": "none", "complete": "complete"}.get(kind, f"write:{arg}")
        code = run_child(data, killed, tiny_bert, spec, arg if kind == "outside" else None)
        kills += code == -signal.SIGKILL
        written = killed if killed.is_file() else partial_path(killed)  # the cache's name only once complete
        if written.is_file():  # after every kill the file opens and no finished row was lost
            progress = FeatureCache.progress(killed)
            done = progress["text"] + progress["image"]
            assert done >= done_before, (kind, arg, progress)
            done_before = done
            with h5py.File(written, "r") as f:  # opens: no kill left broken metadata
                assert written == partial_path(killed) or f["complete"][0], (kind, arg, progress)
                full = progress["text"] == progress["image"] == progress["rows"] - progress["skipped"]
                assert full or not f["complete"][0], (kind, arg, progress)  # complete only when it is
                assert code != 0 or f["complete"][0]
    assert kills >= 10, f"only {kills} of the {len(POINTS)} kill points were reached"
    assert run_child(data, killed, tiny_bert, "none") == 0  # the last rerun completes
    a, b = rows(clean), rows(killed)
    assert a["guids"] == b["guids"] and np.array_equal(a["labels"], b["labels"]) and a["skipped"] == b["skipped"]
    for name in ("text/cls", "text/mean", "image/pooled"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_after_creation_the_writer_changes_no_metadata_so_a_kill_cannot_corrupt_it(tmp_path):
    """Why a kill at any moment leaves a valid file: every write after creation lands inside the raw data
    extents allocated at creation; not one byte of HDF5 metadata changes (a lazily allocated dataset,
    the control, changes its chunk index on the first write)."""
    from mmfuse.cache import CacheWriter

    n = 600
    w = CacheWriter.open(tmp_path / "c.h5", guids=[str(i) for i in range(n)], labels=np.zeros(n, np.int64),
                         label_names=("a", "b"), multilabel=False, skipped={3: "bad"}, store_dtype="float32",
                         dims={"text/cls": 8, "text/mean": 8, "image/pooled": 6}, provenance={}, identity="x")
    w.close()  # unfinished: it stays at c.h5.partial until complete
    before = metadata_bytes(partial_path(tmp_path / "c.h5"))
    w = CacheWriter.open(tmp_path / "c.h5", guids=[str(i) for i in range(n)], labels=np.zeros(n, np.int64),
                         label_names=("a", "b"), multilabel=False, skipped={3: "bad"}, store_dtype="float32",
                         dims={"text/cls": 8, "text/mean": 8, "image/pooled": 6}, provenance={}, identity="x")
    rows = np.delete(np.arange(n), 3)
    w.write("text", rows, {"text/cls": np.ones((n - 1, 8)), "text/mean": np.ones((n - 1, 8))})
    w.skip(7, "image unreadable: " + "a very long reason " * 60)
    w.write("image", np.delete(rows, 6), {"image/pooled": np.ones((n - 2, 6))})
    assert w.finish()
    w.close()
    assert metadata_bytes(tmp_path / "c.h5") == before
    assert FeatureCache(tmp_path / "c.h5").skipped[1][1].startswith("image unreadable: a very long")

    with h5py.File(tmp_path / "control.h5", "w") as f:  # the control: HDF5's default, late allocation
        f.create_dataset("x", shape=(n, 8), chunks=(256, 8), dtype="float32")
    before = metadata_bytes(tmp_path / "control.h5")
    with h5py.File(tmp_path / "control.h5", "r+") as f:
        f["x"][:256] = 1
    assert metadata_bytes(tmp_path / "control.h5") != before


def test_a_version_2_cache_still_reads_and_resumes(tmp_path):
    """Caches written before version 3 (complete as an attribute, lazily allocated) keep working."""
    from mmfuse.cache import CacheWriter

    n = 8
    kw = dict(guids=[str(i) for i in range(n)], labels=np.zeros(n, np.int64), label_names=("a", "b"), multilabel=False,
              skipped={}, dims={"text/cls": 4, "text/mean": 4, "image/pooled": 3}, store_dtype="float32",
              provenance={}, identity="v2")
    w = CacheWriter.open(tmp_path / "c.h5", **kw)
    w.write("text", np.arange(n), {"text/cls": np.ones((n, 4)), "text/mean": np.ones((n, 4))})
    w.close()
    with h5py.File(partial_path(tmp_path / "c.h5"), "r+") as f:  # make it look like version 2
        del f["complete"]
        f.attrs.update(version=2, complete=False)
    w = CacheWriter.open(tmp_path / "c.h5", **kw)
    w.write("image", np.arange(n), {"image/pooled": np.ones((n, 3))})
    assert w.finish()
    w.close()
    assert FeatureCache(tmp_path / "c.h5").complete and len(FeatureCache(tmp_path / "c.h5")) == n
