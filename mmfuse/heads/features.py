"""What a head reads: :class:`FeatureSet` (features, labels and provenance from a cache, or text from one
cache and images from another), which cached vectors it reads (:func:`resolve_feature`), the check that
features were extracted like a head's training features (:func:`check_compatible`), with their labels mapped
into the head's order (:func:`align_labels`), and, given several caches of the same rows, the cache each
modality is read from (:func:`pick_caches`, :func:`features_for`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import FeatureCache, feature_mismatch
from ..errors import CacheError
from ..identity import feature_identity
from .config import IMAGE_FEATURES, TEXT_FEATURES
from .rows import view

IMAGE_FEATURE = "image/pooled"  # the image vector every cache holds (what heads read before image_feature existed)
OPTIONS = {"text": ("--text-feature", TEXT_FEATURES), "image": ("--image-feature", IMAGE_FEATURES)}


def resolve_feature(cache: FeatureCache, modality: str, requested: str = "auto") -> str:
    """The cached vector of ``modality`` ("text" or "image") a head reads from ``cache``: ``requested`` itself
    (cls, mean, pooled, proj), or for ``auto``: ``proj`` where the cache holds a two-tower model's projected,
    aligned embedding; else, text: the pooling the encoder was trained with where its folder says
    (sentence-transformers), else cls, when the cache holds that vector, else pooled; image: pooled. A vector
    the cache lacks is a one-line CacheError naming the cache and the vectors it holds."""
    from ..extract.text import resolve_text_feature

    option, allowed = OPTIONS[modality]
    if requested not in allowed:
        raise CacheError(f"{option} must be one of {', '.join(allowed)}, not {requested!r}")
    held = sorted(n.split("/", 1)[1] for n in cache.dims if n.startswith(modality + "/"))
    name = requested
    if requested == "auto":
        if "proj" in held:
            name = "proj"
        elif modality == "text":
            name = resolve_text_feature("auto", cache.provenance.get("text", {}))
            name = name if name in held else "pooled"
        else:
            name = "pooled"
    if name not in held:
        fix = f"choose {option} {' or '.join(held)}" if held else f"extract its {modality} features again"
        raise CacheError(f"{cache.path} has no {modality}/{name} features" + (f" ({option} auto)" if requested == "auto"
                         else "") + f"; it holds {', '.join(sorted(cache.dims))}: {fix}")
    return name


def open_cache(cache) -> FeatureCache:
    """A FeatureCache (opened from a path), refused when it has no usable rows."""
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    if not len(cache):
        raise CacheError(f"{cache.path} has no usable rows (all {len(cache.skipped)} were skipped)")
    return cache


@dataclass
class FeatureSet:
    """The features a head reads: text (N, Dt), image (N, Di), labels (N,) or None. The features are
    arrays (in memory, or memory-mapped: :meth:`FeatureCache.shared`) or :class:`~mmfuse.heads.rows.Rows` of
    them (:meth:`view`: some rows, not copied).

    Row-indexable like an array (``shape``, ``X[rows]``, a view), so scikit-learn's splitters and
    ``cross_val_score`` / ``GridSearchCV`` can pass subsets of it to a :class:`Head`.
    """

    text: np.ndarray
    image: np.ndarray
    y: np.ndarray | None
    guids: list[str]
    label_names: tuple[str, ...]
    provenance: dict | None = None
    source: str = ""
    text_feature: str = ""  # which text vector (cls, mean, pooled or proj; ``auto`` resolved)
    image_feature: str = ""  # which image vector (pooled, cls, mean or proj; ``auto`` resolved)
    prompts: dict | None = None  # the class prompts a two-tower cache holds (extract --class-prompts): their
    #                              "embeddings" (C, D), "logit_scale" and "logit_bias", for the zeroshot head

    @classmethod
    def from_cache(cls, cache: FeatureCache | str | Path, text_feature: str = "auto",
                   image_feature: str = "auto", shared: str | Path | None = None) -> "FeatureSet":
        """Both modalities from one cache (:func:`resolve_feature` names the vectors), read into memory, or
        with ``shared`` (a folder) memory-mapped from float32 copies kept there (:meth:`FeatureCache.shared`:
        processes reading the same cache this way share one copy per machine)."""
        cache = open_cache(cache)
        y = cache.labels if cache.labelled else None
        tname, iname = resolve_feature(cache, "text", text_feature), resolve_feature(cache, "image", image_feature)
        return cls(_read(cache, f"text/{tname}", shared), _read(cache, f"image/{iname}", shared), y,
                   list(cache.guids), cache.label_names, cache.provenance, str(cache.path), tname, iname,
                   prompts_of(cache))

    @classmethod
    def from_caches(cls, text_cache: FeatureCache | str | Path, image_cache: FeatureCache | str | Path,
                    text_feature: str = "auto", image_feature: str = "auto",
                    shared: str | Path | None = None) -> "FeatureSet":
        """The text features of ``text_cache`` with the image features of ``image_cache``, two caches of the
        same rows (:func:`check_same_rows`), e.g. MiniLM's text with CLIP's images. The provenance is
        composed (:func:`compose_provenance`), so a head trained on it records both backbones. The same
        cache twice: :meth:`from_cache`. ``shared``: as :meth:`from_cache`'s."""
        t, i = open_cache(text_cache), open_cache(image_cache)
        if t.path.resolve() == i.path.resolve():
            return cls.from_cache(t, text_feature, image_feature, shared)
        check_same_rows([t, i])
        tname, iname = resolve_feature(t, "text", text_feature), resolve_feature(i, "image", image_feature)
        return cls(_read(t, f"text/{tname}", shared), _read(i, f"image/{iname}", shared),
                   t.labels if t.labelled else None,
                   list(t.guids), t.label_names, compose_provenance(t.provenance, i.provenance),
                   f"{t.path} + {i.path}", tname, iname, prompts_of(t, i))

    def __len__(self) -> int:
        return len(self.guids)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.guids), self.text.shape[1] + self.image.shape[1]

    def __getitem__(self, rows) -> "FeatureSet":
        if isinstance(rows, tuple):  # scikit-learn indexes rows as X[rows, ...]
            rows = rows[0]
        idx = np.arange(len(self))[rows]
        return self.view(np.atleast_1d(idx))

    def subset(self, idx: np.ndarray) -> "FeatureSet":
        """Rows ``idx`` as a FeatureSet of their own (the features copied)."""
        return dataclasses.replace(self, text=np.asarray(self.text[idx]), image=np.asarray(self.image[idx]),
                                   y=None if self.y is None else self.y[idx], guids=[self.guids[i] for i in idx])

    def view(self, idx: np.ndarray) -> "FeatureSet":
        """Rows ``idx`` without copying their features (:class:`~mmfuse.heads.rows.Rows`): how a head's
        training part, validation part and a grid's folds are taken, so the features are held once."""
        idx = np.arange(len(self))[idx]
        return dataclasses.replace(self, text=view(self.text, idx), image=view(self.image, idx),
                                   y=None if self.y is None else self.y[idx], guids=[self.guids[i] for i in idx])


def _read(cache: FeatureCache, name: str, shared: str | Path | None) -> np.ndarray:
    """A cache's features ``name``: read into memory, or memory-mapped from a copy in the folder ``shared``."""
    return cache.features(name) if shared is None else cache.shared(name, shared)


def prompts_of(cache: FeatureCache, image_cache: FeatureCache | None = None) -> dict | None:
    """The class prompts' embeddings and logit scale a cache holds, or None; ``image_matches``: whether the
    image vectors (of ``image_cache``, default the same cache) come from the model that embedded the prompts."""
    zs = cache.provenance.get("zeroshot")
    if not zs or "zeroshot/text" not in cache.extras:
        return None
    weights = ((image_cache or cache).provenance.get("image", {}).get("weights") or {})
    made_by = zs.get("weights_sha256")
    matches = made_by is None or not isinstance(weights, dict) or weights.get("sha256") in (None, made_by)
    return {"embeddings": cache.extras["zeroshot/text"], "prompts": zs["prompts"], "logit_scale": zs["logit_scale"],
            "logit_bias": zs["logit_bias"], "image_matches": bool(matches)}


def _few(names, k: int = 6) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def check_compatible(provenance: dict | None, dims: dict, label_names, X: FeatureSet,
                     subset: bool = False) -> FeatureSet:
    """Raise CacheError naming the field where X's feature identity differs from the training cache's
    (models, weights, pooling, max length, preprocessing, precision, store dtype, library versions),
    or its dims or labels differ. Returns X with its labels in ``label_names``' order; with ``subset``, a
    cache naming only some of them (a test split without a rare label) is mapped by name."""
    problems = feature_mismatch(provenance or {}, X.provenance or {})
    x_dims = {"text": X.text.shape[1], "image": X.image.shape[1]}
    if x_dims != dims:
        problems.append(f"feature dims: {dims} vs {x_dims}")
    names, own = tuple(label_names), tuple(X.label_names)
    unknown, missing = [x for x in own if x not in names], [x for x in names if x not in own]
    bad_labels = bool(own) and own != names and bool(unknown or not subset)  # an unlabelled CSV may name none
    if bad_labels:
        detail = ([f"{_few(unknown)} unknown to the head"] if unknown else []) + \
                 ([f"{_few(missing)} missing from the cache"] if missing and not subset else [])
        problems.insert(0, "labels: " + (", ".join(detail) or "the same names in another order"))
    if problems:
        fix = f" and --label-names {','.join(names)} (the training set's label names)" if bad_labels else ""
        fix += _two_caches(provenance)
        raise CacheError(f"{X.source} was not extracted like the head's training features (head vs cache: "
                         + "; ".join(problems[:3]) + f"): extract it with the same options{fix}")
    return align_labels(X, names) if own else X


def align_labels(X: FeatureSet, label_names) -> FeatureSet:
    """X with its labels mapped by name into ``label_names``' order: a label the cache lacks is an
    all-negative column (multi-label), a class no row has (single-label); unlabelled rows stay -1."""
    names = tuple(label_names)
    if tuple(X.label_names) == names or not X.label_names:
        return X
    idx, y = np.array([names.index(x) for x in X.label_names]), X.y
    if y is not None and y.ndim == 2:
        y = np.zeros((len(X.y), len(names)), X.y.dtype)  # (N, L_head)
        y[:, idx] = X.y
        y[(X.y < 0).any(1)] = -1
    elif y is not None:
        y = np.where(y >= 0, idx[np.maximum(y, 0)], y)
    return dataclasses.replace(X, y=y, label_names=names)


# --- several caches of the same rows: text from one, images from another ---------------------------------

def check_same_rows(caches: list[FeatureCache]) -> None:
    """Refuse caches that do not hold the same rows as the first: the same guids in the same order, the
    same data fingerprint (provenance["data"]["fingerprint"]) and the same labels; one line naming both files."""
    first = caches[0]
    for other in caches[1:]:
        where = f"{first.path} and {other.path} do not hold the same rows"
        fix = ": extract every backbone from the same data split (and the same rows skipped)"
        if first.guids != other.guids:
            k = next((k for k, (a, b) in enumerate(zip(first.guids, other.guids)) if a != b),
                     min(len(first.guids), len(other.guids)))
            a = first.guids[k] if k < len(first.guids) else "none (it ends)"
            b = other.guids[k] if k < len(other.guids) else "none (it ends)"
            raise CacheError(f"{where} ({len(first)} vs {len(other)} rows; row {k + 1}: guid {a} vs {b}){fix}")
        fa, fb = (str((c.provenance.get("data") or {}).get("fingerprint")) for c in (first, other))
        if fa != fb:
            raise CacheError(f"{where} (data fingerprint {fa[:12]} vs {fb[:12]}: other data){fix}")
        if tuple(first.label_names) != tuple(other.label_names) or not np.array_equal(first.labels, other.labels):
            raise CacheError(f"{where} (their labels differ){fix}")


# provenance entries besides the two modalities' own that every feature of a cache depends on are the rest
# of its top level (precision, store dtype, library versions, ...); "data" is the rows, checked apart
_OWN = ("text", "image", "data")


def compose_provenance(text: dict, image: dict) -> dict:
    """The provenance of text features from a cache with provenance ``text`` beside image features from one
    with provenance ``image``: "text", "data" and the rest from the text cache; "image" from the image cache,
    with the image cache's own top-level entries (precision, store dtype, versions) inside it as
    ``image["shared"]``, so that :func:`modality_identity` compares each modality with the cache it came from,
    and :func:`check_compatible` (whole provenances) still works on two test caches composed alike."""
    shared = {k: v for k, v in (image or {}).items() if k not in _OWN}
    return {**(text or {}), "image": {**((image or {}).get("image") or {}), "shared": shared}}


def modality_identity(provenance: dict | None, modality: str) -> dict[str, str]:
    """The feature-identity fields (:func:`mmfuse.identity.feature_identity`) that determine one modality's
    features: its own ("text ..." or "image ...") and the shared ones (precision, store dtype, versions) of
    the cache it came from (``provenance[modality]["shared"]`` in a composed provenance)."""
    p = provenance or {}
    shared = (p.get(modality) or {}).get("shared") if isinstance(p.get(modality), dict) else None
    identity = feature_identity({**p, **shared} if isinstance(shared, dict) else p)
    other = "image " if modality == "text" else "text "
    return {k: v for k, v in identity.items() if not k.startswith(other)}


def pick_caches(provenance: dict | None, caches: list[FeatureCache]) -> tuple[FeatureCache, FeatureCache]:
    """(text cache, image cache): for each modality the first of ``caches`` whose features of it were extracted
    like those described by ``provenance`` (a head's; :func:`modality_identity`). One cache is both (and
    :func:`check_compatible` says what differs); several, none matching a modality: a one-line CacheError
    naming the closest cache and the fields where it differs."""
    if len(caches) == 1:
        return caches[0], caches[0]
    picked = []
    for modality in ("text", "image"):
        want = modality_identity(provenance, modality)
        diffs = []
        for cache in caches:
            have = modality_identity(cache.provenance, modality)
            diffs.append((cache, [f"{k}: {want[k]!r} vs {have.get(k)!r}" for k in want if want[k] != have.get(k)]))
        match = next((c for c, d in diffs if not d), None)
        if match is None:
            closest, d = min(diffs, key=lambda cd: len(cd[1]))
            raise CacheError(f"none of {', '.join(str(c.path) for c in caches)} holds {modality} features extracted "
                             f"like the head's (head vs the closest, {closest.path}: {'; '.join(d[:3])}): pass a "
                             f"cache extracted with the head's {modality} backbone and options")
        picked.append(match)
    return picked[0], picked[1]


def features_for(caches, provenance: dict | None, text_feature: str = "auto",
                 image_feature: str = "auto") -> FeatureSet:
    """The features a head trained on ``provenance`` reads from one cache or several of the same rows (a path,
    a FeatureCache, or a list of them): one cache, both modalities from it, as always; several, each modality
    from the cache extracted like the head's (:func:`pick_caches`), rows checked (:func:`check_same_rows`).
    A vector the head read that the cache lacks: one line saying so."""
    caches = [caches] if isinstance(caches, (str, Path, FeatureCache)) else list(caches)
    if not caches:
        raise CacheError("no feature cache given")
    text, image = pick_caches(provenance, [open_cache(c) for c in caches])
    for cache, modality, name in ((text, "text", text_feature), (image, "image", image_feature)):
        if name != "auto" and f"{modality}/{name}" not in cache.dims:
            raise CacheError(f"{cache.path} has no {modality}/{name} features, the vector the head read (it holds "
                             f"{', '.join(sorted(cache.dims))}): pass a cache extracted like the head's training "
                             "features" + _two_caches(provenance))
    return FeatureSet.from_caches(text, image, text_feature, image_feature)


def _two_caches(provenance: dict | None) -> str:
    """A hint for a head that read its text and its images from two caches (a composed provenance)."""
    image = (provenance or {}).get("image")
    return ("; this head read its text and its images from two caches: pass a cache for each, extracted like "
            "them (mmfuse predict RUN TEXT.h5 IMAGE.h5)") if isinstance(image, dict) and "shared" in image else ""
