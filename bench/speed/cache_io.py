"""Bytes the cache writer writes and reads per MiB of features it stores (goal: at most 2x).

    python bench/speed/cache_io.py [--rows 3199]

Writes text features (cls + mean, minilm width 384 and bert-base width 768) in length-sorted
order, as extraction computes them (64-row batches from all over the file), and image features
(1280-d, EfficientNet-Lite0 width) in file order in batches of 8, twice: the way the cache wrote
them before (each batch straight into its 256-row chunks and flushed) and through ``CacheWriter``
(rows buffered and written a whole chunk at a time). Counts the process's write/read syscall bytes
(Linux ``/proc/self/io``). No data set needed: the feature values do not change the bytes.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import cpu_line, parser
from mmfuse.cache import CHUNK_ROWS, CacheWriter


def io() -> np.ndarray:
    d = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return np.array([int(d["wchar"]), int(d["rchar"])])


def batches(n: int, modality: str, rng) -> list[np.ndarray]:
    if modality == "text":  # length-sorted: the rows of a batch come from all over the file
        order = rng.permutation(n)
        return [order[i:i + 64] for i in range(0, n, 64)]
    return [np.arange(i, min(n, i + 8)) for i in range(0, n, 8)]


def before(path: Path, n: int, dims: dict[str, int], modality: str, rng) -> np.ndarray:
    """The previous writer: every batch written into its chunks at once, then flushed."""
    with h5py.File(path, "w") as f:
        for name, d in dims.items():
            f.create_dataset(name, shape=(n, d), dtype="float32", chunks=(min(n, CHUNK_ROWS), d))
        done = f.create_dataset("done", shape=(n,), dtype=bool)
        start = io()
        for rows in batches(n, modality, rng):
            rows = np.sort(rows)
            for name, d in dims.items():
                f[name][rows] = rng.normal(size=(len(rows), d)).astype(np.float32)
            done[rows] = True
            f.flush()
        return io() - start


def now(path: Path, n: int, dims: dict[str, int], modality: str, rng) -> np.ndarray:
    w = CacheWriter.open(path, guids=[str(i) for i in range(n)], labels=np.zeros(n, np.int64), label_names=("a",),
                         multilabel=False, skipped={}, dims=dims, store_dtype="float32", provenance={},
                         identity="bench")
    start = io()
    for rows in batches(n, modality, rng):
        w.write(modality, rows, {name: rng.normal(size=(len(rows), d)).astype(np.float32) for name, d in dims.items()})
    w.finish()
    spent = io() - start
    w.close()
    return spent


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rows", type=int, default=3199)
    args = ap.parse_args()
    if not Path("/proc/self/io").exists():
        print("skip: needs Linux /proc/self/io")
        sys.exit(0)
    print(f"{args.rows} rows, chunks of {CHUNK_ROWS} rows; {cpu_line()}\n")
    print("| features | MiB stored | before: written / read per MiB | now: written / read per MiB |")
    print("|---|---:|---:|---:|")
    cases = [("text cls+mean, 384-d (minilm)", "text", {"text/cls": 384, "text/mean": 384}),
             ("text cls+mean, 768-d (bert-base)", "text", {"text/cls": 768, "text/mean": 768}),
             ("image pooled, 1280-d (lite0)", "image", {"image/pooled": 1280})]
    with tempfile.TemporaryDirectory() as tmp:
        for label, modality, dims in cases:
            mib = args.rows * sum(dims.values()) * 4 / 2**20
            old = before(Path(tmp) / f"old-{label[:8]}-{sum(dims.values())}.h5", args.rows, dims, modality, np.random.default_rng(0)) / 2**20 / mib
            new = now(Path(tmp) / f"new-{label[:8]}-{sum(dims.values())}.h5", args.rows, dims, modality, np.random.default_rng(0)) / 2**20 / mib
            print(f"| {label} | {mib:.1f} | {old[0]:.1f}x / {old[1]:.1f}x | {new[0]:.2f}x / {new[1]:.2f}x |")


if __name__ == "__main__":
    main()
