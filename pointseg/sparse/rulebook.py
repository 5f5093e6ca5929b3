"""CPU rulebooks (spconv's ``indice_pairs``) built with vectorised torch ops.

spconv builds the gather/scatter pairs of a sparse conv on the CPU with one single-threaded hash
table; for a submanifold 3x3x3 conv over 136 k voxels that takes ~65 ms, the largest single cost
of a training step's rulebooks. Here the table is a flat int32 lookup over the (padded) grid,
filled with one scatter and read with one gather per kernel offset, all multi-threaded torch ops.

The output has spconv's exact layout, so spconv's own gather/GEMM/scatter kernels run on it:

- ``pairs`` is (2, K, N) int32: ``pairs[0, k, :n_k]`` input rows, ``pairs[1, k, :n_k]`` output
  rows, for kernel offset ``k`` in spconv's order (x slowest, z fastest); the rest is -1;
- ``counts`` is (K,) int32 ``n_k``; for a submanifold conv spconv reads the counts of offsets up
  to the centre only (the others mirror them) and the centre count is 0 (its GEMM runs on all
  rows at once).

Within an offset every output row appears at most once, so the order of pairs does not change
any sum: results equal spconv's rulebooks exactly (``tests/test_rulebook.py``). Downsampled sites
are numbered in sorted (b, x, y, z) order, where spconv uses its hash order; that permutes the
coarse rows, which the network never sees.

Used when the lookup table is small next to the data (``LOOKUP_CELLS_PER_VOXEL`` cells per
voxel, or ``LOOKUP_MIN_CELLS``); a submanifold rulebook whose batch-wide table would be too
large reuses one sample-sized table. Other cases (a single sample spread over a huge, nearly
empty grid), and every CUDA tensor, keep spconv's own builder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from spconv.core import ConvAlgo
from spconv.pytorch import ops as spconv_ops
from torch import Tensor

LOOKUP_CELLS_PER_VOXEL = 128  # int32 table of at most 512 bytes per voxel
LOOKUP_MIN_CELLS = 1 << 22  # 16 MiB: always fine
LOOKUP_MAX_CELLS = 1 << 27  # 512 MiB: never


def offset_counts(counts: Tensor, subm: bool) -> Iterator[tuple[int, int]]:
    """(kernel offset, pair count) of every offset with pairs in a rulebook, in spconv's order.

    A submanifold rulebook's counts are read up to the centre only (the mirrored offsets have
    the same counts) and the centre is left out: its GEMM covers every row at once.
    """
    num = counts.tolist()
    kv = len(num)
    center = kv // 2
    for k in range(kv):
        if subm and k == center:
            continue
        n = num[kv - 1 - k] if subm and k > center else num[k]
        if n > 0:
            yield k, n


def _table_cells(batch_size: int, dims: list[int]) -> int:
    cells = batch_size
    for d in dims:
        cells *= d
    return cells


def lookup_fits(num_voxels: int, batch_size: int, dims: list[int]) -> bool:
    """Whether a flat lookup table over ``batch_size`` grids of ``dims`` is cheap enough."""
    cells = _table_cells(batch_size, dims)
    return cells <= LOOKUP_MAX_CELLS and cells <= max(
        LOOKUP_MIN_CELLS, LOOKUP_CELLS_PER_VOXEL * num_voxels
    )


def subm_table_dims(indices: Tensor, ksize: list[int]) -> list[int]:
    """Lookup grid of a submanifold conv: the occupied extent plus a margin of ``k // 2`` on
    both sides of each axis, so neighbour keys never leave their own batch's grid."""
    extent = indices[:, 1:].amax(dim=0).tolist()
    return [int(e) + 1 + 2 * (k // 2) for e, k in zip(extent, ksize, strict=True)]


def _keys(indices: Tensor, dims: list[int], shift: list[int]) -> Tensor:
    """int64 ravelled key of each (b, x, y, z) row in ``dims`` after adding ``shift``."""
    c = indices.long()
    key = c[:, 0] * dims[0] + (c[:, 1] + shift[0])
    key = key * dims[1] + (c[:, 2] + shift[1])
    return key * dims[2] + (c[:, 3] + shift[2])


def subm_fits(indices: Tensor, batch_size: int, ksize: list[int]) -> bool:
    """Whether ``subm_pairs`` builds this rulebook: a table over the whole batch, or else one
    table reused sample by sample, must fit ``lookup_fits`` for the batch's voxel count."""
    dims = subm_table_dims(indices, ksize)
    n = indices.shape[0]
    return lookup_fits(n, batch_size, dims) or lookup_fits(n, 1, dims)


def subm_pairs(
    indices: Tensor, batch_size: int, spatial_shape: list[int], ksize: list[int]
) -> tuple[Tensor, Tensor]:
    """(pairs, counts) of a submanifold conv with odd ``ksize``, dilation 1, on CPU ``indices``.

    ``indices`` (N, 4) int32 [b, x, y, z], unique and non-negative. Neighbours are looked up
    in the occupied extent, so ``spatial_shape`` (kept for spconv's signature) is not needed.
    When one table over the whole batch would be too large, one sample-sized table is filled,
    read and cleared sample by sample.
    """
    n = indices.shape[0]
    radius = [k // 2 for k in ksize]
    dims = subm_table_dims(indices, ksize)
    kv = ksize[0] * ksize[1] * ksize[2]
    center = kv // 2
    sx, sy = dims[1] * dims[2], dims[2]
    deltas = [
        dx * sx + dy * sy + dz
        for dx in range(-radius[0], radius[0] + 1)
        for dy in range(-radius[1], radius[1] + 1)
        for dz in range(-radius[2], radius[2] + 1)
    ][:center]  # offsets past the centre mirror these, with rows swapped
    rows = torch.arange(n, dtype=torch.int32)
    neighbour = torch.empty((center, n), dtype=torch.int32)  # input row at out + d, or -1
    if lookup_fits(n, batch_size, dims):
        key = _keys(indices, dims, radius)
        table = torch.full((_table_cells(batch_size, dims),), -1, dtype=torch.int32)
        table[key] = rows
        for k, d in enumerate(deltas):
            torch.index_select(table, 0, key + d, out=neighbour[k])
    else:
        table = torch.full((_table_cells(1, dims),), -1, dtype=torch.int32)
        batch = indices[:, 0]
        local = indices.clone()
        local[:, 0] = 0
        for b in range(batch_size):
            sample = (batch == b).nonzero().squeeze(1)
            if sample.numel() == 0:
                continue
            key = _keys(local[sample], dims, radius)
            table[key] = sample.int()
            for k, d in enumerate(deltas):
                neighbour[k, sample] = table[key + d]
            table[key] = -1  # clear for the next sample
    pairs = torch.full((2, kv, n), -1, dtype=torch.int32)
    counts = torch.zeros(kv, dtype=torch.int32)
    for k in range(center):
        found = neighbour[k] >= 0
        out_rows = rows[found]
        m = out_rows.numel()
        mirror = kv - 1 - k
        pairs[0, k, :m] = neighbour[k][found]
        pairs[1, k, :m] = out_rows
        pairs[0, mirror, :m] = out_rows
        pairs[1, mirror, :m] = pairs[0, k, :m]
        counts[k] = counts[mirror] = m
    return pairs, counts


def strided_pairs(
    indices: Tensor, batch_size: int, spatial_shape: list[int], ksize: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """(out_indices, pairs, counts) of a conv with stride == kernel size and no padding.

    Each input site feeds exactly one output site, ``x // k``, through offset ``x % k``.
    """
    n = indices.shape[0]
    c = indices.long()
    k_t = torch.tensor(ksize, dtype=torch.long)
    coarse = c[:, 1:] // k_t
    offset = c[:, 1:] - coarse * k_t
    out_dims = [s // k for s, k in zip(spatial_shape, ksize, strict=True)]
    okey = ((c[:, 0] * out_dims[0] + coarse[:, 0]) * out_dims[1] + coarse[:, 1]) * out_dims[2]
    okey += coarse[:, 2]
    if lookup_fits(n, batch_size, out_dims):
        # Mark the occupied output cells, number them in key order: a linear unique.
        occupied = torch.zeros(_table_cells(batch_size, out_dims), dtype=torch.bool)
        occupied[okey] = True
        uniq = occupied.nonzero().squeeze(1)
        number = torch.cumsum(occupied, 0, dtype=torch.int32) - 1
        out_row = number[okey]
    else:
        uniq, inv = torch.unique(okey, return_inverse=True)
        out_row = inv.int()
    out = torch.empty((uniq.numel(), 4), dtype=torch.int64)
    rest = uniq
    for axis in (3, 2, 1):
        out[:, axis] = rest % out_dims[axis - 1]
        rest = rest // out_dims[axis - 1]
    out[:, 0] = rest
    kk = (offset[:, 0] * ksize[1] + offset[:, 1]) * ksize[2] + offset[:, 2]
    kv = ksize[0] * ksize[1] * ksize[2]
    counts = torch.bincount(kk, minlength=kv).int()
    order = torch.argsort(kk, stable=True)  # input rows grouped by offset, ascending within
    pairs = torch.full((2, kv, n), -1, dtype=torch.int32)
    start = 0
    for k, m in enumerate(counts.tolist()):
        sel = order[start : start + m]
        pairs[0, k, :m] = sel.int()
        pairs[1, k, :m] = out_row[sel]
        start += m
    return out.int(), pairs, counts


@dataclass(eq=False)
class Rulebook:
    """The rulebook of one level (one ``indice_key``), built once per forward and reused by every
    conv of that key and by their backward passes. Field names are spconv's ``IndiceData``
    names, so code that reads spconv's rulebooks (e.g. ``indice_pair_num``) reads these too.

    ``cache`` holds what the kernels derive from the pairs (the depthwise kernel's neighbour
    table), so that too is computed once per forward.
    """

    indices: Tensor  # (N_in, 4) int32 input sites
    out_indices: Tensor  # (N_out, 4) int32 output sites (== indices for a submanifold conv)
    indice_pairs: Tensor  # (2, K, N_in) int32, spconv's layout
    indice_pair_num: Tensor  # (K,) int32
    spatial_shape: list[int]
    out_spatial_shape: list[int]
    is_subm: bool
    ksize: list[int]
    stride: list[int]
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)


def build(
    indices: Tensor,
    batch_size: int,
    spatial_shape: list[int],
    *,
    subm: bool,
    ksize: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> Rulebook:
    """The rulebook of a conv over CPU ``indices``: pointseg's lookup-table builders where they
    apply (odd submanifold kernels, stride == kernel size without padding, dilation 1), spconv's
    own builder otherwise (same format either way)."""
    plain = all(d == 1 for d in dilation)
    out_shape = list(spatial_shape)
    if not subm:
        out_shape = [
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, k, st, p, d in zip(spatial_shape, ksize, stride, padding, dilation, strict=True)
        ]
    if plain and subm and all(k % 2 for k in ksize) and subm_fits(indices, batch_size, ksize):
        pairs, counts = subm_pairs(indices, batch_size, spatial_shape, ksize)
        out = indices
    elif (
        plain
        and not subm
        and ksize == stride
        and not any(padding)
        and all(s % k == 0 for s, k in zip(spatial_shape, ksize, strict=True))
    ):
        out, pairs, counts = strided_pairs(indices, batch_size, spatial_shape, ksize)
    else:
        out, pairs, counts = spconv_ops.get_indice_pairs(
            indices, batch_size, spatial_shape, ConvAlgo.Native, ksize, stride, padding,
            dilation, [0] * len(ksize), subm, False,
        )  # fmt: skip
    return Rulebook(indices, out, pairs, counts, list(spatial_shape), out_shape, subm,
                    list(ksize), list(stride))  # fmt: skip
