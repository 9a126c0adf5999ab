"""Sharded extraction's files: which rows a shard extracts, where its cache goes, and the merge of
the shards into the cache one process would have written (``mmfuse merge``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cache import CHUNK_ROWS, MODALITIES, CacheWriter, FeatureCache, _open, feature_mismatch, partial_path
from .errors import CacheError, MmfuseError


SHARDINGS = ("round-robin", "contiguous", "whole-files")  # how a data set's rows are dealt to the shards


def shard_rows(n: int, rank: int, world: int, how: str = "round-robin", groups=None) -> np.ndarray:
    """The rows (ascending) of an n-row data set that shard ``rank`` of ``world`` extracts: every
    world-th row from ``rank`` (round-robin), the rank-th of ``world`` near-equal contiguous runs, or
    (whole-files) the rows of every world-th input file from ``rank``; ``groups``: each row's input file
    (tar shard, Parquet file), so that a rank reads whole files of its own."""
    if world < 1 or not 0 <= rank < world:
        raise MmfuseError(f"--shard {rank}/{world}: the rank must be 0..{world - 1} and the world at least 1")
    if how not in SHARDINGS:
        raise MmfuseError(f"unknown sharding {how!r}: choose {', '.join(SHARDINGS)}")
    if how == "whole-files":
        files = np.unique(groups) if groups is not None else []
        if len(files) < 2:
            raise MmfuseError("--sharding whole-files deals input files (tar shards, Parquet files) to the ranks: "
                              "this data set is not several such files; use round-robin or contiguous")
        if world > len(files):
            raise MmfuseError(f"--shard {rank}/{world}: {len(files)} input files cannot give each of {world} shards "
                              "a file; use fewer shards, or --sharding round-robin")
        return np.flatnonzero(np.isin(np.asarray(groups), files[rank::world]))
    if world > n:
        raise MmfuseError(f"--shard {rank}/{world}: {n} rows cannot give each of {world} shards a row; use fewer shards")
    if how == "round-robin":
        return np.arange(rank, n, world)
    bounds = np.linspace(0, n, world + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1])


def shard_path(out: str | Path, rank: int, world: int) -> Path:
    """``features/train.h5`` -> ``features/train.shard-0-of-2.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{rank}-of-{world}{out.suffix}")


SIDECARS = (".partial", ".creating", ".lock", ".owner")  # an unfinished cache, a layout being made, a writer's
#                                                         lock (and an older version's lock owner file)


def shard_files(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(caches to merge, files left out) among ``paths``, as a shell glob like ``sh.shard-*`` gives them: the
    sidecar files an extraction keeps beside a cache are left out; every other file must be a shard."""
    keep, other = [], []
    for p in map(Path, paths):
        (other if p.suffix in SIDECARS else keep).append(p)
    return keep, other


def merge_shards(paths: list[str | Path], out: str | Path, overwrite: bool = False, log=print) -> Path:
    """Merge the shards of one extraction into one cache in the data set's order, as one process would
    have written it (the identity of the whole, so ``extract`` sees it as finished).

    Refused, naming the file: a file that is not a shard, an incomplete shard, a shard of another
    extraction (models, weights, preprocessing, data or numerics differ), two shards of one rank, a
    missing rank, and rows covered twice or not at all."""
    paths, ignored = shard_files(paths)
    if ignored:
        log(f"ignored {len(ignored)} file(s) that are not shard caches (locks, unfinished extractions): "
            f"{', '.join(map(str, ignored[:5]))}"
            f"{' ...' if len(ignored) > 5 else ''}")
    if not paths:
        raise CacheError("no shards to merge: pass the shard caches (NAME.shard-RANK-of-WORLD.h5)")
    shards = []
    for p in paths:
        cache = FeatureCache(p, allow_incomplete=True)
        with _open(p, "r") as f:
            if "shard" not in f.attrs:
                raise CacheError(f"{p} is not a shard (extracted without --shard): nothing to merge")
            spec = json.loads(f.attrs["shard"])
            rows = f["shard_rows"][:]
        if not cache.complete:
            raise CacheError(f"{p} (shard {spec['rank']} of {spec['world']}) is incomplete: re-run its "
                             f"extract command with --shard {spec['rank']}/{spec['world']} to finish it")
        shards.append((p, spec, rows, cache))
    p0, s0, _, c0 = shards[0]
    for p, spec, _, cache in shards[1:]:
        if spec["identity"] != s0["identity"] or spec["world"] != s0["world"]:
            diff = feature_mismatch(c0.provenance, cache.provenance) or [
                k for k in ("data", "numerics") if cache.provenance.get(k) != c0.provenance.get(k)] or ["world size"]
            raise CacheError(f"{p} is a shard of another extraction than {p0} (differs in: {', '.join(diff)}): "
                             "merge the shards of one extract command")
    world, n = s0["world"], s0["total"]
    by_rank: dict[int, Path] = {}
    for p, spec, _, _ in shards:
        if spec["rank"] in by_rank:
            raise CacheError(f"{p} and {by_rank[spec['rank']]} are both shard {spec['rank']} of {world}")
        by_rank[spec["rank"]] = p
    missing = sorted(set(range(world)) - set(by_rank))
    if missing:
        expected = [shard_path(Path(out), r, world) for r in missing]
        unfinished = [p for p in expected if partial_path(p).is_file()]
        raise CacheError(f"shard(s) {', '.join(map(str, missing))} of {world} missing: expected "
                         + ", ".join(map(str, expected))
                         + (f" ({', '.join(p.name for p in unfinished)} unfinished: re-run their extract commands)"
                            if unfinished else ""))
    covered = np.bincount(np.concatenate([rows for _, _, rows, _ in shards]), minlength=n)
    if covered.max() > 1 or covered.min() < 1:
        twice, never = np.flatnonzero(covered > 1), np.flatnonzero(covered == 0)
        raise CacheError(f"the shards do not cover the {n} rows exactly once ({len(twice)} covered twice, e.g. row "
                         f"{twice[:1].tolist()}; {len(never)} not at all): were they cut with different --sharding?")
    return _write_merged([(rows, cache) for _, _, rows, cache in shards], Path(out), s0, overwrite)


def _write_merged(shards, out: Path, spec: dict, overwrite: bool) -> Path:
    n = spec["total"]
    c0 = shards[0][1]
    guids, labels = [""] * n, None
    skipped: dict[int, str] = {}
    where = np.empty((n, 2), np.int64)  # row of the whole -> (shard, row in its file)
    for s, (rows, cache) in enumerate(shards):
        with _open(cache.path, "r") as f:
            all_guids = [g.decode() if isinstance(g, bytes) else g for g in f["guid"][:]]
            lab, skip = f["label"][:], f["skipped"][:]
            reasons = f["skip_reason"][:]
        if labels is None:
            labels = np.empty((n, *lab.shape[1:]), lab.dtype)
        labels[rows] = lab
        for local, row in enumerate(rows):
            guids[row] = all_guids[local]
            if skip[local]:
                skipped[int(row)] = reasons[local].decode("utf-8", "replace").rstrip("\0")
        where[rows, 0], where[rows, 1] = s, np.arange(len(rows))
    provenance = {**c0.provenance, "shards": {"world": spec["world"], "how": spec["how"]}}
    store_dtype = c0.dtypes["image/pooled"]
    writer = CacheWriter.open(out, guids=guids, labels=labels, label_names=c0.label_names, multilabel=c0.multilabel,
                              skipped=skipped, dims=c0.dims, store_dtype=store_dtype, provenance=provenance,
                              identity=spec["identity"], overwrite=overwrite, extras=c0.extras)
    try:
        files = [_open(cache.path, "r") for _, cache in shards]
        try:
            block = 16 * CHUNK_ROWS  # rows of the whole read and written at a time: memory stays bounded
            for start in range(0, n, block):
                rows = np.arange(start, min(n, start + block))
                rows = rows[~np.isin(rows, list(skipped))]
                for m in MODALITIES:
                    feats = {name: np.empty((len(rows), c0.dims[name]), store_dtype) for name in c0.dims
                             if name.split("/")[0] == m}
                    for s, f in enumerate(files):
                        take = np.flatnonzero(where[rows, 0] == s)
                        for name in feats:
                            feats[name][take] = f[name][where[rows[take], 1]] if len(take) else 0
                    writer.write(m, rows, feats)
        finally:
            for f in files:
                f.close()
        if not writer.finish():
            raise CacheError(f"{out}: the merged cache is not complete (a bug: please report it)")
    finally:
        writer.close()
    return out
