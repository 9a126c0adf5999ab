"""The feature cache: its identity (what evaluate, predict and a resumed extraction compare), one writer at
a time (the lock, its pid and progress for readers), chunk-sized writes, and interruption during a write.
From the correctness review (issue 13): each test failed on the code before it."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import mmfuse
from conftest import synthetic_features, write_feature_cache
from mmfuse.cache import CacheWriter, FeatureCache
from mmfuse.cli import app
from mmfuse.errors import CacheError
from mmfuse.heads import HeadConfig, train_head

runner = CliRunner()


def text_cache(path: Path, n: int = 300, seed: int = 0, identity: str = "x", **changes) -> Path:
    text, image, y, names = synthetic_features("text", n=n, seed=seed)
    return write_feature_cache(path, text, image, y, names, identity=identity, provenance=changes)


# --- feature identity -----------------------------------------------------------------------------
@pytest.mark.parametrize("change, field", [
    ({"text": {"max_length": 16}}, "text max_length"),
    ({"image": {"preprocessing": {"crop": 192}}}, "image preprocessing"),
    ({"precision": "bf16"}, "precision"),
    ({"store_dtype": "float16"}, "store dtype"),
    ({"versions": {"transformers": "9.1.0"}}, "transformers version"),
])
def test_evaluate_and_predict_refuse_a_cache_extracted_otherwise_naming_the_field(tmp_path, change, field):
    run = tmp_path / "run"
    train_head(text_cache(tmp_path / "train.h5"), HeadConfig(fusion="logreg"), out=run)
    other = text_cache(tmp_path / "other.h5", identity="y", **change)
    for cmd in (["evaluate", str(run), str(other)], ["predict", str(run), str(other), "--out", str(tmp_path / "p")]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 1 and f"{field}:" in result.output and "Traceback" not in result.output


def test_same_features_other_data_are_accepted(tmp_path):
    run = tmp_path / "run"
    train_head(text_cache(tmp_path / "train.h5"), HeadConfig(fusion="logreg"), out=run)
    other = text_cache(tmp_path / "test.h5", seed=3, identity="other-data", data={"fingerprint": "0" * 64})
    assert runner.invoke(app, ["evaluate", str(run), str(other)]).exit_code == 0


def test_resume_refuses_another_image_runtime(clean_course_dir, extract_args, tmp_path, monkeypatch):
    from mmfuse.extract import image

    monkeypatch.setattr(image, "OPTIMIZE_MIN_IMAGES", 1)  # optimised although the split is small
    out = tmp_path / "train.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, out, "--optimize", "--precision", "fp32")).exit_code == 0
    result = runner.invoke(app, extract_args(clean_course_dir, out, "--precision", "fp32"))  # eager, the default
    assert result.exit_code == 1 and "another configuration" in result.output


# --- one writer, chunk-sized writes, interruption during a write ----------------------------------
HOLD = textwrap.dedent("""
    import sys, time, numpy as np
    from mmfuse.cache import CacheWriter
    w = CacheWriter.open(sys.argv[1], guids=[str(i) for i in range(600)], labels=np.zeros(600, np.int64),
                         label_names=("a", "b"), multilabel=False, skipped={}, dims={"text/cls": 4},
                         store_dtype="float32", provenance={}, identity="holder")
    w.write("text", np.arange(256), {"text/cls": np.ones((256, 4))})
    print("ready", flush=True)
    time.sleep(120)
""")


def test_a_cache_being_written_is_locked_named_and_readable_for_progress(clean_course_dir, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for extra in ((), ("--overwrite",)):  # --overwrite takes the same lock
            result = runner.invoke(app, extract_args(clean_course_dir, out, *extra))
            assert result.exit_code == 1, result.output
            assert f"being written by another extraction (pid {holder.pid}" in result.output
            assert "--overwrite" not in result.output
        info = runner.invoke(app, ["info", str(out)])
        assert info.exit_code == 0 and f"being written by pid {holder.pid}" in info.output
        assert "text 256/600" in info.output
        with pytest.raises(CacheError, match=f"pid {holder.pid}"):
            FeatureCache(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the killed writer's lock: nothing stale blocks the next run
    result = runner.invoke(app, extract_args(clean_course_dir, out, "--overwrite"))
    assert result.exit_code == 0, result.output


def _io() -> tuple[int, int]:
    d = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(d["wchar"]), int(d["rchar"])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_length_sorted_writes_cost_about_the_features_bytes(tmp_path):
    n, d = 3199, 384
    rng = np.random.default_rng(0)
    w = CacheWriter.open(tmp_path / "c.h5", guids=[str(i) for i in range(n)], labels=np.zeros(n, np.int64),
                         label_names=("a", "b"), multilabel=False, skipped={}, store_dtype="float32",
                         dims={"text/cls": d, "text/mean": d, "image/pooled": 8}, provenance={}, identity="io")
    order = rng.permutation(n)  # like length-sorted batches: rows from all over the file
    before = _io()
    for start in range(0, n, 64):
        rows = order[start:start + 64]
        w.write("text", rows, {"text/cls": rng.normal(size=(len(rows), d)), "text/mean": np.zeros((len(rows), d))})
    written, read = (a - b for a, b in zip(_io(), before))
    w.close()
    features = 2 * n * d * 4
    assert written <= 2 * features and read <= 2 * features, (written / features, read / features)


def test_interrupted_during_a_feature_write_resumes_to_the_clean_cache(clean_course_dir, extract_args, tmp_path,
                                                                     monkeypatch, tiny_bert):
    clean = tmp_path / "clean.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, clean)).exit_code == 0
    original = h5py.Dataset.__setitem__

    def torn_write(self, key, value):
        if self.name == "/image/pooled":  # half the rows land, then the process is interrupted
            value = np.asarray(value)
            half = len(value) // 2
            original(self, slice(key.start, key.start + half) if isinstance(key, slice) else key[:half], value[:half])
            raise KeyboardInterrupt
        return original(self, key, value)

    out = tmp_path / "resumed.h5"
    monkeypatch.setattr(h5py.Dataset, "__setitem__", torn_write)
    with pytest.raises(KeyboardInterrupt):
        mmfuse.extract(clean_course_dir, "train", out, progress=False, log=lambda s: None,
                       text=mmfuse.TextExtractorConfig(str(tiny_bert), 32, 4),
                       image=mmfuse.ImageExtractorConfig("resnet18", "none", 4, 0))
    monkeypatch.setattr(h5py.Dataset, "__setitem__", original)
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(out)
    result = runner.invoke(app, extract_args(clean_course_dir, out))
    assert result.exit_code == 0, result.output
    assert "text 0 in" in result.output and "image 12 in" in result.output  # the torn rows are redone
    a, b = FeatureCache(clean), FeatureCache(out)
    for name in a.feature_names:
        np.testing.assert_allclose(a.features(name), b.features(name), rtol=1e-4, atol=1e-5)


def test_a_torn_cache_file_says_overwrite_not_locked(clean_course_dir, extract_args, tmp_path):
    out = tmp_path / "train.h5"
    out.write_bytes(b"not an HDF5 file")
    result = runner.invoke(app, extract_args(clean_course_dir, out))
    assert result.exit_code == 1 and "--overwrite" in result.output and "being written" not in result.output
    assert not Path(str(out) + ".lock.owner").exists()
    assert runner.invoke(app, extract_args(clean_course_dir, out, "--overwrite")).exit_code == 0
