"""Cost against rows: train-head, a grid, ensemble and predict on synthetic caches of 10k, 100k and 1M rows.

    python bench/speed/rows.py [--rows 10000,100000,1000000] [--tmp /tmp] [--head-epochs 5] [--epochs 1]
                               [--folds 2] [--top 3] [--threads N] [--keep]

For each size, a synthetic cache is written through the cache's own writer (``CacheWriter``): a
minilm-shaped text/cls and text/mean (384-d) and a lite0-shaped image/pooled (1280-d), float32, three
classes in mvsa's proportions (60/30/10), each row its class's mean plus unit noise (the means a few
tenths apart in both modalities, so the labels are learnable from either and best from both). Then each
command runs as its own process (``python -m mmfuse.cli ...``), timed, with its peak memory:

- ``train-head --fusion concat --epochs H`` (``--head-epochs``, default 5: a fixed number of epochs, so
  that the time compares across sizes; 0: train-head's own default, up to 30 with early stopping) and
  ``--fusion logreg`` (its defaults: C 1e-3); both with the default 20% validation part;
- ``grid --jobs 2``: the default grid's 12 configurations (concat, weighted, gated, late x lr 1e-4, 3e-4,
  1e-3) with ``--folds F --epochs E`` (default 2 folds, 1 epoch: 24 fits; the same at every size);
- ``ensemble`` of the grid's top ``--top`` configurations (each saved as its F fold models, refit);
- ``predict`` with the concat run on the same cache (every row).

Memory is the peak, over the command's run, of the summed proportional set size (PSS, sampled every 0.2 s
from /proc/PID/smaps_rollup) of the command's process and all its children: pages shared between
processes (the grid's memory-mapped features) are counted once between them, so this is what the
command takes from the machine. Beside it, the largest peak RSS of any one of its processes (getrusage).
Prints the CPU line, a table per command and the growth from one size to the next (seconds and MB per
1k rows, and the ratio of each to the size's). ``--threads N`` runs every command with N OpenMP threads
(``OMP_NUM_THREADS``; the grid's workers use one each anyway): on a machine shared with other jobs, torch's
threads wait on each other. Linux only (/proc). The caches go in ``--tmp`` and are deleted after each size
(``--keep`` keeps them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import cpu_line, parser
from mmfuse.cache import CacheWriter

DIMS = {"text": 384, "image": 1280}  # minilm's text width, efficientnet-lite0's image width
SHARES = (0.6, 0.3, 0.1)  # mvsa's positive / neutral / negative imbalance
LABELS = ("positive", "neutral", "negative")
BLOCK = 65536  # rows generated and written at a time
COMMANDS = ("train-head concat", "train-head logreg", "grid", "ensemble", "predict")


def write_cache(path: Path, n: int, seed: int = 0) -> Path:
    """A finished synthetic cache of ``n`` rows (see the module's doc), written BLOCK rows at a time."""
    rng = np.random.default_rng(seed)
    means = {m: rng.normal(0, s, (3, d)).astype(np.float32) for (m, d), s in zip(DIMS.items(), (0.05, 0.03))}
    y = rng.choice(3, size=n, p=SHARES).astype(np.int64)
    prov = {"text": {"model": "synthetic-minilm", "weights_sha256": "synthetic", "revision": None, "max_length": 64,
                     "source": "bench/speed/rows.py", "architecture": "BertModel"},
            "image": {"model": "synthetic-lite0", "weights": "synthetic", "preprocessing": {"crop": 224}},
            "data": {"root": str(path.parent), "split": "train", "fingerprint": f"{n:064d}", "encodings": {}},
            "precision": "fp32", "store_dtype": "float32", "device": "cpu", "versions": {}, "created": "bench"}
    w = CacheWriter.open(path, guids=[f"r{i}" for i in range(n)], labels=y, label_names=LABELS, multilabel=False,
                         skipped={}, store_dtype="float32", provenance=prov, identity=f"rows-{n}-{seed}",
                         dims={"text/cls": DIMS["text"], "text/mean": DIMS["text"], "image/pooled": DIMS["image"]})
    try:
        for lo in range(0, n, BLOCK):
            rows = np.arange(lo, min(n, lo + BLOCK))
            text = means["text"][y[rows]] + rng.standard_normal((len(rows), DIMS["text"]), np.float32)
            image = means["image"][y[rows]] + rng.standard_normal((len(rows), DIMS["image"]), np.float32)
            w.write("text", rows, {"text/cls": text, "text/mean": text})
            w.write("image", rows, {"image/pooled": image})
        assert w.finish()
    finally:
        w.close()
    return path


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pss_mb(pids: list[int]) -> float:
    """Summed PSS (MB) of ``pids``."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total / 1024


def run(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd``; its seconds, peak summed PSS of its process tree (MB) and largest one-process RSS (MB:
    ``wait4``'s, the command's process and the children it waited for)."""
    t0, peak = time.perf_counter(), 0.0
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, pss_mb(tree(proc.pid)))
            time.sleep(0.2)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return {"seconds": seconds, "pss_mb": peak, "rss_mb": usage.ru_maxrss / 1024}


def measure(n: int, root: Path, args) -> dict:
    cache = write_cache(root / f"rows-{n}.h5", n)
    cli = [sys.executable, "-m", "mmfuse.cli"]
    grid = ["--folds", str(args.folds), "--epochs", str(args.epochs), "--jobs", "2", "--no-progress"]
    head = ["--epochs", str(args.head_epochs)] if args.head_epochs else []
    cmds = {"train-head concat": ["train-head", cache, "--fusion", "concat", "--out", root / "concat", *head],
            "train-head logreg": ["train-head", cache, "--fusion", "logreg", "--out", root / "logreg"],
            "grid": ["grid", cache, "--out", root / "grid", *grid],
            "ensemble": ["ensemble", root / "grid", "--top", str(args.top), "--out", root / "ens"],
            "predict": ["predict", root / "concat", cache, "--out", root / "pred.txt"]}
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    out = {"rows": n, "cache_mb": cache.stat().st_size / 2**20,
           "read_mb": n * sum(DIMS.values()) * 4 / 2**20}  # the vectors a head reads, float32
    for name, cmd in cmds.items():
        out[name] = run([*cli, *map(str, cmd)], root / f"{name.replace(' ', '-')}.log", env)
        print(f"  {n} rows, {name}: {out[name]['seconds']:.1f} s, {out[name]['pss_mb']:.0f} MB", flush=True)
    for run_dir in ("concat", "logreg"):
        metrics = json.loads((root / run_dir / "metrics.json").read_text())
        out[f"{run_dir}_macro_f1"], out[f"{run_dir}_epochs"] = metrics["validation"]["macro_f1"], metrics["epochs_run"]
    return out


def report(results: list[dict], args) -> None:
    print(f"\n{cpu_line()}; train-head: {f'--epochs {args.head_epochs}' if args.head_epochs else 'the defaults'}; "
          f"grid: the default 12 configurations x {args.folds} folds, up to {args.epochs} epochs, --jobs 2; ensemble: "
          f"top {args.top}, fold models refit; predict: the concat run on the same cache"
          + (f"; OMP_NUM_THREADS={args.threads}" if args.threads else "") + "\n")
    print("| rows | cache MB | read MB | command | seconds | s per 1k rows | peak MB (PSS, all processes) | "
          "peak / cache | peak / read | largest one-process RSS MB |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for c in COMMANDS:
            m = r[c]
            print(f"| {r['rows']:,} | {r['cache_mb']:.0f} | {r['read_mb']:.0f} | {c} | {m['seconds']:.1f} | "
                  f"{1000 * m['seconds'] / r['rows']:.3f} | {m['pss_mb']:.0f} | {m['pss_mb'] / r['cache_mb']:.2f} | "
                  f"{m['pss_mb'] / r['read_mb']:.2f} | {m['rss_mb']:.0f} |")
    print("\nvalidation macro-F1 (learnable labels): " + "; ".join(
        f"{r['rows']:,} rows: concat {r['concat_macro_f1']:.3f} ({r['concat_epochs']} epochs), logreg "
        f"{r['logreg_macro_f1']:.3f}" for r in results))
    if len(results) < 2:
        return
    print("\ngrowth from one size to the next: x time and x memory for x rows; the marginal cost per 1k more rows\n")
    print("| command | rows | x rows | x seconds | x peak MB | marginal s per 1k rows | marginal MB per 1k rows |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for c in COMMANDS:
        for a, b in zip(results, results[1:]):
            k = (b["rows"] - a["rows"]) / 1000
            print(f"| {c} | {a['rows']:,} -> {b['rows']:,} | {b['rows'] / a['rows']:.0f} | "
                  f"{b[c]['seconds'] / a[c]['seconds']:.1f} | {b[c]['pss_mb'] / a[c]['pss_mb']:.1f} | "
                  f"{(b[c]['seconds'] - a[c]['seconds']) / k:.3f} | {(b[c]['pss_mb'] - a[c]['pss_mb']) / k:.2f} |")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rows", default="10000,100000,1000000", help="comma list of sizes [default: %(default)s]")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where the caches go [default: %(default)s]")
    ap.add_argument("--head-epochs", type=int, default=5, help="train-head concat's --epochs (0: its default, up to "
                    "30 with early stopping) [default: %(default)s]")
    ap.add_argument("--epochs", type=int, default=1, help="the grid's epochs [default: %(default)s]")
    ap.add_argument("--folds", type=int, default=2, help="the grid's folds [default: %(default)s]")
    ap.add_argument("--top", type=int, default=3, help="the ensemble's members [default: %(default)s]")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of every command [default: unset]")
    ap.add_argument("--keep", action="store_true", help="keep the caches and folders")
    args = ap.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        print("skip: needs Linux /proc/PID/smaps_rollup")
        sys.exit(0)
    results = []
    for n in (int(x) for x in args.rows.split(",")):
        root = Path(tempfile.mkdtemp(prefix=f"mmfuse-rows-{n}-", dir=args.tmp))
        try:
            results.append(measure(n, root, args))
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    report(results, args)


if __name__ == "__main__":
    main()
