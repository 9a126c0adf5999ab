"""The files of a head run folder read back, each checked (a damaged or inconsistent file is one
CorruptFileError naming it): config.json (:func:`load_config`), head.json (:func:`read_meta`) and
scaler.npz (:func:`read_scalers`)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
from sklearn.preprocessing import StandardScaler

from ..errors import MmfuseError
from ..safe import CorruptFileError, corrupt, load_npz, read_json, reading
from .config import IMAGE_FEATURES, TEXT_FEATURES, HeadConfig


def _scaler(mean: np.ndarray, scale: np.ndarray) -> StandardScaler:
    """A fitted StandardScaler from saved means and scales (N,)."""
    s = StandardScaler()
    s.mean_, s.scale_, s.var_ = mean, scale, scale ** 2
    s.n_features_in_, s.n_samples_seen_ = len(mean), 0
    return s


def load_config(path: Path) -> HeadConfig:
    """config.json as a HeadConfig; damaged, or a value of the wrong type: one CorruptFileError naming it."""
    data = read_json(path)  # HeadConfig.from_json would raise JSONDecodeError / AttributeError
    for f in fields(HeadConfig):  # HeadConfig checks values, not types (an int may stand for a float; C is checked)
        v, d = data.get(f.name, f.default), f.default
        if type(v) is not type(d) and not (type(d) is float and type(v) is int) and f.name != "C":
            raise corrupt(path, f"{f.name} is {v!r:.60}, expected {type(d).__name__}")
    try:
        with reading(path):
            return HeadConfig.from_json(path)
    except CorruptFileError:
        raise
    except MmfuseError as e:  # a value HeadConfig refuses (fusion 'foo')
        raise corrupt(path, str(e)) from None


def read_meta(path: Path) -> dict:
    """head.json, its fields checked for type and length (else one CorruptFileError naming it)."""
    m = read_json(path, required=("label_names", "dims", "best_epoch", "provenance"))
    names, dims, thr = m["label_names"], m["dims"], m.get("thresholds")
    n = len(names) if isinstance(names, list) else -1
    expect = {  # field: (valid, what it must be); each test guards what the next one reads
        "label_names": (n > 0 and all(isinstance(x, str) for x in names), "a list of label names"),
        "dims": (isinstance(dims, dict) and all(type(dims.get(k)) is int and dims[k] > 0 for k in ("text", "image")),
                 "{'text': N, 'image': N}"),
        "classes": (isinstance(m.get("classes", names), list) and len(m.get("classes", names)) == n, f"{n} classes"),
        "thresholds": (thr is None or isinstance(thr, list) and len(thr) == n
                       and all(type(t) in (int, float) for t in thr), f"{n} numbers"),
        "best_epoch": (type(m["best_epoch"]) is int, "a whole number"),
        "provenance": (isinstance(m["provenance"], (dict, type(None))), "an object"),
        "text_feature": (m.get("text_feature") in (None, "", *TEXT_FEATURES), " or ".join(TEXT_FEATURES)),
        "image_feature": (m.get("image_feature") in (None, "", *IMAGE_FEATURES), " or ".join(IMAGE_FEATURES)),
    }
    for name, (ok, what) in expect.items():
        if not ok:
            raise corrupt(path, f"{name} is {m.get(name)!r:.60}, not {what}")
    return m


def read_scalers(path: Path, dims: dict, meta_path: Path) -> tuple[StandardScaler, StandardScaler]:
    """The text and image scalers of scaler.npz, checked against head.json's dims."""
    s = load_npz(path, ("text_mean", "text_std", "image_mean", "image_std"))
    for k, a in s.items():
        if a.shape != (dims[k.split("_")[0]],):
            raise CorruptFileError(f"{meta_path} and {path} do not match: head.json's dims say {dims['text']} text and "
                                   f"{dims['image']} image features, scaler.npz's {k} has shape {a.shape}; one of "
                                   "them was edited or comes from another run: train the run again")
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            raise corrupt(path, f"{k} holds {'NaN or infinite values' if a.dtype.kind == 'f' else a.dtype}")
    return _scaler(s["text_mean"], s["text_std"]), _scaler(s["image_mean"], s["image_std"])
