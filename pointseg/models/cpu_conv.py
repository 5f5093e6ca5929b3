"""The CPU gather-GEMM-scatter loop of a sparse conv, on spconv's rulebooks and kernels.

spconv runs a sparse conv on the CPU as one loop over kernel offsets: gather the input rows of
the offset's pairs, multiply by the offset's weight, scatter-add into the output rows. pointseg
keeps that plan, spconv's rulebooks, its weight layout and its scatter-add kernel, and changes
three things (each measured on the o3dml_plan training step, see ``docs/benchmarks.md``):

- rows are gathered with ``torch.index_select``, which uses every torch thread (spconv's
  ``gather_cpu`` uses one);
- the scatter-add runs on one thread (see ``spconv_compat``: spconv's multi-threaded one races);
- the backward pass skips the input gradient when the input needs none (the first conv of a
  network: its input is the data), which spconv always computes.

Weights are KRSC: (C_out, *kernel, C_in), spconv's layout on every device. Summation order per
output row is spconv's (the centre offset first for submanifold convs, then offsets in order), so
results match spconv's own loop bit for bit; weight gradients are summed per block of rows, so
they match to rounding (``tests/test_rulebook.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from spconv.core_cc.csrc.sparse.all import SpconvOps
from spconv.pytorch.cppcore import torch_tensor_to_tv
from torch import Tensor

from pointseg.models.rulebook import offset_counts


def scatter_add_tv(out, rows, index) -> None:
    """out[index[i]] += rows[i] on tensorview tensors (CPU, no copies): spconv's own kernel, on
    one OpenMP thread. spconv's OpenMP calls resolve to torch's runtime, so torch's thread count
    is set to 1 for the call and restored after; with more threads the kernel races."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        SpconvOps.scatter_add_cpu(out, rows, index)
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def scatter_add_rows(out: Tensor, rows: Tensor, index: Tensor) -> None:
    """out[index[i]] += rows[i] for torch tensors (``scatter_add_tv``)."""
    tv = torch_tensor_to_tv
    scatter_add_tv(tv(out), tv(rows), tv(index))


# Rows per block of the gather-GEMM-scatter loop: the two blocks (C_in + C_out floats a row)
# take about this many bytes, so they stay in the last-level cache between the three steps
# (on 460 k voxels a training step of spunet_small took 5.5 s instead of 7.0 s; small scenes,
# whose offsets fit in one block, are unchanged). Weight gradients are summed block by block.
BLOCK_BYTES = 1 << 22


def _block_rows(c_in: int, c_out: int) -> int:
    """Pairs per block: ``BLOCK_BYTES`` of float32 input and output rows (at least 1024)."""
    return max(1024, BLOCK_BYTES // (4 * (c_in + c_out)))


def _blocks(n: int, c_in: int, c_out: int) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges covering ``n`` pairs, each at most ``_block_rows`` long."""
    step = _block_rows(c_in, c_out)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _row_buffers(
    like: Tensor, offsets: list[tuple[int, int]], c_in: int, c_out: int
) -> tuple[Tensor, Tensor]:
    """Gather buffers (rows, C_in) and (rows, C_out), as long as the longest block."""
    rows = min(max(n for _, n in offsets), _block_rows(c_in, c_out))
    return like.new_empty((rows, c_in)), like.new_empty((rows, c_out))


def conv_forward(
    features: Tensor,
    filters: Tensor,
    pairs: Tensor,
    counts: Tensor,
    num_out: int,
    *,
    inverse: bool,
    subm: bool,
) -> Tensor:
    """(num_out, C_out) output of a sparse conv of CPU float32 ``features`` (N, C_in)."""
    features = features.contiguous()
    c_out, c_in = filters.shape[0], filters.shape[-1]
    weight = filters.reshape(c_out, -1, c_in)  # (C_out, K, C_in)
    kv = weight.shape[1]
    if subm:
        out = torch.mm(features, weight[:, kv // 2].t())
    else:
        out = features.new_zeros((num_out, c_out))
    offsets = list(offset_counts(counts, subm))
    if not offsets:
        return out
    rows_in, rows_out = _row_buffers(features, offsets, c_in, c_out)
    src, dst = pairs[int(inverse)], pairs[int(not inverse)]
    for k, n in offsets:
        w = weight[:, k].t()
        for lo, hi in _blocks(n, c_in, c_out):
            a, b = rows_in[: hi - lo], rows_out[: hi - lo]
            torch.index_select(features, 0, src[k, lo:hi], out=a)
            torch.mm(a, w, out=b)
            scatter_add_rows(out, b, dst[k, lo:hi])
    return out


def conv_backward(
    features: Tensor,
    filters: Tensor,
    grad_out: Tensor,
    pairs: Tensor,
    counts: Tensor,
    *,
    inverse: bool,
    subm: bool,
    input_grad: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """(grad wrt features or None, grad wrt filters) of ``conv_forward``."""
    features, grad_out = features.contiguous(), grad_out.contiguous()
    c_out, c_in = filters.shape[0], filters.shape[-1]
    weight = filters.reshape(c_out, -1, c_in)
    kv = weight.shape[1]
    grad_w = torch.zeros((kv, c_out, c_in), dtype=filters.dtype)  # per offset, contiguous
    grad_in = None
    if subm:
        torch.mm(grad_out.t(), features, out=grad_w[kv // 2])
        if input_grad:
            grad_in = torch.mm(grad_out, weight[:, kv // 2])
    elif input_grad:
        grad_in = torch.zeros_like(features)
    offsets = list(offset_counts(counts, subm))
    if offsets:
        rows_in, rows_out = _row_buffers(features, offsets, c_in, c_out)
        src, dst = pairs[int(inverse)], pairs[int(not inverse)]
        for k, n in offsets:
            gw, w = grad_w[k], weight[:, k]
            for lo, hi in _blocks(n, c_in, c_out):
                a, b = rows_in[: hi - lo], rows_out[: hi - lo]
                torch.index_select(features, 0, src[k, lo:hi], out=a)
                torch.index_select(grad_out, 0, dst[k, lo:hi], out=b)
                if lo == 0:
                    torch.mm(b.t(), a, out=gw)
                else:
                    gw.addmm_(b.t(), a)
                if grad_in is not None:
                    torch.mm(b, w, out=a)
                    scatter_add_rows(grad_in, a, src[k, lo:hi])
    return grad_in, grad_w.permute(1, 0, 2).reshape(filters.shape)
