"""Grouped and depthwise submanifold sparse convs (spconv has neither).

A conv with ``groups = G`` splits the ``C_in`` input and ``C_out`` output channels into G
consecutive groups; output group g sees only input group g (``torch.nn.Conv3d(groups=G)``).
The weight keeps the KRSC layout ``(C_out, kD, kH, kW, C_in / G)``; depthwise is
``G == C_in == C_out``: one spatial filter per channel, ``kv`` multiply-adds a channel and site
instead of ``kv * C_in``.

Two kernels, both on the conv's submanifold rulebook (the one its ``indice_key`` shares with the
level's other convs):

- ``Rulebook`` (pointseg's CPU backend): the loop of ``cpu_conv`` over kernel offsets, with its
  cached per-offset pair orders and CSR scatter matrices: gather the offset's input rows, a
  per-channel product (depthwise) or one batched matmul over the groups, add into the output
  rows. The input gradient is the same loop run backwards (``side=0``) with the per-group
  weights transposed; the weight gradient gathers inputs and output gradients per offset.
- spconv's rulebooks (CUDA, or the spconv backend): the neighbours are gathered once into an
  ``(N, kv)`` map (``gather_conv.neighbour_map``, or the implicit-GEMM rulebook's ``pair_fwd``);
  rows are processed in blocks: gather ``(rows, kv, C_in)`` and one batched matmul per block;
  the input gradient is one ``index_add_`` per block. Tested on the CPU (spconv backend), not
  yet on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from spconv.pytorch.core import ImplicitGemmIndiceData
from torch import Tensor

from pointseg.sparse import gather_conv
from pointseg.sparse.cpu_conv import _block_rows, _blocks, _offset_order, _scatter_add
from pointseg.sparse.rulebook import Rulebook, offset_counts

# Gathered bytes per block of the neighbour-map path: (rows, kv, C_in) floats.
GATHER_BLOCK_BYTES = 1 << 26


def check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    """Refuse a ``groups`` that does not divide both channel counts."""
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must be >= 1 and divide in_channels={in_channels} and "
            f"out_channels={out_channels}"
        )


def split_weight(filters: Tensor, groups: int) -> Tensor:
    """KRSC ``filters`` (C_out, *kernel, C_in / G) -> (kv, G, C_in / G, C_out / G)."""
    c_out, c_ig = filters.shape[0], filters.shape[-1]
    return filters.reshape(groups, c_out // groups, -1, c_ig).permute(2, 0, 3, 1)


def merge_weight(w: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of ``split_weight``: (kv, G, C_in / G, C_out / G) -> KRSC ``shape``."""
    return w.permute(1, 3, 0, 2).reshape(shape)


def group_mm(rows: Tensor, w: Tensor) -> Tensor:
    """(n, G * Ci) rows times per-group (G, Ci, Co) weights -> (n, G * Co)."""
    g, ci, co = w.shape
    n = rows.shape[0]
    if ci == 1 and co == 1:  # depthwise: a per-channel scale
        return rows * w.reshape(1, g)
    out = torch.bmm(rows.view(n, g, ci).transpose(0, 1), w)  # (G, n, Co)
    return out.transpose(0, 1).reshape(n, g * co)


def group_outer(a: Tensor, b: Tensor, groups: int, *, scratch: bool = False) -> Tensor:
    """sum_rows a_g^T b_g per group: (n, G * Ci), (n, G * Co) -> (G, Ci, Co). ``scratch``:
    ``a`` may be overwritten."""
    n = a.shape[0]
    ci, co = a.shape[1] // groups, b.shape[1] // groups
    if ci == 1 and co == 1:  # depthwise
        return (a.mul_(b) if scratch else a * b).sum(0).reshape(groups, 1, 1)
    return torch.bmm(a.view(n, groups, ci).permute(1, 2, 0), b.view(n, groups, co).transpose(0, 1))


# --- pointseg's CPU rulebook: per-offset pairs, cpu_conv's cached orders and scatters ---------


def _offset_loop(x: Tensor, w: Tensor, rb: Rulebook, side: int, out: Tensor) -> Tensor:
    """out[target] += x[other] (x) w[k] over every offset's pairs; ``side`` 1 adds into output
    rows (forward), 0 into input rows (input gradient). ``w`` (kv, G, Ci, Co). Rows are gathered
    into one reused buffer and, depthwise, scaled in place: fresh multi-MB tensors per offset
    cost as much as the arithmetic (60 ms against 100 ms for a 32-channel conv, 114 k sites)."""
    offsets = list(offset_counts(rb.indice_pair_num, rb.is_subm))
    if not offsets:
        return out
    c_in, c_out = x.shape[1], out.shape[1]
    scale = w.reshape(w.shape[0], -1) if w.shape[2] == w.shape[3] == 1 else None  # (kv, C)
    buf = x.new_empty((min(max(n for _, n in offsets), _block_rows(c_in, c_out)), c_in))
    for k, n in offsets:
        other = _offset_order(rb, k, n, side)[0]
        for lo, hi in _blocks(n, c_in, c_out):
            rows = torch.index_select(x, 0, other[lo:hi], out=buf[: hi - lo])  # (rows, C_in)
            prod = rows.mul_(scale[k]) if scale is not None else group_mm(rows, w[k])
            _scatter_add(out, prod, rb, k, n, side, lo, hi)
    return out


def cpu_forward(features: Tensor, filters: Tensor, rb: Rulebook, *, groups: int) -> Tensor:
    """(N, C_out) output of a grouped submanifold conv of CPU float32 ``features``."""
    features = features.contiguous()
    w = split_weight(filters, groups)  # (kv, G, Ci, Co)
    out = group_mm(features, w[w.shape[0] // 2])  # the centre: every row with itself
    return _offset_loop(features, w, rb, 1, out)


def cpu_backward(
    features: Tensor,
    filters: Tensor,
    grad_out: Tensor,
    rb: Rulebook,
    *,
    groups: int,
    input_grad: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """(grad wrt features or None, grad wrt filters) of ``cpu_forward``."""
    features, grad_out = features.contiguous(), grad_out.contiguous()
    w = split_weight(filters, groups)
    kv = w.shape[0]
    grad_w = torch.zeros(w.shape, dtype=w.dtype)  # (kv, G, Ci, Co)
    grad_w[kv // 2] = group_outer(features, grad_out, groups)
    c_in, c_out = features.shape[1], grad_out.shape[1]
    rows = _block_rows(c_in, c_out)
    buf_a, buf_b = features.new_empty((rows, c_in)), features.new_empty((rows, c_out))
    for k, n in offset_counts(rb.indice_pair_num, rb.is_subm):
        src, dst, _ = _offset_order(rb, k, n, 1)  # input rows, output rows
        for lo, hi in _blocks(n, c_in, c_out):
            a = torch.index_select(features, 0, src[lo:hi], out=buf_a[: hi - lo])
            b = torch.index_select(grad_out, 0, dst[lo:hi], out=buf_b[: hi - lo])
            grad_w[k] += group_outer(a, b, groups, scratch=True)
    grad_in = None
    if input_grad:
        wt = w.transpose(2, 3)  # (kv, G, Co, Ci): output groups back to input groups
        grad_in = _offset_loop(grad_out, wt, rb, 0, group_mm(grad_out, wt[kv // 2]))
    return grad_in, merge_weight(grad_w, filters.shape)


class GroupedCPUConv(torch.autograd.Function):
    """``cpu_forward`` with autograd; the rulebook's cached orders are shared with backward."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, rb: Rulebook, groups: int) -> Tensor:
        ctx.save_for_backward(features, weight)
        ctx.rb, ctx.groups = rb, groups
        return cpu_forward(features, weight, rb, groups=groups)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor, None, None]:
        features, weight = ctx.saved_tensors
        grad_in, grad_w = cpu_backward(
            features,
            weight,
            grad_out,
            ctx.rb,
            groups=ctx.groups,
            input_grad=ctx.needs_input_grad[0],
        )
        return grad_in, grad_w, None, None


# --- spconv's rulebooks (CUDA, spconv backend): a neighbour map and batched matmuls -------------


def neighbours(rb: Any, num_rows: int) -> Tensor:
    """(num_rows, kv) int64 input row of every site's neighbour at every offset, ``num_rows``
    where there is none, from a submanifold rulebook of spconv (Native or implicit GEMM)."""
    if isinstance(rb, ImplicitGemmIndiceData):
        nbr = rb.pair_fwd.t().long()  # pair_fwd: (kv, N_out) input rows, -1 where none
        nbr = torch.where(nbr < 0, torch.full_like(nbr, num_rows), nbr)
        nbr[:, nbr.shape[1] // 2] = torch.arange(num_rows, device=nbr.device)
        return nbr
    return gather_conv.neighbour_map(rb.indice_pairs, rb.indice_pair_num, num_rows)


def _row_blocks(n: int, kv: int, c_in: int, element_size: int) -> list[tuple[int, int]]:
    step = max(1, GATHER_BLOCK_BYTES // max(1, kv * c_in * element_size))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def _columns(padded: Tensor, nbr: Tensor, groups: int) -> Tensor:
    """(G, rows, kv * Ci) gathered neighbour features of the rows of ``nbr`` (rows, kv)."""
    rows, kv = nbr.shape
    ci = padded.shape[1] // groups
    cols = padded[nbr].view(rows, kv, groups, ci)
    return cols.permute(2, 0, 1, 3).reshape(groups, rows, kv * ci)


def gather_forward(features: Tensor, filters: Tensor, nbr: Tensor, *, groups: int) -> Tensor:
    """(N, C_out) output of a grouped submanifold conv on a neighbour map, any device."""
    n, kv = nbr.shape
    w = split_weight(filters, groups)  # (kv, G, Ci, Co)
    wg = w.permute(1, 0, 2, 3).reshape(groups, -1, w.shape[3])  # (G, kv * Ci, Co)
    padded = torch.cat([features, features.new_zeros((1, features.shape[1]))])
    out = features.new_empty((n, filters.shape[0]))
    for lo, hi in _row_blocks(n, kv, features.shape[1], features.element_size()):
        part = torch.bmm(_columns(padded, nbr[lo:hi], groups), wg)  # (G, rows, Co)
        out[lo:hi] = part.transpose(0, 1).reshape(hi - lo, -1)
    return out


def gather_backward(
    features: Tensor,
    filters: Tensor,
    grad_out: Tensor,
    nbr: Tensor,
    *,
    groups: int,
    input_grad: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """(grad wrt features or None, grad wrt filters) of ``gather_forward``."""
    n, kv = nbr.shape
    c_in = features.shape[1]
    w = split_weight(filters, groups)
    ci, co = w.shape[2], w.shape[3]
    wg = w.permute(1, 0, 2, 3).reshape(groups, kv * ci, co)
    padded = torch.cat([features, features.new_zeros((1, c_in))])
    grad_wg = torch.zeros_like(wg)
    grad_pad = features.new_zeros((n + 1, c_in)) if input_grad else None
    for lo, hi in _row_blocks(n, kv, c_in, features.element_size()):
        g = grad_out[lo:hi].reshape(hi - lo, groups, co).transpose(0, 1)  # (G, rows, Co)
        grad_wg += torch.bmm(_columns(padded, nbr[lo:hi], groups).transpose(1, 2), g)
        if grad_pad is not None:
            cols = torch.bmm(g, wg.transpose(1, 2))  # (G, rows, kv * Ci)
            cols = cols.view(groups, hi - lo, kv, ci).permute(1, 2, 0, 3).reshape(-1, c_in)
            grad_pad.index_add_(0, nbr[lo:hi].reshape(-1), cols)
    grad_w = grad_wg.view(groups, kv, ci, co).permute(1, 0, 2, 3)  # (kv, G, Ci, Co)
    grad_in = grad_pad[:-1] if grad_pad is not None else None
    return grad_in, merge_weight(grad_w, filters.shape)


class GroupedGatherConv(torch.autograd.Function):
    """``gather_forward`` with autograd."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, nbr: Tensor, groups: int) -> Tensor:
        ctx.save_for_backward(features, weight, nbr)
        ctx.groups = groups
        return gather_forward(features, weight, nbr, groups=groups)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor, None, None]:
        features, weight, nbr = ctx.saved_tensors
        grad_in, grad_w = gather_backward(
            features,
            weight,
            grad_out.contiguous(),
            nbr,
            groups=ctx.groups,
            input_grad=ctx.needs_input_grad[0],
        )
        return grad_in, grad_w, None, None


def grouped_conv(features: Tensor, weight: Tensor, rb: Any, *, groups: int) -> Tensor:
    """(N, C_out) grouped submanifold conv of ``features`` on ``rb``, on its kernel."""
    kv = weight[0].numel() // weight.shape[-1]
    if not rb.is_subm:
        raise ValueError("grouped sparse convs are submanifold only (groups > 1 needs SubMConv3d)")
    rb_kv = len(rb.indice_pair_num) if not isinstance(rb, ImplicitGemmIndiceData) else None
    if rb_kv is not None and rb_kv != kv:
        raise ValueError(
            f"the rulebook has {rb_kv} kernel offsets, the weight {kv}: give convs of other "
            "kernel sizes their own indice_key"
        )
    if isinstance(rb, Rulebook):
        if features.dtype != torch.float32 or weight.dtype != torch.float32:
            raise TypeError(f"CPU sparse convs run in float32, got {features.dtype} features")
        return GroupedCPUConv.apply(features, weight, rb, groups)
    if features.dtype != weight.dtype:
        raise TypeError(f"features are {features.dtype}, the weight {weight.dtype}")
    nbr = neighbours(rb, features.shape[0])
    if nbr.shape[1] != kv:
        raise ValueError(f"the rulebook has {nbr.shape[1]} kernel offsets, the weight {kv}")
    return GroupedGatherConv.apply(features, weight, nbr, groups)
