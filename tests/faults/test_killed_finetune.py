"""Fault injection: a fine-tune killed with SIGKILL right after a checkpoint, and in the middle of writing
the next one, continues with ``--resume`` to the weights of a run that was never interrupted."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from mmfuse.demo import make_demo_data
from mmfuse.extract.image import ImageExtractorConfig
from mmfuse.extract.text import TextExtractorConfig
from mmfuse.finetune import FineTuneConfig, finetune
from mmfuse.heads import HeadConfig

CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    import mmfuse.finetune as ft
    from mmfuse.finetune import loop
    from mmfuse.extract.image import ImageExtractorConfig
    from mmfuse.extract.text import TextExtractorConfig
    from mmfuse.finetune import FineTuneConfig
    from mmfuse.heads import HeadConfig
    data, out, bert, kill = sys.argv[1:5]
    saves = [0]
    original = loop._save_atomic  # where the loop writes its checkpoint

    def save(obj, path):
        if path.name == "checkpoint.pt":
            saves[0] += 1
            if kill == "mid-second-save" and saves[0] == 2:
                torch.save(obj, path.with_name(path.name + ".partial"))  # the temporary file is written...
                os.kill(os.getpid(), signal.SIGKILL)  # ...and the process dies before the rename
        original(obj, path)
        if kill == "after-first-save" and path.name == "checkpoint.pt":
            os.kill(os.getpid(), signal.SIGKILL)

    loop._save_atomic = save
    cfg = FineTuneConfig(text=TextExtractorConfig(bert, 32), image=ImageExtractorConfig("resnet18", "none"),
                         unfreeze_text_layers=1, unfreeze_image_blocks=1, epochs=2, batch_size=8, grad_accum=2,
                         lr_backbone=1e-3, lr_head=3e-3, patience=5, precision="fp32")
    ft.finetune(data, out, cfg, HeadConfig(fusion="concat", hidden=32), resume=os.path.exists(out),
                progress=False, log=lambda s: None)
""")


def options(bert) -> FineTuneConfig:
    return FineTuneConfig(text=TextExtractorConfig(str(bert), 32), image=ImageExtractorConfig("resnet18", "none"),
                          unfreeze_text_layers=1, unfreeze_image_blocks=1, epochs=2, batch_size=8, grad_accum=2,
                          lr_backbone=1e-3, lr_head=3e-3, patience=5, precision="fp32")


HEAD = HeadConfig(fusion="concat", hidden=32)


@pytest.fixture(scope="module")
def clean(tiny_bert, tmp_path_factory):
    """The data and an uninterrupted run of it."""
    root = tmp_path_factory.mktemp("ft-kill")
    data = make_demo_data(root / "data", n_train=24, n_test=4, seed=1)
    finetune(data, root / "clean", options(tiny_bert), HEAD, progress=False, log=lambda s: None)
    return data, root / "clean"


def flat(d, prefix=""):
    for k, v in d.items():
        yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["after-first-save", "mid-second-save"])
def test_a_killed_fine_tune_resumes_to_the_uninterrupted_weights(kill, clean, tiny_bert, tmp_path):
    data, full = clean
    out = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out), str(tiny_bert), kill],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    finetune(data, out, options(tiny_bert), HEAD, resume=True, progress=False, log=lambda s: None)
    for name in ("image.pt", "head.pt"):
        a = dict(flat(torch.load(full / name, weights_only=True)))
        b = dict(flat(torch.load(out / name, weights_only=True)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
