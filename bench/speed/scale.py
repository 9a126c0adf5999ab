"""Sharded extraction: one process against shard processes (each way of dealing rows), with the merge.

    python bench/speed/scale.py [--data ../shared/datasets/mvsa] [--rows 1000] [--world 2]
    python bench/speed/scale.py --device cuda        # on a GPU machine: full-size models, random init

CPU (the default): the first ``--rows`` rows of the mvsa training split (minilm + efficientnet-lite0)
are extracted by one ``mmfuse extract`` process, then by ``--world`` ``--shard`` processes started
together, once with round-robin and once with contiguous rows, then merged with ``mmfuse merge``:
wall time (merge included), rows/s, each shard's own time (the balance) and the merged cache checked
against the one-process cache. Beside it, the data-loading ceiling: images decoded, resized and
cropped per second with 0..N DataLoader workers and no model, so the table says which side bounds
throughput. ``--device cuda`` times resnet50 and a bert-base-shaped encoder (random init) on each
GPU instead. Prints the CPU and torch capability. Skips (exit 0) without the data set.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_data, cpu_line, parser
from mmfuse.cache import FeatureCache
from mmfuse.shards import shard_path


def subset(data: Path, rows: int, root: Path) -> Path:
    """A course folder holding the first ``rows`` rows of ``data``'s train split (files linked, not copied)."""
    lines = (data / "train.txt").read_text().splitlines()
    (root / "data").mkdir(parents=True)
    (root / "train.txt").write_text("\n".join(lines[:rows + 1]) + "\n")
    for line in lines[1:rows + 1]:
        guid = line.split(",")[0]
        for ext in ("jpg", "txt"):
            if (data / "data" / f"{guid}.{ext}").exists():
                os.symlink((data / "data" / f"{guid}.{ext}").resolve(), root / "data" / f"{guid}.{ext}")
    (root / "test_without_label.txt").write_text("guid,tag\n")
    return root


def extract_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmfuse.cli", "extract", str(data), "--out", str(out), "--text-model", "minilm",
            "--image-model", "efficientnet-lite0", "--on-error", "skip", "--no-progress", *extra]


def rates(output: str) -> dict[str, float]:
    """{"text": seconds, "image": seconds} from extract's last line."""
    return {m: float(s) for m, s in re.findall(r"(text|image) \d+ in ([\d.]+) s", output)}


def decode_ceiling(data: Path, n: int, workers: int) -> float:
    """Images per second through mmfuse's decode, resize and crop alone (no model)."""
    from torch.utils.data import DataLoader

    from mmfuse.extract.image import ImageFiles

    paths = sorted((data / "data").glob("*.jpg"))[:n]
    loader = DataLoader(ImageFiles(paths, 256, 224, True), batch_size=8, num_workers=workers)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return len(paths) / (time.perf_counter() - t0)


def read_seconds(path: Path, names: list[str], repeats: int = 5) -> float:
    """Median seconds to read every feature dataset of ``path`` whole (what FeatureCache does)."""
    import h5py

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            for n in names:
                f[n][:]
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def virtual_over(shards: list[Path], names: list[str], path: Path) -> Path:
    """An HDF5 virtual data set per feature over contiguous shards (the alternative to copying them)."""
    import h5py

    with h5py.File(path, "w") as out:
        for n in names:
            parts = [h5py.VirtualSource(s, n, shape=h5py.File(s, "r")[n].shape) for s in shards]
            total = sum(p.shape[0] for p in parts)
            layout = h5py.VirtualLayout(shape=(total, parts[0].shape[1]), dtype="float32")
            at = 0
            for src in parts:
                layout[at:at + src.shape[0]] = src
                at += src.shape[0]
            out.create_virtual_dataset(n, layout)
    return path


def cpu_table(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = subset(Path(args.data), args.rows, tmp / "course")
        t0 = time.perf_counter()
        one = subprocess.run(extract_cmd(data, tmp / "one.h5"), capture_output=True, text=True, check=True)
        runs = {"1 process": (time.perf_counter() - t0, [time.perf_counter() - t0], 0.0, rates(one.stdout))}
        for how in ("round-robin", "contiguous"):
            out = tmp / how / "train.h5"
            t0 = time.perf_counter()
            procs = [subprocess.Popen(extract_cmd(data, out, "--shard", f"{r}/{args.world}", "--sharding", how),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for r in range(args.world)]
            own = [0.0] * len(procs)  # each process's own wall time, model loading included
            while not all(own):
                for k, p in enumerate(procs):
                    if not own[k] and p.poll() is not None:
                        own[k] = time.perf_counter() - t0
                        if p.returncode:
                            raise SystemExit(p.stdout.read())
                time.sleep(0.05)
            t1 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mmfuse.cli", "merge",
                            *[str(shard_path(out, r, args.world)) for r in range(args.world)], "--out", str(out)],
                           check=True, capture_output=True)
            merge = time.perf_counter() - t1
            a, b = FeatureCache(tmp / "one.h5"), FeatureCache(out)
            assert a.guids == b.guids and all(np.allclose(a.features(n), b.features(n), atol=1e-4)
                                              for n in a.feature_names), "merged cache differs"
            runs[f"{args.world} shards, {how}"] = (time.perf_counter() - t0, own, merge, {})
            if how == "contiguous":  # reading a virtual data set over the shards vs the merged copy
                names = FeatureCache(out).feature_names
                vds = virtual_over([shard_path(out, r, args.world) for r in range(args.world)], names, tmp / "vds.h5")
                reads = (read_seconds(out, names), read_seconds(vds, names))
        ceiling = {w: decode_ceiling(data, min(args.rows, 400), w) for w in range(0, (os.cpu_count() or 1) + 1)}
    print(f"\n{cpu_line()}; torch {torch.__version__}; {args.rows} mvsa rows, minilm + efficientnet-lite0, fp32\n")
    print("| run | wall incl. merge (s) | rows/s | each process (s) | slowest / fastest | merge command (s) |")
    print("|---|---:|---:|---|---:|---:|")
    for name, (wall, own, merge, _) in runs.items():
        print(f"| {name} | {wall:.1f} | {args.rows / wall:.1f} | {' / '.join(f'{s:.1f}' for s in own)} | "
              f"{max(own) / min(own):.2f} | {merge:.1f} |")
    r = runs["1 process"][3]
    print(f"\none process: text {args.rows / r['text']:.1f} texts/s, image {args.rows / r['image']:.1f} img/s; "
          "decode + resize + crop alone (no model): "
          + ", ".join(f"{w} workers {v:.0f} img/s" for w, v in ceiling.items()))
    print(f"reading every feature whole: merged copy {1e3 * reads[0]:.1f} ms, HDF5 virtual data set over the "
          f"contiguous shards {1e3 * reads[1]:.1f} ms ({reads[1] / reads[0]:.2f}x)")


def gpu_table(args) -> None:
    from torchvision.models import resnet50
    from transformers import BertConfig, BertModel

    print(f"\n{cpu_line()}; torch {torch.__version__}; {torch.cuda.device_count()} GPU(s): "
          f"{torch.cuda.get_device_name(0)}; random init, bf16 autocast\n")
    print("| GPU | model | batch | items/s |\n|---|---|---:|---:|")
    for gpu in range(torch.cuda.device_count()):
        dev = torch.device("cuda", gpu)
        models = {"resnet50": (resnet50().eval().to(dev), lambda b: (torch.randn(b, 3, 224, 224, device=dev),)),
                  "bert-base-shaped, 128 tokens": (BertModel(BertConfig()).eval().to(dev),
                                                   lambda b: (torch.randint(0, 30000, (b, 128), device=dev),))}
        for name, (model, make) in models.items():
            for batch in (64, 256):
                x = make(batch)
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
                    for _ in range(3):
                        model(*x)
                    torch.cuda.synchronize(dev)
                    t0 = time.perf_counter()
                    for _ in range(10):
                        model(*x)
                    torch.cuda.synchronize(dev)
                print(f"| {gpu} | {name} | {batch} | {10 * batch / (time.perf_counter() - t0):.0f} |", flush=True)


def main() -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("skip: no GPU here")
            return 0
        gpu_table(args)
        return 0
    if not (Path(args.data) / "train.txt").is_file():
        print(f"skip: no data set at {args.data}")
        return 0
    cpu_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
