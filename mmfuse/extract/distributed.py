"""Sharded extraction across processes, GPUs and machines: the shard a process extracts (from
``--shard RANK/WORLD`` or torchrun's environment) and the merge rank 0 runs once every shard is done."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from ..shards import merge_shards, shard_path
from ..errors import MmfuseError


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'1/4' -> (1, 4); None -> torchrun's (RANK, WORLD_SIZE) when it started more than one process."""
    if text is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return (int(os.environ.get("RANK", "0")), world) if world > 1 else None
    try:
        rank, world = (int(v) for v in text.split("/"))
    except ValueError:
        raise MmfuseError(f"--shard {text!r}: write RANK/WORLD, e.g. 0/2") from None
    if world < 1 or not 0 <= rank < world:
        raise MmfuseError(f"--shard {text}: the rank must be 0..WORLD-1")
    return rank, world


def merge_after_barrier(out: str | Path, shard: tuple[int, int], overwrite: bool = False) -> Path | None:
    """Under torchrun: wait until every rank has finished its shard, then rank 0 merges them into ``out``
    (returned; None on the other ranks). The barrier runs on gloo, so it needs no GPU."""
    import torch.distributed as dist

    if "MASTER_ADDR" not in os.environ or not dist.is_available():
        raise MmfuseError("--merge waits for every shard, so it needs torchrun (which starts the ranks together); "
                          f"after plain processes, run: mmfuse merge {shard_path(out, 0, shard[1]).name.replace('-0-', '-*-')} "
                          f"--out {out}")
    dist.init_process_group("gloo", timeout=timedelta(days=1))  # the slowest shard may take hours
    try:
        dist.barrier()
        if shard[0] == 0:
            return merge_shards([shard_path(out, r, shard[1]) for r in range(shard[1])], out, overwrite)
        return None
    finally:
        dist.barrier()  # the others wait for the merge, so torchrun reports the job done only once it is
        dist.destroy_process_group()
