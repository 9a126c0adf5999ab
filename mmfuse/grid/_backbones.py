"""A grid over backbones: several caches of the same rows (``mmfuse grid A.h5 B.h5``), each extracted with
other backbones, crossed as (text cache, image cache) pairs, so that the text of one backbone meets the images
of another (MiniLM's text with CLIP's images). :class:`Backbones` holds the caches (paths and identities: it
travels to worker processes and Dask workers) and the pairs, each named readably from the models
(``all-MiniLM-L6-v2 + clip-vit-b32``); every configuration of the grid runs on every pair as a
:class:`~mmfuse.grid._spec.GridCell`."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cache import FeatureCache
from ..errors import MmfuseError
from ..heads import HeadConfig
from ..heads.features import check_same_rows, modality_identity, resolve_feature
from ._spec import GridCell

# which pairs a grid over several caches crosses: all (every text cache with every image cache), same (each
# cache's own text and images), or a comma list of TEXT:IMAGE, each a cache's file stem or its position (1, 2, ..)
PAIRS = ("all", "same")


@dataclass(frozen=True)
class Backbones:
    """The caches of a grid over backbones (paths and identities, in the order given) and its pairs:
    (name, text cache index, image cache index), the first cache's rows and folds for all."""

    paths: tuple[str, ...]
    identities: tuple[str, ...]
    pairs: tuple[tuple[str, int, int], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.pairs]

    def sides(self, backbone: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """((text cache path, identity), (image cache path, identity)) of the pair named ``backbone``."""
        for name, t, i in self.pairs:
            if name == backbone:
                return (self.paths[t], self.identities[t]), (self.paths[i], self.identities[i])
        raise MmfuseError(f"no backbone pair {backbone!r} in this grid (it has {', '.join(self.names)})")

    def cells(self, configs: list[HeadConfig]) -> list[GridCell]:
        """Every configuration on every pair, pair by pair."""
        return [GridCell(**asdict(c), backbone=name)
                for name in self.names for c in configs]

    def describe(self) -> str:
        """One markdown line per pair: its name, and which cache its text and its images come from."""
        return "\n".join(f"- `{name}`: text from {self.paths[t]}, images from {self.paths[i]}"
                         for name, t, i in self.pairs)

    def to_json(self) -> dict:
        return {"caches": list(self.paths), "identities": list(self.identities),
                "pairs": {name: [t, i] for name, t, i in self.pairs}}

    @classmethod
    def from_json(cls, data: dict) -> "Backbones":
        return cls(tuple(data["caches"]), tuple(data["identities"]),
                   tuple((name, int(t), int(i)) for name, (t, i) in data["pairs"].items()))

    def check(self, grid: Path) -> None:
        """Refuse caches that no longer hold the features the grid ran on (re-extracted)."""
        for path, identity in zip(self.paths, self.identities):
            if FeatureCache(path).identity != identity:
                raise MmfuseError(f"{path} no longer holds the features grid {grid} was run on (re-extracted?): "
                                  "run the grid again")


def _label(provenance: dict, modality: str, stem: str) -> str:
    """A short readable name of a cache's backbone for one modality: the model's last path part."""
    model = str((provenance.get(modality) or {}).get("model") or "").rstrip("/")
    name = Path(model).name if model else stem
    return re.sub(r"[|,\s`]+", "-", name).strip("-") or stem


def _labels(caches: list[FeatureCache], modality: str) -> list[str]:
    """Each cache's name for ``modality``; caches whose models share a name but not their features get
    ``@stem`` (or ``@position`` where stems are the same too) added."""
    labels = [_label(c.provenance, modality, c.path.stem) for c in caches]
    ids = [tuple(sorted(modality_identity(c.provenance, modality).items())) for c in caches]
    stems = [c.path.stem for c in caches]
    out = []
    for k, label in enumerate(labels):
        twins = [j for j, other in enumerate(labels) if other == label and ids[j] != ids[k]]
        if twins:
            unique = len({stems[j] for j in twins} | {stems[k]}) == len(twins) + 1
            label += f"@{stems[k] if unique else k + 1}"
        out.append(label)
    return out


def _chosen(spec: str, caches: list[FeatureCache]) -> list[tuple[int, int]]:
    n = len(caches)
    if spec == "all":
        return [(t, i) for t in range(n) for i in range(n)]
    if spec == "same":
        return [(k, k) for k in range(n)]
    stems = [c.path.stem for c in caches]

    def index(part: str) -> int:
        part = part.strip()
        if part.isdigit() and 1 <= int(part) <= n:
            return int(part) - 1
        if stems.count(part) == 1:
            return stems.index(part)
        raise MmfuseError(f"--pairs: {part!r} is not one of the caches (a file stem: {', '.join(stems)}, or a "
                          f"position 1 to {n})")

    pairs = []
    for item in spec.split(","):
        if item.count(":") != 1:
            raise MmfuseError(f"--pairs takes all, same or a comma list of TEXT:IMAGE cache stems, not {item!r}")
        pairs.append(tuple(index(part) for part in item.split(":")))
    return pairs


def open_backbones(caches: list[str | Path], pairs: str = "all") -> tuple[Backbones, list[FeatureCache]]:
    """(Backbones, the caches opened) of a grid over ``caches``: they must hold the same rows (guids in order,
    data fingerprint, labels; else one line naming both files); ``pairs``: all, same or TEXT:IMAGE,... A pair
    whose text and images are extracted like an earlier pair's (the same backbones in two caches) is left out."""
    paths = [Path(c) for c in caches]
    seen = {}
    for p in paths:
        if p.resolve() in seen:
            raise MmfuseError(f"{p} is given twice: give each cache once")
        seen[p.resolve()] = p
    opened = [FeatureCache(p) for p in paths]
    check_same_rows(opened)
    texts, images = _labels(opened, "text"), _labels(opened, "image")
    chosen, keys = [], set()
    for t, i in _chosen(pairs, opened):
        key = (tuple(sorted(modality_identity(opened[t].provenance, "text").items())),
               tuple(sorted(modality_identity(opened[i].provenance, "image").items())))
        if key not in keys:
            keys.add(key)
            chosen.append((f"{texts[t]} + {images[i]}", t, i))
    return Backbones(tuple(map(str, paths)), tuple(c.identity for c in opened), tuple(chosen)), opened


def pair_dims(source, row: dict, opened: dict[str, FeatureCache]) -> tuple[int, int]:
    """(text, image) widths of the vectors a result row's head reads: from the single cache ``source``, or
    from its backbone pair's caches (``source``: Backbones); ``opened`` keeps the caches read, by path."""
    if isinstance(source, Backbones):
        (tp, _), (ip, _) = source.sides(row["backbone"])
    else:
        tp = ip = str(source)
    for path in (tp, ip):
        if path not in opened:
            opened[path] = FeatureCache(path)
    t, i = opened[tp], opened[ip]
    text = resolve_feature(t, "text", row.get("text_feature", "auto"))
    image = resolve_feature(i, "image", row.get("image_feature", "auto"))
    return t.dims[f"text/{text}"], i.dims[f"image/{image}"]
