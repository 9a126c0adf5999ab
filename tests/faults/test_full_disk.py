"""Fault injection: the output disk fills up (a patched write raising ENOSPC, as a full tmpfs would)."""
from __future__ import annotations

import errno

import h5py
import numpy as np
from typer.testing import CliRunner

from conftest import synthetic_features, write_feature_cache
from mmfuse.cache import FeatureCache
from mmfuse.cli import app

runner = CliRunner()


def fail_after(monkeypatch, owner, name, calls: int, only=lambda *a: True):
    """Make ``owner.name`` raise ENOSPC from its ``calls``-th matching call on."""
    original, count = getattr(owner, name), [0]

    def patched(*args, **kwargs):
        if only(*args):
            count[0] += 1
            if count[0] >= calls:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


def test_a_full_disk_during_extraction_is_one_line_keeps_the_written_rows_and_resumes(
        clean_course_dir, extract_args, tmp_path, monkeypatch):
    clean, out = tmp_path / "clean.h5", tmp_path / "full.h5"
    assert runner.invoke(app, extract_args(clean_course_dir, clean)).exit_code == 0
    import mmfuse.cache as cache
    monkeypatch.setattr(cache, "CHUNK_ROWS", 4)  # 12 rows: 3 chunks, so some are on disk when it fills
    fail_after(monkeypatch, h5py.Dataset, "__setitem__", 3, only=lambda ds, *a: ds.name.startswith("/image/"))
    result = runner.invoke(app, extract_args(clean_course_dir, out))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and "Traceback" not in result.output and len(errors) == 1, result.output
    assert f"cannot write {out}: no space left on the device. The rows written before are kept" in errors[0]
    progress = FeatureCache.progress(out)
    assert progress["text"] == 12 and progress["image"] == 8 and not progress["complete"]
    monkeypatch.undo()
    result = runner.invoke(app, extract_args(clean_course_dir, out))  # space freed: the same command resumes
    assert result.exit_code == 0 and "image 4 in" in result.output, result.output
    a, b = FeatureCache(clean), FeatureCache(out)
    for name in ("text/cls", "image/pooled"):
        np.testing.assert_allclose(b.features(name), a.features(name), rtol=1e-5, atol=1e-5)


def test_a_full_disk_during_a_grid_keeps_the_finished_rows_and_resumes(tmp_path, monkeypatch):
    text, image, y, names = synthetic_features("text", n=120)
    cache = write_feature_cache(tmp_path / "c.h5", text, image, y, label_names=names)
    args = ["grid", str(cache), "--out", str(tmp_path / "g"), "--fusion", "concat", "--lr", "1e-3,3e-3,1e-2",
            "--weight-decay", "0", "--epochs", "2", "--folds", "3", "--jobs", "1", "--precision", "fp32", "--no-progress"]
    fail_after(monkeypatch, np, "save", 3, only=lambda path, *a: "oof" in str(path))
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "no space left on the device. The 2 configurations listed" in result.output
    assert "Traceback" not in result.output
    monkeypatch.undo()
    result = runner.invoke(app, args)
    # the third configuration's splits were all saved before its out-of-fold file failed: listed, not refit
    assert result.exit_code == 0 and "3 of 3 configurations already done (9 of 9 fits)" in result.output, result.output
    assert "0 fits in" in result.output
