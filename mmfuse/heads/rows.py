"""Features by rows, without copies of the whole set: :class:`Rows` (some rows of an array, taken when read,
so a training part or a fold is a list of row numbers, not a copy), the check and the statistics a head
computes over a set a block at a time (:func:`all_finite`, :func:`fit_scaler`), and standardised rows made a
block or a batch at a time (:func:`standardise`, :class:`Standardised`). A head thus holds its features once
(in memory or memory-mapped) whatever it trains on or scores, with the same numbers as standardising the
whole set first (tests/test_heads.py checks them bit for bit)."""
from __future__ import annotations

import numpy as np

BLOCK_ROWS = 8192  # rows checked, standardised or scored at a time (blocks are evened out: none under half)
SCALER_BYTES = 2 ** 27  # float64 bytes of one column block in :func:`fit_scaler` (its largest temporary)


class Rows:
    """Rows ``rows`` of the 2-D array ``base`` (in memory or memory-mapped), taken when read:
    ``Rows(x, idx)[k]`` is ``x[idx[k]]``, a new array. Array-like enough for a FeatureSet: ``shape``,
    ``dtype``, ``len``, row indexing (``r[k]``, ``r[a:b]``, ``r[k, cols]``) and ``np.asarray(r)`` (which
    copies the rows out); no writes."""

    ndim = 2

    def __init__(self, base, rows):
        self.base, self.rows = base, np.asarray(rows, np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.base.shape[1]

    @property
    def dtype(self):
        return self.base.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, tuple):  # (rows, columns)
            return np.asarray(self.base[(self.rows[idx[0]], *idx[1:])])
        return np.asarray(self.base[self.rows[idx]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = np.asarray(self.base[self.rows])
        return x if dtype is None else x.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"Rows({len(self.rows)} of {self.base.shape[0]} rows x {self.base.shape[1]})"


def view(a, idx) -> Rows:
    """Rows ``idx`` of ``a`` (an array or :class:`Rows`) without copying them."""
    if isinstance(a, Rows):
        return Rows(a.base, a.rows[idx])
    return Rows(a, np.arange(len(a))[idx])


def view_of(a, rows: slice):
    """Rows ``rows`` (a slice) of ``a`` without copying them: a view of an array, :class:`Rows` of Rows."""
    return Rows(a.base, a.rows[rows]) if isinstance(a, Rows) else a[rows]


def blocks(n: int, size: int | None = None) -> list[tuple[int, int]]:
    """(lo, hi) row ranges covering 0..n in ceil(n / size) blocks of even length (``size``: BLOCK_ROWS; none
    under size / 2: the matrix products of a small last block could round otherwise than the whole set's)."""
    k = max(1, -(-n // (size or BLOCK_ROWS)))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def all_finite(a) -> bool:
    """Whether every value of ``a`` (an array or :class:`Rows`) is finite, a block of rows at a time."""
    return all(np.isfinite(a[lo:hi]).all() for lo, hi in blocks(len(a)))


def fit_scaler(a):
    """scikit-learn's StandardScaler fit on ``a`` (N, D), a block of columns at a time: its temporaries are
    one block's (float64, SCALER_BYTES), not the whole set's. Each column's mean and variance are summed in
    the same order as in one fit on the whole array, so they are the same bits (a block is at least 2
    columns wide: numpy sums a single column pairwise)."""
    from sklearn.preprocessing import StandardScaler

    n, d = a.shape
    width = max(2, min(d, SCALER_BYTES // (8 * max(n, 1))))
    edges = list(range(0, d, width)) + [d]
    if len(edges) > 2 and edges[-1] - edges[-2] == 1:
        del edges[-2]  # a last block of one column joins the one before
    parts = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        cols = a.base[a.rows, lo:hi] if isinstance(a, Rows) else a[:, lo:hi]
        parts.append(StandardScaler().fit(np.ascontiguousarray(cols)))
    scaler = StandardScaler()
    for name in ("mean_", "var_", "scale_"):
        setattr(scaler, name, np.concatenate([getattr(p, name) for p in parts]))
    scaler.n_samples_seen_, scaler.n_features_in_ = parts[0].n_samples_seen_, d
    return scaler


def _scaled(x: np.ndarray, scaler) -> np.ndarray:
    """``x`` (a fresh array, changed in place) standardised as ``scaler.transform(x).astype(float32)``
    computes it: in x's float dtype (float64 for others), then float32."""
    if x.dtype not in (np.float64, np.float32, np.float16):
        x = x.astype(np.float64)
    x -= scaler.mean_.astype(x.dtype)
    x /= scaler.scale_.astype(x.dtype)
    return x.astype(np.float32, copy=False)


def standardise(a, scaler, out: np.ndarray | None = None) -> np.ndarray:
    """``a`` (an array or :class:`Rows`) standardised into ``out`` (a new (N, D) float32 array by default,
    or a column view of a wider one), a block of rows at a time: one float32 copy, no temporaries of the
    whole set."""
    out = np.empty(a.shape, np.float32) if out is None else out
    for lo, hi in blocks(len(a)):
        out[lo:hi] = _scaled(np.array(a[lo:hi]), scaler)
    return out


class Standardised:
    """The rows of ``a`` standardised by ``scaler`` when a batch is taken: ``s[idx]`` is a (B, D) float32
    torch tensor holding ``scaler.transform(a)[idx]``, bit for bit, without that whole copy. The training
    loop (:func:`mmfuse.heads.train.train_module`) takes its batches from it."""

    def __init__(self, a, scaler):
        self.a, self.scaler = a, scaler

    def __len__(self) -> int:
        return len(self.a)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.a.shape)

    def __getitem__(self, idx):
        import torch

        idx = idx.numpy() if isinstance(idx, torch.Tensor) else idx
        return torch.from_numpy(_scaled(np.array(self.a[idx]), self.scaler))
