"""The rulebooks an exported graph takes as inputs, built in numpy (no torch, no spconv).

The same pairs as ``pointseg.sparse.rulebook`` (``subm_pairs``, ``strided_pairs``: spconv's
layout, offsets in spconv's order, x slowest), in the flat form the graph reads
(``pointseg.export.onnx_graph``):

- a submanifold key (``stem``, ``subm{l}``, ``subm{l}_k5``): ``{key}_in`` / ``{key}_out``
  (P,) int64, the input and output rows of every offset but the centre, concatenated in
  offset order, and ``{key}_counts`` (K - 1,) int64, the pairs of each; the centre is one
  matmul over every row;
- a strided key (``down{l}``, k = s = 2): ``{key}_in`` (N,) every fine row once, grouped by
  offset, ``{key}_out`` its coarse row, ``{key}_counts`` (8,), ``{key}_size`` (1,) the coarse
  row count and ``{key}_unsort`` (N,) the inverse permutation of ``{key}_in`` (the inverse
  conv's products come back in fine row order with one gather).

Coarse sites are numbered in sorted (b, x, y, z) order, as pointseg's CPU builder numbers them,
so the rows of every level are the torch network's; ``tests/test_export.py`` holds the two
builders equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _keys(grid: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """int64 ravelled key of each (b, x, y, z) row of ``grid`` (extents ``dims`` for x, y, z)."""
    c = grid.astype(np.int64)
    return ((c[:, 0] * dims[0] + c[:, 1]) * dims[1] + c[:, 2]) * dims[2] + c[:, 3]


def subm_pairs(grid: np.ndarray, ksize: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """((2, K, N) int32 pairs with -1 padding, (K,) int32 counts) of a submanifold conv with
    odd ``ksize`` over the unique (N, 4) [b, x, y, z] sites: ``pointseg.sparse.rulebook``'s
    ``subm_pairs``, pair for pair."""
    n = len(grid)
    radius = [k // 2 for k in ksize]
    dims = [int(e) + 1 + 2 * r for e, r in zip(grid[:, 1:].max(0), radius, strict=True)]
    shifted = grid.astype(np.int64) + np.array([0, *radius])
    key = _keys(shifted, dims)
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    kv = int(np.prod(ksize))
    center = kv // 2
    sx, sy = dims[1] * dims[2], dims[2]
    deltas = [
        dx * sx + dy * sy + dz
        for dx in range(-radius[0], radius[0] + 1)
        for dy in range(-radius[1], radius[1] + 1)
        for dz in range(-radius[2], radius[2] + 1)
    ][:center]
    rows = np.arange(n, dtype=np.int32)
    pairs = np.full((2, kv, n), -1, dtype=np.int32)
    counts = np.zeros(kv, dtype=np.int32)
    for k, d in enumerate(deltas):
        want = key + d
        at = np.minimum(np.searchsorted(sorted_keys, want), n - 1)
        found = sorted_keys[at] == want
        m = int(found.sum())
        mirror = kv - 1 - k
        pairs[0, k, :m] = order[at[found]]
        pairs[1, k, :m] = rows[found]
        pairs[0, mirror, :m] = rows[found]
        pairs[1, mirror, :m] = pairs[0, k, :m]
        counts[k] = counts[mirror] = m
    return pairs, counts


def strided_pairs(
    grid: np.ndarray, ksize: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """((M, 4) int32 coarse sites, (2, K, N) int32 pairs, (K,) int32 counts) of a conv with
    stride == kernel size: ``pointseg.sparse.rulebook``'s ``strided_pairs``."""
    c = grid.astype(np.int64)
    k = np.asarray(ksize, dtype=np.int64)
    coarse = c[:, 1:] // k
    offset = c[:, 1:] - coarse * k
    dims = [int(e) + 1 for e in coarse.max(0)]
    okey = _keys(np.concatenate([c[:, :1], coarse], 1), dims)
    uniq, out_row = np.unique(okey, return_inverse=True)
    out = np.empty((len(uniq), 4), dtype=np.int64)
    rest = uniq
    for axis in (3, 2, 1):
        out[:, axis] = rest % dims[axis - 1]
        rest = rest // dims[axis - 1]
    out[:, 0] = rest
    kk = (offset[:, 0] * ksize[1] + offset[:, 1]) * ksize[2] + offset[:, 2]
    kv = int(np.prod(ksize))
    counts = np.bincount(kk, minlength=kv).astype(np.int32)
    order = np.argsort(kk, kind="stable")
    pairs = np.full((2, kv, len(grid)), -1, dtype=np.int32)
    start = 0
    for j, m in enumerate(counts.tolist()):
        sel = order[start : start + m]
        pairs[0, j, :m] = sel
        pairs[1, j, :m] = out_row.reshape(-1)[sel]
        start += m
    return out.astype(np.int32), pairs, counts


def _flat(pairs: np.ndarray, counts: np.ndarray, ks: Sequence[int]) -> tuple[np.ndarray, ...]:
    """(inputs, outputs, counts) of offsets ``ks``, concatenated, int64."""
    ins = [pairs[0, k, : counts[k]] for k in ks]
    outs = [pairs[1, k, : counts[k]] for k in ks]
    return (
        np.concatenate(ins).astype(np.int64),
        np.concatenate(outs).astype(np.int64),
        counts[list(ks)].astype(np.int64),
    )


def graph_inputs(grid: np.ndarray, plan: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Every rulebook input of an exported graph for the level-0 sites ``grid`` (M, 4)
    [b, x, y, z]; ``plan``: the graph's rulebook list (``pointseg.json`` ``rulebooks``:
    key, kind, kernel, level, in order of level)."""
    levels = {0: np.asarray(grid)}
    feeds: dict[str, np.ndarray] = {}
    for rb in plan:
        key, ksize, level = rb["key"], list(rb["kernel"]), int(rb["level"])
        sites = levels[level]
        kv = int(np.prod(ksize))
        if rb["kind"] == "subm":
            pairs, counts = subm_pairs(sites, ksize)
            ks = [k for k in range(kv) if k != kv // 2]
            feeds[f"{key}_in"], feeds[f"{key}_out"], feeds[f"{key}_counts"] = _flat(
                pairs, counts, ks
            )
        else:
            out, pairs, counts = strided_pairs(sites, ksize)
            levels[level + 1] = out
            src, dst, cnt = _flat(pairs, counts, range(kv))
            feeds[f"{key}_in"], feeds[f"{key}_out"], feeds[f"{key}_counts"] = src, dst, cnt
            feeds[f"{key}_size"] = np.array([len(out)], dtype=np.int64)
            feeds[f"{key}_unsort"] = np.argsort(src, kind="stable").astype(np.int64)
    return feeds
