"""Extraction from WebDataset tars and Parquet files against the same images as files (the course folder).

    python bench/speed/formats.py [--data ../shared/datasets/mvsa] [--rows 800] [--workers 0 2] [--repeats 3] [--threads N]

The first ``--rows`` rows of the mvsa training split are written as 4 tar shards and as Parquet files
(image bytes in a column; one row group, and row groups of 100 rows as ``datasets`` writes them), then
timed three ways: reading the data set (``read_data``: index, texts, labels), the decode ceiling (images
decoded, resized and cropped per second through extraction's ``ImageFiles`` with 0..N DataLoader workers,
no model) and extraction's image loop (``encode_images``: efficientnet-lite0, fp32, batch 8, decoding in
the process itself; the model loaded once, so that the formats are compared on the same loop), in wall
seconds and in the process's CPU seconds (with ``--threads 1``, the work done, which other work on a shared
machine moves far less than the wall time). Every image
is read once before any timing (all from the page cache), and the formats take turns over ``--repeats``
rounds: the table gives the medians, and each format's median ratio to the files in the same round. Prints the
CPU. Skips (exit 0) without the data set.
"""
from __future__ import annotations

import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_data, cpu_line, parser
from mmfuse.data import read_course, read_data
from mmfuse.extract.image import ImageExtractorConfig, encode_images, load_image_encoder


def write_formats(data: Path, rows: int, root: Path) -> dict[str, Path]:
    """A course folder of the first ``rows`` readable rows (files copied, so that all four live on one file
    system), 4 tars and two Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = (data / "train.txt").read_text().splitlines()[1:]
    course = root / "course"
    (course / "data").mkdir(parents=True)
    kept = []
    for line in lines:
        guid = line.split(",")[0]
        if all((data / "data" / f"{guid}.{e}").is_file() for e in ("jpg", "txt")):
            kept.append(line)
            for e in ("jpg", "txt"):
                (course / "data" / f"{guid}.{e}").write_bytes((data / "data" / f"{guid}.{e}").read_bytes())
        if len(kept) == rows:
            break
    (course / "train.txt").write_text("guid,tag\n" + "\n".join(kept) + "\n")
    records = read_course(course, "train").records
    (root / "shards").mkdir()
    per = -(-len(records) // 4)
    for s in range(4):
        with tarfile.open(root / "shards" / f"{s:05d}.tar", "w") as tar:
            for r in records[s * per:(s + 1) * per]:
                for name, raw in ((f"{r.guid}.jpg", r.image_path.read_bytes()), (f"{r.guid}.txt", r.text.encode()),
                                  (f"{r.guid}.cls", r.labels[0].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(raw)
                    tar.addfile(info, io.BytesIO(raw))
    table = pa.table({"id": [r.guid for r in records], "text": [r.text for r in records],
                      "label": [r.labels[0] for r in records], "image": [r.image_path.read_bytes() for r in records]})
    pq.write_table(table, root / "one-group.parquet")
    pq.write_table(table, root / "groups-of-100.parquet", row_group_size=100)
    return {"files (course folder)": course, "4 tars": root / "shards",
            "Parquet, 1 row group": root / "one-group.parquet",
            "Parquet, row groups of 100": root / "groups-of-100.parquet"}


def decode_rate(images: list, workers: int) -> float:
    """Images per second through extraction's decode, resize and crop alone (no model)."""
    from torch.utils.data import DataLoader

    from mmfuse.extract.image import ImageFiles

    loader = DataLoader(ImageFiles(images, 256, 224, True), batch_size=8, num_workers=workers)
    t0 = time.perf_counter()
    for _, _, errors in loader:
        assert not any(errors), errors
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    p = parser(__doc__)
    add_data(p)
    p.add_argument("--rows", type=int, default=800)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads for the model [default: torch's]")
    args = p.parse_args()
    if not (Path(args.data) / "train.txt").is_file():
        print(f"skip: no data set at {args.data}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(cpu_line() + f", {torch.get_num_threads()} torch threads")
    config = ImageExtractorConfig("efficientnet-lite0", batch_size=8, num_workers=0, optimize=False)
    model, prep, _ = load_image_encoder(config)
    with tempfile.TemporaryDirectory() as tmp:
        sources = write_formats(Path(args.data), args.rows, Path(tmp))
        results = {name: {"read": [], "image": [], "cpu": [], **{w: [] for w in args.workers}} for name in sources}
        for name, src in sources.items():  # warm: every byte in the page cache before any timing
            for r in read_data(src).records:
                r.image_path.read_bytes()
        for k in range(args.repeats):
            for name, src in sources.items():
                t0 = time.perf_counter()
                ds = read_data(src)
                results[name]["read"].append(time.perf_counter() - t0)
                images = [r.image_path for r in ds.records]
                for w in args.workers:
                    results[name][w].append(decode_rate(images, w))
                t0, c0 = time.perf_counter(), time.process_time()
                for _, _, errors in encode_images(images, model, prep, config, torch.device("cpu"), "fp32"):
                    assert not errors, errors
                results[name]["image"].append(time.perf_counter() - t0)
                results[name]["cpu"].append(time.process_time() - c0)
        print(f"\n{len(images)} mvsa rows, median of {args.repeats} rounds\n")
        print("| data | read_data s | " + " | ".join(f"decode img/s, {w} workers" for w in args.workers)
              + " | image loop: wall s (img/s) | vs files | image loop: CPU s | vs files |")
        print("|---|---:|" + "---:|" * len(args.workers) + "---:|---:|---:|---:|")
        first = results[next(iter(sources))]
        for name, res in results.items():
            wall, cpu = float(np.median(res["image"])), float(np.median(res["cpu"]))
            ratio = {k: np.median(np.array(res[k]) / np.array(first[k])) for k in ("image", "cpu")}  # same rounds
            print(f"| {name} | {np.median(res['read']):.2f} | "
                  + " | ".join(f"{np.median(res[w]):.0f}" for w in args.workers)
                  + f" | {wall:.1f} ({len(images) / wall:.0f}) | {ratio['image']:.2f}x"
                  + f" | {cpu:.1f} | {ratio['cpu']:.2f}x |")


if __name__ == "__main__":
    main()
