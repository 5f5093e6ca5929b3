"""Heights above ground: each point's height above the lowest point within a radius.

A cheap stand-in for a ground model on airborne scans, computed on an x/y grid of square
cells: densely where the occupied cells fill a fair share of the bounding box, on the
occupied cells alone where they do not (a few points over kilometres); both give the same
minimum, bit for bit. ``pointseg.io.las_features.las_features`` makes the ``hag`` feature with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def height_above_local_min(
    xyz: np.ndarray,
    *,
    cell: float,
    radii: Sequence[float],
    anchor: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, len(radii))`` float32: z minus the lowest z within each radius (square windows on
    a grid of ``cell`` units) around each point: a cheap height above ground for airborne
    scans; several radii let a model tell a roof (high at every scale) from a slope. The grid
    starts at the points' x/y minimum, or at ``anchor`` (the whole tile's minimum, for a
    chunk of a streamed tile: the same cells as the whole tile).

    A tile whose occupied cells fill a fair share of its bounding box is computed on a dense
    grid; a sparse one (a few points over kilometres) on its occupied cells alone
    (:func:`_window_min_sparse`), so time and memory follow the points, not the extent. Both
    give the same minimum, bit for bit."""
    if cell <= 0 or not radii or min(radii) < 0:
        raise ValueError(f"hag needs cell > 0 and radii >= 0, got cell={cell}, radii={radii}")
    start = xyz[:, :2].min(0) if anchor is None else np.asarray(anchor, dtype=xyz.dtype)
    grid = np.floor((xyz[:, :2] - start) / cell).astype(np.int64)  # (N, 2)
    grid -= grid.min(0)  # a chunk's cells only (an integer shift: the same cells)
    shape = tuple(grid.max(0) + 1)
    width = int(shape[0])
    key = grid[:, 1] * width + grid[:, 0]  # (N,) row-major by y: rows are contiguous
    occupied, inv = np.unique(key, return_inverse=True)  # (M,) sorted, (N,) -> cell
    inv = inv.reshape(-1)
    out = np.empty((len(xyz), len(radii)), dtype=np.float32)
    if shape[0] * shape[1] <= DENSE_HAG_FILL * len(occupied) + DENSE_HAG_CELLS:
        cells = np.full(shape, np.inf)
        np.minimum.at(cells, (grid[:, 0], grid[:, 1]), xyz[:, 2])
        for col, radius in enumerate(radii):
            lowest = _window_min_dense(cells, int(np.ceil(radius / cell)))
            out[:, col] = xyz[:, 2] - lowest[grid[:, 0], grid[:, 1]]
        return out
    low = np.full(len(occupied), np.inf)  # (M,) each cell's lowest z
    np.minimum.at(low, inv, xyz[:, 2])
    for col, radius in enumerate(radii):
        lowest = _window_min_sparse(occupied, low, int(np.ceil(radius / cell)), width=width)
        out[:, col] = xyz[:, 2] - lowest[inv]
    return out


# a grid whose bounding box holds at most this many cells per occupied cell (plus a floor)
# is computed densely; beyond, on the occupied cells only
DENSE_HAG_FILL = 8
DENSE_HAG_CELLS = 1 << 20


def _window_min_dense(cells: np.ndarray, k: int) -> np.ndarray:
    """Minimum of each (2k+1)^2 square window of ``cells (W, H)`` (``inf`` where empty)."""
    shape = cells.shape
    lowest = cells
    for axis in (0, 1):  # a square window's minimum is separable: rows, then columns
        padded = np.pad(lowest, [(k, k) if a == axis else (0, 0) for a in (0, 1)], "edge")
        low = np.full(shape, np.inf)
        for shift in range(2 * k + 1):
            low = np.minimum(low, np.take(padded, np.arange(shift, shift + shape[axis]), axis))
        lowest = low
    return lowest


def _window_min_sparse(
    keys: np.ndarray, low: np.ndarray, k: int, *, width: int, batch: int = 1 << 22
) -> np.ndarray:
    """``(M,)`` minimum of ``low`` over the occupied cells within ``k`` cells (Chebyshev) of
    each occupied cell, the cells given by their sorted keys ``b * width + a``: the dense
    window minimum at the occupied cells, in O(M x occupied rows in reach x log M).

    Per cell, each occupied row within ``k`` is a contiguous run of the sorted cells; the
    run's minimum over ``a`` in ``[i - k, i + k]`` comes from a sparse table (min over
    ``2^l`` consecutive cells, ``l`` up to log2(2k + 1))."""
    m = len(low)
    table = [low]
    while (1 << len(table)) <= 2 * k + 1:  # table[l][p] = min(low[p : p + 2^l])
        prev, half = table[-1], 1 << (len(table) - 1)
        nxt = prev.copy()
        if half < m:
            nxt[: m - half] = np.minimum(prev[: m - half], prev[half:])
        table.append(nxt)
    levels = np.stack(table)  # (L, M)
    a, b = keys % width, keys // width
    rows = np.unique(b)  # the occupied rows, sorted
    first = np.searchsorted(rows, b - k, "left")  # (M,) first occupied row in reach
    count = np.searchsorted(rows, b + k, "right") - first  # >= 1: its own row
    out = np.empty(m)
    lo_a, hi_a = np.maximum(a - k, 0), np.minimum(a + k, width - 1)
    ends = np.cumsum(count)
    t0 = 0
    while t0 < m:  # a batch of cells whose (cell, row) pairs fit in `batch`
        t1 = max(t0 + 1, int(np.searchsorted(ends, (ends[t0 - 1] if t0 else 0) + batch)))
        t1 = min(t1, m)
        cnt = count[t0:t1]
        t = np.repeat(np.arange(t0, t1), cnt)  # (P,) the cell of each pair
        offs = np.arange(len(t)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        row = rows[first[t] + offs]  # (P,) an occupied row in reach
        lo = np.searchsorted(keys, row * width + lo_a[t], "left")
        hi = np.searchsorted(keys, row * width + hi_a[t], "right")
        n = hi - lo
        nz = n > 0
        level = np.maximum(np.frexp(np.maximum(n, 1))[1] - 1, 0).astype(np.int64)  # floor log2
        span = np.left_shift(1, level)
        got = np.minimum(levels[level, np.minimum(lo, m - 1)],
                         levels[level, np.clip(hi - span, 0, m - 1)])  # fmt: skip
        got[~nz] = np.inf
        out[t0:t1] = np.minimum.reduceat(got, np.cumsum(cnt) - cnt)
        t0 = t1
    return out
