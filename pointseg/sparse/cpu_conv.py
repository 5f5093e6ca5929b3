"""The CPU gather-GEMM-scatter loop of a sparse conv, on a ``rulebook.Rulebook``.

A sparse conv on the CPU is one loop over kernel offsets: gather the input rows of the offset's
pairs, multiply by the offset's weight, add the products into the output rows. pointseg keeps
spconv's plan, rulebook format and weight layout (KRSC: ``(C_out, *kernel, C_in)``) and runs
every step on torch ops that use the whole step's thread count, with no thread toggling:

- rows are gathered with ``torch.index_select`` (all threads; spconv's ``gather_cpu`` uses one);
- on one thread the scatter-add is spconv's own ``scatter_add_cpu`` (the fastest there: 1.6 s of
  a 2 M-point predict took 0.9 s with it); on more threads, where that kernel races (it shares
  row pointers between threads and adds rows to the wrong outputs), it is a product with a 0/1
  CSR matrix, ``out[r0:r1] += S @ rows`` (torch's sparse
  CSR ``addmm``, multi-threaded over output rows, so no two threads write one row). Within one
  offset every output row appears at most once, so each row of ``S`` holds at most one 1 and the
  sum is exactly ``out + rows``, as spconv's kernel computes it.
  The pairs of each offset are put in target-row order once per forward (usually they already
  are) and the matrices are cached on the rulebook, for every conv of the level and backward;
- rows are processed in blocks of ``BLOCK_BYTES``, so gather, GEMM and scatter meet in cache;
- the backward pass skips the input gradient when the input needs none (the data).

Summation order per output row is spconv's (the centre offset first for submanifold convs, then
offsets in order), so outputs and input gradients equal spconv's loop bit for bit; weight
gradients are summed block by block, so they agree to rounding (``tests/test_rulebook.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from spconv.core_cc.csrc.sparse.all import SpconvOps
from spconv.pytorch.cppcore import torch_tensor_to_tv
from torch import Tensor

from pointseg.sparse.rulebook import Rulebook, offset_counts

# Rows per block: the gathered input and output rows of a block (C_in + C_out floats a row) take
# about this many bytes, so they stay in the last-level cache between the three steps (on 460 k
# voxels a training step of spunet_small took 5.5 s instead of 7.0 s).
BLOCK_BYTES = 1 << 22

# torch warns that sparse CSR support is in beta on the first CSR tensor; the product used here
# (CSR @ dense into a dense slice) is tested bit for bit against spconv (tests/test_rulebook.py)
warnings.filterwarnings(
    "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
)


def _block_rows(c_in: int, c_out: int) -> int:
    """Pairs per block: ``BLOCK_BYTES`` of float32 input and output rows (at least 1024)."""
    return max(1024, BLOCK_BYTES // (4 * (c_in + c_out)))


def _blocks(n: int, c_in: int, c_out: int) -> Iterator[tuple[int, int]]:
    step = _block_rows(c_in, c_out)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _is_sorted(t: Tensor) -> bool:
    return t.numel() < 2 or bool((t[1:] >= t[:-1]).all())


def _offset_order(rb: Rulebook, k: int, n: int, side: int) -> tuple[Tensor, Tensor]:
    """(other rows, target rows ascending) of offset ``k``'s ``n`` pairs; ``side`` is the pairs
    row (0: input sites, 1: output sites) that the products are added into. Cached on the
    rulebook."""
    key = ("order", k, side)
    got = rb.cache.get(key)
    if got is None:
        target, other = rb.indice_pairs[side, k, :n], rb.indice_pairs[1 - side, k, :n]
        if not _is_sorted(target):
            order = torch.argsort(target, stable=True)
            target, other = target[order], other[order]
        got = rb.cache[key] = (other.contiguous(), target.contiguous())
    return got


def _row_pointers(rb: Rulebook, k: int, n: int, side: int) -> Tensor:
    """CSR row pointers of offset ``k``'s products over the target rows. Cached."""
    key = ("crow", k, side)
    got = rb.cache.get(key)
    if got is None:
        target = _offset_order(rb, k, n, side)[1]
        rows = rb.indices.shape[0] if side == 0 else rb.out_indices.shape[0]
        got = torch.zeros(rows + 1, dtype=torch.int32)
        torch.cumsum(torch.bincount(target, minlength=rows), 0, out=got[1:])
        rb.cache[key] = got
    return got


_ONES: dict[torch.dtype, Tensor] = {}
_COLS = torch.arange(0, dtype=torch.int32)


def _ones_and_cols(n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``n`` ones of ``dtype`` and ``0 .. n - 1`` (int32): views of buffers kept between calls,
    so a block's matrix allocates only its row pointers."""
    global _COLS
    ones = _ONES.get(dtype)
    if ones is None or ones.numel() < n:
        ones = _ONES[dtype] = torch.ones(max(n, 1 << 16), dtype=dtype)
    if _COLS.numel() < n:
        _COLS = torch.arange(max(n, 1 << 16), dtype=torch.int32)
    return ones[:n], _COLS[:n]


def _scatter_matrix(rb: Rulebook, k: int, n: int, side: int, lo: int, hi: int, dtype):
    """(first target row, 0/1 CSR matrix) adding block ``lo:hi`` of offset ``k``'s products into
    the target rows it touches."""
    key = ("csr", k, side, lo, hi, dtype)
    got = rb.cache.get(key)
    if got is None:
        target, crow = _offset_order(rb, k, n, side)[1], _row_pointers(rb, k, n, side)
        r0, r1 = int(target[lo]), int(target[hi - 1]) + 1
        pointers = crow[r0 : r1 + 1]
        ones, cols = _ones_and_cols(hi - lo, dtype)
        matrix = torch.sparse_csr_tensor(
            pointers - lo if lo else pointers, cols, ones, size=(r1 - r0, hi - lo),
            check_invariants=False,
        )  # fmt: skip
        got = rb.cache[key] = (r0, matrix)
    return got


def _scatter_add(out: Tensor, rows: Tensor, rb: Rulebook, k: int, n: int, side: int, lo, hi):
    """out[target rows of pairs lo:hi] += rows, exactly: on one thread with spconv's kernel,
    on more with the CSR product."""
    if torch.get_num_threads() == 1:
        target = _offset_order(rb, k, n, side)[1]
        tv = torch_tensor_to_tv
        SpconvOps.scatter_add_cpu(tv(out), tv(rows), tv(target[lo:hi]))
        return
    r0, matrix = _scatter_matrix(rb, k, n, side, lo, hi, rows.dtype)
    part = out[r0 : r0 + matrix.shape[0]]
    torch.addmm(part, matrix, rows, out=part)


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
    step = _block_rows(c_in, c_out)
    rows_in = features.new_empty((min(max(n for _, n in offsets), step), c_in))
    rows_out = features.new_empty((rows_in.shape[0], c_out))
    for k, n in offsets:
        src = _offset_order(rb, k, n, target)[0]
        w = weight[:, k].t()
        for lo, hi in _blocks(n, c_in, c_out):
            a, b = rows_in[: hi - lo], rows_out[: hi - lo]
            torch.index_select(features, 0, src[lo:hi], out=a)
            torch.mm(a, w, out=b)
            _scatter_add(out, b, rb, k, n, target, lo, hi)
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
        step = _block_rows(c_in, c_out)
        rows_in = features.new_empty((min(max(n for _, n in offsets), step), c_in))
        rows_out = features.new_empty((rows_in.shape[0], c_out))
        for k, n in offsets:
            dst, src = _offset_order(rb, k, n, source)
            gw, w = grad_w[k], weight[:, k]
            for lo, hi in _blocks(n, c_in, c_out):
                a, b = rows_in[: hi - lo], rows_out[: hi - lo]
                torch.index_select(features, 0, src[lo:hi], out=a)
                torch.index_select(grad_out, 0, dst[lo:hi], out=b)
                if lo == 0:
                    torch.mm(b.t(), a, out=gw)
                else:
                    gw.addmm_(b.t(), a)
                if grad_in is not None:
                    torch.mm(b, w, out=a)
                    _scatter_add(grad_in, a, rb, k, n, source, lo, hi)
    return grad_in, grad_w.permute(1, 0, 2).reshape(filters.shape)
