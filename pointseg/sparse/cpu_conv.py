"""The CPU gather-GEMM-scatter loop of a sparse conv, on a ``rulebook.Rulebook``.

A sparse conv on the CPU is one loop over kernel offsets: gather the input rows of the offset's
pairs, multiply by the offset's weight, add the products into the output rows. pointseg keeps
spconv's plan, rulebook format and weight layout (KRSC: ``(C_out, *kernel, C_in)``):

- rows are gathered with ``torch.index_select`` and multiplied with ``torch.mm``, on all of the
  step's threads (spconv's ``gather_cpu`` uses one);
- products are added into their target rows by spconv's own ``scatter_add_cpu``, on one OpenMP
  thread (``threads.single_openmp_thread``, which changes only the calling thread's count):
  on more, spconv's kernel shares its row pointers between threads and adds rows into the wrong
  outputs. Within one offset every target row appears at most once, so the kernel's sum is
  exactly ``out + rows`` in any pair order. It beat every exact multi-thread scatter tried: a
  product with a 0/1 CSR matrix (whose row pointers and matrices cost as much to build, per
  forward, as the product itself), ``Tensor.scatter_add_`` and ``index_put_``;
- rows are processed in blocks of ``BLOCK_BYTES``, so gather, GEMM and scatter meet in cache;
- the backward pass skips the input gradient when the input needs none (the data).

The loop's pieces (``block_rows``, ``blocks``, ``offset_pairs``, ``scatter_add``) are public:
``grouped`` runs its grouped and depthwise loops on them.

Summation order per output row is spconv's (the centre offset first for submanifold convs, then
offsets in order), so outputs and input gradients equal spconv's loop bit for bit; weight
gradients are summed block by block, so they agree to rounding (``tests/test_rulebook.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from spconv.core_cc.csrc.sparse.all import SpconvOps
from spconv.pytorch.cppcore import torch_tensor_to_tv
from torch import Tensor

from pointseg.sparse.rulebook import Rulebook, offset_counts
from pointseg.threads import single_openmp_thread

# Rows per block: the gathered input and output rows of a block (C_in + C_out floats a row) take
# about this many bytes, so they stay in the last-level cache between the three steps (on 460 k
# voxels a training step of spunet_small took 5.5 s instead of 7.0 s).
BLOCK_BYTES = 1 << 22


def block_rows(c_in: int, c_out: int) -> int:
    """Pairs per block: ``BLOCK_BYTES`` of float32 input and output rows (at least 1024)."""
    return max(1024, BLOCK_BYTES // (4 * (c_in + c_out)))


def blocks(n: int, c_in: int, c_out: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of the blocks of ``block_rows`` pairs covering ``n`` pairs."""
    step = block_rows(c_in, c_out)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def offset_pairs(rb: Rulebook, k: int, n: int, side: int) -> tuple[Tensor, Tensor]:
    """(other rows, target rows) of offset ``k``'s ``n`` pairs, int32 views; ``side`` is the
    pairs row (0: input sites, 1: output sites) that the products are added into."""
    return rb.indice_pairs[1 - side, k, :n], rb.indice_pairs[side, k, :n]


def scatter_add(out: Tensor, rows: Tensor, target: Tensor) -> None:
    """out[target] += rows, exactly, for int32 ``target`` rows that are all different."""
    if not (out.is_contiguous() and rows.is_contiguous()):  # the kernel reads row-major memory
        raise ValueError("cpu_conv.scatter_add needs contiguous tensors")
    tv = torch_tensor_to_tv
    if torch.get_num_threads() == 1:
        SpconvOps.scatter_add_cpu(tv(out), tv(rows), tv(target))
        return
    with single_openmp_thread():
        SpconvOps.scatter_add_cpu(tv(out), tv(rows), tv(target))


def conv_forward(features: Tensor, filters: Tensor, rb: Rulebook, *, inverse: bool) -> Tensor:
    """(N_out, C_out) output of a sparse conv of CPU float32 ``features`` (N_in, C_in);
    ``inverse`` runs the rulebook backwards (output sites -> input sites)."""
    features = features.contiguous()
    c_out, c_in = filters.shape[0], filters.shape[-1]
    weight = filters.reshape(c_out, -1, c_in)  # (C_out, K, C_in)
    kv = weight.shape[1]
    num_out = rb.indices.shape[0] if inverse else rb.out_indices.shape[0]
    if rb.is_subm:
        out = torch.mm(features, weight[:, kv // 2].t())
    else:
        out = features.new_zeros((num_out, c_out))
    target = 0 if inverse else 1
    offsets = list(offset_counts(rb.indice_pair_num, rb.is_subm))
    if not offsets:
        return out
    step = block_rows(c_in, c_out)
    rows_in = features.new_empty((min(max(n for _, n in offsets), step), c_in))
    rows_out = features.new_empty((rows_in.shape[0], c_out))
    for k, n in offsets:
        src, dst = offset_pairs(rb, k, n, target)
        w = weight[:, k].t()
        for lo, hi in blocks(n, c_in, c_out):
            a, b = rows_in[: hi - lo], rows_out[: hi - lo]
            torch.index_select(features, 0, src[lo:hi], out=a)
            torch.mm(a, w, out=b)
            scatter_add(out, b, dst[lo:hi])
    return out


def conv_backward(
    features: Tensor,
    filters: Tensor,
    grad_out: Tensor,
    rb: Rulebook,
    *,
    inverse: bool,
    input_grad: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """(grad wrt features or None, grad wrt filters) of ``conv_forward``."""
    features, grad_out = features.contiguous(), grad_out.contiguous()
    c_out, c_in = filters.shape[0], filters.shape[-1]
    weight = filters.reshape(c_out, -1, c_in)
    kv = weight.shape[1]
    grad_w = torch.zeros((kv, c_out, c_in), dtype=filters.dtype)  # per offset, contiguous
    grad_in = None
    if rb.is_subm:
        torch.mm(grad_out.t(), features, out=grad_w[kv // 2])
        if input_grad:
            grad_in = torch.mm(grad_out, weight[:, kv // 2])
    elif input_grad:
        grad_in = torch.zeros_like(features)
    source = 1 if inverse else 0  # the pairs row of this conv's input sites
    offsets = list(offset_counts(rb.indice_pair_num, rb.is_subm))
    if offsets:
        step = block_rows(c_in, c_out)
        rows_in = features.new_empty((min(max(n for _, n in offsets), step), c_in))
        rows_out = features.new_empty((rows_in.shape[0], c_out))
        for k, n in offsets:
            dst, src = offset_pairs(rb, k, n, source)
            gw, w = grad_w[k], weight[:, k]
            for lo, hi in blocks(n, c_in, c_out):
                a, b = rows_in[: hi - lo], rows_out[: hi - lo]
                torch.index_select(features, 0, src[lo:hi], out=a)
                torch.index_select(grad_out, 0, dst[lo:hi], out=b)
                if lo == 0:
                    torch.mm(b.t(), a, out=gw)
                else:
                    gw.addmm_(b.t(), a)
                if grad_in is not None:
                    torch.mm(b, w, out=a)
                    scatter_add(grad_in, a, src[lo:hi])
    return grad_in, grad_w.permute(1, 0, 2).reshape(filters.shape)
