"""What keeping a cache valid under SIGKILL costs, for the ways HDF5 users do it.

    python bench/speed/crash_safety.py [--rows 3199] [--repeats 3]

Writes the features of one extraction (text cls + mean 384-d, image 1280-d, float32; rows in
256-row chunks, a flush after each chunk, as ``CacheWriter`` does) four ways, and prints wall time,
bytes written (Linux ``/proc/self/io``) and whether metadata changed after creation (the bytes
outside the datasets' raw extents; a change means a kill during a flush can corrupt the file):

- late allocation: HDF5's default; chunks allocated on first write (the cache before version 3);
- SWMR: h5py's single-writer/multiple-reader mode (``libver="latest"``, ``swmr_mode = True``), which
  h5py documents as keeping the file readable by concurrent readers, the writer flushing in order;
- partial + checkpoints: late allocation into ``.partial``, copied to the real name every 4 chunks
  (a durable checkpoint) and renamed at the end;
- early allocation (mmfuse): every dataset's space allocated at creation, no fill values written.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import cpu_line, parser

DIMS = {"text/cls": 384, "text/mean": 384, "image/pooled": 1280}
CHUNK = 256


def io_bytes() -> int:
    d = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(d["wchar"])


def metadata(path: Path) -> bytes:
    from mmfuse.cache import metadata_bytes
    return metadata_bytes(path)


def create(path: Path, n: int, early: bool, **file_kw) -> h5py.File:
    f = h5py.File(path, "w", **file_kw)
    for name, d in DIMS.items():
        kw = {}
        if early:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            kw = dict(dcpl=dcpl, fill_time="never")
        f.create_dataset(name, shape=(n, d), dtype="float32", chunks=(CHUNK, d), **kw)
    f.create_dataset("done", data=np.zeros(n, bool))
    return f


def write(f: h5py.File, n: int, on_chunk=None) -> None:
    rng = np.random.default_rng(0)
    for k, lo in enumerate(range(0, n, CHUNK)):
        hi = min(n, lo + CHUNK)
        for name, d in DIMS.items():
            f[name][lo:hi] = rng.standard_normal((hi - lo, d), dtype=np.float32)
        f["done"][lo:hi] = True
        f.flush()
        if on_chunk:
            on_chunk(k)


class Timed:
    """Seconds and bytes written inside ``with timed:`` blocks only (the metadata checks stay outside)."""

    def __init__(self):
        self.seconds, self.bytes = 0.0, 0

    def __enter__(self):
        self.t0, self.w0 = time.perf_counter(), io_bytes()

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self.t0
        self.bytes += io_bytes() - self.w0


def run(way: str, folder: Path, n: int) -> tuple[float, int, bool]:
    path, timed = folder / "c.h5", Timed()
    early, file_kw = way.startswith("early"), {"libver": "latest"} if way == "SWMR" else {}
    target = folder / "c.h5.partial" if way == "partial + checkpoints" else path
    with timed:
        create(target, n, early, **file_kw).close()
    before = metadata(target)
    with timed:
        with h5py.File(target, "r+", **file_kw) as f:
            if way == "SWMR":
                f.swmr_mode = True
            checkpoint = (lambda k: shutil.copyfile(target, path) if k % 4 == 3 else None) if target != path else None
            write(f, n, checkpoint)
    changed = metadata(target) != before
    if target != path:
        with timed:
            target.replace(path)
    return timed.seconds, timed.bytes, changed


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rows", type=int, default=3199)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not Path("/proc/self/io").exists():
        print("skip: needs Linux /proc/self/io")
        return
    mib = args.rows * sum(DIMS.values()) * 4 / 2 ** 20
    print(f"{args.rows} rows, {mib:.1f} MiB of features, chunks of {CHUNK} rows; {cpu_line()}; "
          f"h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}\n")
    print("| way | wall (ms, median) | written per MiB stored | metadata changed after creation |\n|---|---:|---:|---|")
    for way in ("late allocation", "SWMR", "partial + checkpoints", "early allocation (mmfuse)"):
        results = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                results.append(run(way, Path(tmp), args.rows))
        ms = np.median([r[0] for r in results]) * 1000
        print(f"| {way} | {ms:.0f} | {np.median([r[1] for r in results]) / 2 ** 20 / mib:.2f}x | "
              f"{'yes' if results[0][2] else 'no'} |")


if __name__ == "__main__":
    main()
