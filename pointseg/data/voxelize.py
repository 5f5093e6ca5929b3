"""Points -> voxels: unique grid coordinates, per-voxel features and the inverse map.

Everything is vectorised (one sort of ravelled int64 keys), so 10 M points take a few
seconds on two cores. The grid is anchored at the minimum coordinate of the cloud, so
grid coordinates are non-negative and start at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

Mode = Literal["mean", "train"]


class Voxelized(NamedTuple):
    grid_coord: np.ndarray  # (M, 3) int32, >= 0, unique, sorted by ravelled key
    inverse: np.ndarray  # (N,) int64, point -> voxel row
    counts: np.ndarray  # (M,) int64, points per voxel, sums to N
    index: np.ndarray  # (M,) int64, one representative point per voxel
    features: np.ndarray | None  # (M, C) float32: mean ("mean") or the representative's ("train")
    origin: np.ndarray  # (3,) float64, world position of grid cell (0, 0, 0)


class SceneVoxels(NamedTuple):
    grid: np.ndarray  # (M, 3) int32 >= 0, sorted by ravelled key (as voxelize)
    inverse: np.ndarray  # (N,) int32/int64 point -> voxel
    counts: np.ndarray  # (M,) int64 points per voxel
    feat: np.ndarray  # (M, C) float32 mean features
    groups: dict[str, slice]  # feature key -> its columns of feat
    origin: np.ndarray | None = None  # (3,) float64 world position of grid cell (0, 0, 0)


def voxel_offsets(
    coord: np.ndarray, origin: np.ndarray, voxel_size: float, cell: np.ndarray
) -> np.ndarray:
    """Each point's position inside its voxel, in voxel units centred on the voxel: (N, 3)
    float32 in [-0.5, 0.5); ``cell`` (N, 3) is the point's voxel (``grid[inverse]``). The point
    branch's extra inputs (``pointseg.models.sparse_unet.POINT_EXTRA``), computed by this one
    function in training (``Voxelize``) and when labelling (``Segmenter``)."""
    rel = (coord.astype(np.float64, copy=False) - origin) / voxel_size
    return (rel - cell - 0.5).astype(np.float32)


def _check_inputs(coord: np.ndarray, feat: np.ndarray | None, voxel_size: float) -> None:
    if not isinstance(coord, np.ndarray):
        raise TypeError(f"coord must be a numpy array, got {type(coord).__name__}")
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must have shape (N, 3), got {coord.shape}")
    if coord.shape[0] == 0:
        raise ValueError("coord is empty (0 points): nothing to voxelize; check the input file")
    if coord.dtype not in (np.float32, np.float64):
        raise ValueError(f"coord must be float32 or float64, got {coord.dtype}")
    if not np.isfinite(coord).all():  # one fast pass; rows only when something is wrong
        finite = np.isfinite(coord).all(axis=1)
        bad = int((~finite).sum())
        first = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"coord has {bad} point(s) with NaN/Inf coordinates (first at row {first}); "
            "remove them before voxelizing, e.g. coord[np.isfinite(coord).all(1)]"
        )
    if feat is not None:
        if feat.ndim not in (1, 2):
            raise ValueError(f"features must have shape (N,) or (N, C), got {feat.shape}")
        if feat.shape[0] != coord.shape[0]:
            raise ValueError(
                f"features have {feat.shape[0]} rows but coord has {coord.shape[0]} points; "
                "they must describe the same points"
            )
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise ValueError(f"voxel_size must be a positive number, got {voxel_size}")


# Grids of at most this many cells per point (or _DENSE_MIN_CELLS, but never more than
# _DENSE_MAX_CELLS) find their occupied cells with a table over all cells (5 bytes a cell)
# instead of a sort: O(N + cells), several times faster than sorting the keys.
_DENSE_CELLS_PER_POINT = 16
_DENSE_MIN_CELLS = 1 << 24
_DENSE_MAX_CELLS = 1 << 27
_CHUNK = 1 << 18  # points per chunk: float64 temporaries stay in cache


def _bounds(coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis min and max of the points, as float64 (column by column: ~8x faster than
    ``coord.min(axis=0)`` on (N, 3) rows; in parts on threads for large clouds)."""

    def part(start: int, stop: int) -> np.ndarray:
        c = coord[start:stop]
        return np.array([[c[:, j].min() for j in range(3)], [c[:, j].max() for j in range(3)]])

    parts = np.stack(_in_parts(coord.shape[0], part)).astype(np.float64)  # (parts, 2, 3)
    return parts[:, 0].min(axis=0), parts[:, 1].max(axis=0)


def _cell(coord: np.ndarray, origin: np.ndarray, voxel_size: float) -> np.ndarray:
    """Integer cell of every point, computed in float64: (N, 3) int64."""
    return np.floor((coord.astype(np.float64, copy=False) - origin) / voxel_size).astype(np.int64)


def grid_extent(coord: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """The grid of ``coord``: origin (3,) float64 (the per-axis minimum) and cells per axis
    (3,) int64; refuses grids whose coordinates would not fit int32."""
    lo, hi = _bounds(coord)
    dims = _cell(hi[None], lo, voxel_size)[0] + 1  # floor is monotonic: the largest cell + 1
    if int(dims.max()) >= 2**31 - 1:
        raise ValueError(
            f"voxel grid is too large for int32 coordinates (extent {hi - lo} m at "
            f"voxel_size={voxel_size}); use a larger voxel_size or cut the scene into blocks"
        )
    return lo, dims


_THREADED_POINTS = 1 << 20  # below this, a thread pool costs more than it saves
# The passes are bound by memory latency, and each part of the first-point pass holds its own
# (M,) table: more parts than this cost memory and thread start-ups for little.
_MAX_PARTS = 8


def _threads(n: int) -> int:
    """Threads for a pass over ``n`` points: torch's thread count (at most ``_MAX_PARTS``) on
    large clouds, else 1 (data-loader workers with one thread run every pass in turn)."""
    return min(max(1, torch.get_num_threads()), _MAX_PARTS) if n >= _THREADED_POINTS else 1


def _map(fn, items: list, threads: int) -> list:
    """``[fn(item) for item in items]``, on a pool of up to ``threads`` threads (the numpy and
    torch passes used here release the GIL); results in item order."""
    threads = min(threads, len(items))
    if threads <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def _in_parts(n: int, fn) -> list:
    """``fn(start, stop)`` over ``_threads(n)`` contiguous parts of ``range(n)``, each on its
    own thread; results in part order."""
    bounds = np.linspace(0, n, _threads(n) + 1).astype(np.int64)
    parts = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return _map(lambda ab: fn(*ab), parts, len(parts))


def ravelled_keys(
    coord: np.ndarray, origin: np.ndarray, voxel_size: float, dims: np.ndarray
) -> np.ndarray:
    """``(x * dims[1] + y) * dims[2] + z`` of every point's cell, in chunks: (N,) int64."""
    n = coord.shape[0]
    key = np.empty(n, dtype=np.int64)
    d1, d2 = int(dims[1]), int(dims[2])

    def part(start: int, stop: int) -> None:
        for s in range(start, stop, _CHUNK):
            e = min(s + _CHUNK, stop)
            g = _cell(coord[s:e], origin, voxel_size)
            np.multiply(g[:, 0], d1, out=key[s:e])
            key[s:e] += g[:, 1]
            key[s:e] *= d2
            key[s:e] += g[:, 2]

    _in_parts(n, part)
    return key


def unravel_keys(keys: np.ndarray, dims: np.ndarray, dtype=np.int64) -> np.ndarray:
    """Cells (M, 3) of ravelled ``keys`` (the inverse of ``ravelled_keys``), as ``dtype``;
    in parts on threads for large ``keys``."""
    d1, d2 = int(dims[1]), int(dims[2])
    out = np.empty((keys.size, 3), dtype=dtype)
    small = keys.size == 0 or int(keys.max()) < 2**31  # int32 division: ~1.7x faster

    def part(start: int, stop: int) -> None:
        k = keys[start:stop]
        if small:
            q, out[start:stop, 2] = np.divmod(k.astype(np.int32), np.int32(d2))
            out[start:stop, 0], out[start:stop, 1] = np.divmod(q, np.int32(d1))
        else:
            q, out[start:stop, 2] = np.divmod(k, d2)
            out[start:stop, 0], out[start:stop, 1] = np.divmod(q, d1)

    _in_parts(keys.size, part)
    return out


def _unique_dense(key: np.ndarray, volume: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted occupied keys and every point's rank among them, via a table over all cells."""
    occupied = np.zeros(volume, dtype=bool)

    def mark(start: int, stop: int) -> None:
        occupied[key[start:stop]] = True  # parts may mark the same cell: same value

    _in_parts(key.size, mark)
    ukey = np.flatnonzero(occupied)  # sorted
    occupied = None  # free the table before the rank table is made
    rank = np.empty(volume, dtype=np.int32)  # < 2**31 points, so < 2**31 voxels
    rank[ukey] = np.arange(ukey.size, dtype=np.int32)
    inverse = np.empty(key.size, dtype=np.int64)

    def look_up(start: int, stop: int) -> None:
        inverse[start:stop] = rank.take(key[start:stop])

    _in_parts(key.size, look_up)
    return ukey, inverse


def _first_points(inverse: torch.Tensor, m: int) -> torch.Tensor:
    """(M,) int64: the smallest point row of each voxel. Each part of the points takes its own
    minimum on its own thread (int32: n < 2**31), then the parts' minima are combined."""
    n = inverse.shape[0]

    def part(start: int, stop: int) -> torch.Tensor:
        first = torch.full((m,), n, dtype=torch.int32)
        rows = torch.arange(start, stop, dtype=torch.int32)
        return first.scatter_reduce_(0, inverse[start:stop], rows, "amin")

    firsts = _in_parts(n, part)
    first = firsts[0]
    for other in firsts[1:]:
        torch.minimum(first, other, out=first)
    return first.long()


def _bincounts(
    inverse: np.ndarray, m: int, f2: np.ndarray | None, counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Points per voxel (M,) int64 (``counts`` if already known) and, for features ``f2``
    (N, C), their per-voxel means accumulated in float64, (M, C) float32.

    ``np.bincount`` releases the GIL, so on large clouds the passes run on torch's thread
    count (data-loader workers with one thread run them in turn).
    """
    channels = 0 if f2 is None else f2.shape[1]

    def one(j: int) -> np.ndarray:
        weights = None if j < 0 else np.ascontiguousarray(f2[:, j])
        return np.bincount(inverse, weights=weights, minlength=m)

    jobs = list(range(-1 if counts is None else 0, channels))  # -1: the unweighted count
    results = _map(one, jobs, _threads(inverse.size))
    if counts is None:
        counts = results.pop(0)
    if f2 is None:
        return counts, None
    out = np.empty((m, channels), dtype=np.float32)

    def divide(start: int, stop: int) -> None:
        denom = counts[start:stop].astype(np.float64)
        for j, total in enumerate(results):
            out[start:stop, j] = total[start:stop] / denom

    _in_parts(m, divide)
    return counts, out


def voxelize(
    coord: np.ndarray,
    features: np.ndarray | None = None,
    *,
    voxel_size: float,
    mode: Mode = "mean",
    seed: int | np.random.Generator | None = 0,
) -> Voxelized:
    """Quantise points to a grid of ``voxel_size`` metres.

    ``mode="mean"`` averages the features of the points in each voxel (test time: nothing
    is dropped, ``inverse`` maps every point back). ``mode="train"`` keeps one random point
    per voxel as its representative, like Pointcept's GridSample train mode; ``seed`` makes
    the draw reproducible.
    """
    _check_inputs(coord, features, voxel_size)
    if mode not in ("mean", "train"):
        raise ValueError(f"mode must be 'mean' or 'train', got {mode!r}")
    n = coord.shape[0]
    if n >= 2**31:
        raise ValueError(f"coord has {n} points; voxelize at most 2**31 - 1 per call (cut blocks)")
    lo, dims = grid_extent(coord, voxel_size)
    volume = float(dims[0]) * float(dims[1]) * float(dims[2])
    if volume >= 2**62:
        # the ravelled key would overflow int64: sort rows instead (slower, same result)
        grid = torch.from_numpy(_cell(coord, lo, voxel_size))
        rows, inverse, counts = torch.unique(
            grid, dim=0, sorted=True, return_inverse=True, return_counts=True
        )
        grid_coord = rows.numpy()
    else:
        key = ravelled_keys(coord, lo, voxel_size, dims)
        dense = max(_DENSE_CELLS_PER_POINT * n, _DENSE_MIN_CELLS)
        if volume <= min(dense, _DENSE_MAX_CELLS):
            uk, inv = _unique_dense(key, int(volume))
            inverse, counts = torch.from_numpy(inv), None  # counted with the features below
        else:
            ukey, inverse, counts = torch.unique(
                torch.from_numpy(key), sorted=True, return_inverse=True, return_counts=True
            )
            uk = ukey.numpy()
        grid_coord = unravel_keys(uk, dims, np.int32)
    m = grid_coord.shape[0]
    f = None if features is None else np.asarray(features)
    f2 = None if f is None else f.reshape(f.shape[0], -1)
    means = None
    if counts is None or (f2 is not None and mode == "mean"):
        known = None if counts is None else counts.numpy()
        count_np, means = _bincounts(inverse.numpy(), m, f2 if mode == "mean" else None, known)
        counts = torch.from_numpy(count_np)
    if mode == "train":
        point = torch.arange(n, dtype=torch.int64)
        # one point per voxel, uniformly at random: the smallest (random draw, row) pair wins
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        draw = torch.from_numpy(rng.integers(0, 2**31 - 1, n, dtype=np.int64))
        best = torch.full((m,), 2**63 - 1, dtype=torch.int64)
        best.scatter_reduce_(0, inverse, (draw << 32) | point, "amin")
        index = best & 0xFFFFFFFF  # the row (n < 2**31: it fits the low 32 bits)
    else:
        index = _first_points(inverse, m)  # the first point of each voxel

    feats_out = None
    if f2 is not None:
        feats_out = f2[index.numpy()].astype(np.float32) if mode == "train" else means
        if f.ndim == 1:
            feats_out = feats_out[:, 0]
    return Voxelized(
        grid_coord=grid_coord.astype(np.int32, copy=False),
        inverse=inverse.numpy().astype(np.int64, copy=False),
        counts=counts.numpy().astype(np.int64, copy=False),
        index=index.numpy(),
        features=feats_out,
        origin=lo,
    )


def voxelize_chunked(
    sample: dict[str, Any],
    feat_keys: Sequence[str],
    *,
    voxel_size: float,
    chunk_size: int = 2_000_000,
    grid_origin: np.ndarray | None = None,
) -> SceneVoxels:
    """``voxelize(mode="mean")`` for whole scans of any size: the same grid, order and
    features, computed chunk by chunk with no (N, C) or (N, 3) int64 copies; the feature
    columns stay grouped by key (``groups``) so that test-time augmentation can turn them.
    ``grid_origin`` (3,) anchors the grid at a given point (in ``coord``'s frame, at or below
    every point) instead of the scan's minimum: spatial chunks of one tile voxelized with the
    tile's minimum get the tile's voxels, at the tile's grid coordinates."""
    coord = sample["coord"]  # (N, 3) f32
    n = len(coord)
    if n == 0:
        raise ValueError("the scan has 0 points: nothing to label")
    for k in feat_keys:
        if len(sample[k]) != n:
            raise ValueError(
                f"feature '{k}' has {len(sample[k])} rows but coord has {n} points; every "
                "per-point array must describe the same points"
            )
    finite = np.isfinite(coord).all(1)
    if not finite.all():
        raise ValueError(
            f"coord has {int((~finite).sum())} point(s) with NaN/Inf coordinates (first at row "
            f"{int(np.flatnonzero(~finite)[0])}); leave them out first "
            "(pointseg.io.read_points(..., nonfinite='drop') does it and says which)"
        )
    origin, dims = grid_extent(coord, voxel_size)
    if grid_origin is not None:
        anchor = np.asarray(grid_origin, dtype=np.float64).reshape(3)
        if (origin < anchor).any():
            raise ValueError(
                f"grid_origin {anchor} lies above the scan's minimum {origin} in some axis; "
                "anchor the grid at or below every point (the whole tile's minimum)"
            )
        hi = _bounds(coord)[1]
        origin, dims = anchor, _cell(hi[None], anchor, voxel_size)[0] + 1
    if float(np.prod(dims.astype(np.float64))) >= 2**62:
        raise ValueError(f"voxel grid {dims} too large at voxel_size={voxel_size}")
    key = ravelled_keys(coord, origin, voxel_size, dims)
    ukey, inverse, counts = torch.unique(
        torch.from_numpy(key), sorted=True, return_inverse=True, return_counts=True
    )
    del key
    grid = unravel_keys(ukey.numpy(), dims)
    del ukey
    if len(counts) < 2**31:
        inverse = inverse.to(torch.int32)
    groups, start = {}, 0
    for k in feat_keys:
        width = int(np.prod(np.shape(sample[k])[1:], dtype=np.int64))
        groups[k], start = slice(start, start + width), start + width
    acc = torch.zeros((len(counts), start), dtype=torch.float64)
    for i in range(0, n, chunk_size):
        cols = [np.asarray(sample[k][i : i + chunk_size], dtype=np.float32) for k in feat_keys]
        f = np.concatenate([c.reshape(len(c), -1) for c in cols], 1).astype(np.float64)
        acc.index_add_(0, inverse[i : i + chunk_size].long(), torch.from_numpy(f))
    feat = (acc / counts[:, None].to(torch.float64)).to(torch.float32).numpy()
    return SceneVoxels(
        grid.astype(np.int32), inverse.numpy(), counts.numpy(), feat, groups, np.asarray(origin)
    )
