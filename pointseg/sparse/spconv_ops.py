"""spconv's own rulebooks and conv ops, called directly (no spconv module in between).

Used by ``functional`` for the ``"spconv"`` backend on every device and for CUDA convs of the
``"pointseg"`` backend. Workarounds for spconv 2.3.8 live here, where its ops are called:

- On a CPU-only torch, spconv's backward (``ops.indice_conv_backward``) asks
  ``torch.cuda.current_stream()`` and asserts. ``with allow_cpu_backward():`` points
  ``spconv.pytorch.ops.get_current_stream`` at a function returning 0 (the "no stream" value
  its CPU kernels take) for the block only, and puts spconv's function back afterwards. It is
  the one change pointseg makes to spconv, made explicitly and scoped: around the backward of
  the spconv convs this module runs (``native_conv``'s autograd functions enter it), or by a
  user around the backward of a network with plain ``spconv.pytorch`` layers
  (``pointseg.sparse`` exports it). Blocks nest and may overlap across threads: spconv's
  function is put back when the last one ends. Nothing is changed when CUDA is available.
- Under CUDA autocast an eval-mode implicit-GEMM call gets fp16 features and fp32 weights and
  spconv's tuner asserts "can't find suitable algorithm": both are cast to fp16 first, as
  spconv's autograd functions do in training. (spconv 2.3.8 has no bf16 conv kernels.)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from spconv.core import ConvAlgo
from spconv.pytorch import SparseConvTensor, ops
from spconv.pytorch import functional as Fsp
from spconv.pytorch.core import ImplicitGemmIndiceData, IndiceData
from torch import Tensor

# spconv's choice for a conv built with algo=None: implicit GEMM up to 32 kernel offsets, Native
# above (its large-kernel implicit GEMM would compile kernels at run time with NVRTC).
IMPLICIT_GEMM_MAX_OFFSETS = 32


def _no_stream() -> int:
    return 0


_lock = threading.Lock()
_depth = 0  # blocks of allow_cpu_backward open now, in any thread
_saved: list[Any] = []  # spconv's get_current_stream while they are


@contextlib.contextmanager
def allow_cpu_backward() -> Iterator[None]:
    """Within the block, spconv's backward runs on CPU tensors with a CPU-only torch (module
    doc); spconv's ``ops.get_current_stream`` is restored when the last open block ends."""
    global _depth
    if torch.cuda.is_available():
        yield
        return
    with _lock:
        if _depth == 0:
            _saved.append(ops.get_current_stream)
            ops.get_current_stream = _no_stream
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                ops.get_current_stream = _saved.pop()


def _scoped_backward(function: type[torch.autograd.Function]) -> Any:
    """``function.apply`` of a subclass of spconv's autograd ``function`` whose backward runs
    inside ``allow_cpu_backward``; the forward and the backward's arithmetic are spconv's."""

    class Scoped(function):  # type: ignore[misc, valid-type]
        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            with allow_cpu_backward():
                return function.backward(ctx, *grads)

    Scoped.__name__ = Scoped.__qualname__ = f"Scoped{function.__name__}"
    return Scoped.apply


_subm_conv = _scoped_backward(Fsp.SubMConvFunction)
_inverse_conv = _scoped_backward(Fsp.SparseInverseConvFunction)
_conv = _scoped_backward(Fsp.SparseConvFunction)


def algo_for(features: Tensor, kv: int) -> ConvAlgo:
    """spconv's algorithm for a conv with ``kv`` kernel offsets on ``features``' device."""
    if not features.is_cuda or kv > IMPLICIT_GEMM_MAX_OFFSETS:
        return ConvAlgo.Native
    return ConvAlgo.MaskImplicitGemm


def native_rulebook(x: SparseConvTensor, *, subm, ksize, stride, padding, dilation) -> IndiceData:
    """spconv's Native rulebook of a conv over ``x``'s sites (its hash-table builder)."""
    outids, pairs, counts = ops.get_indice_pairs(
        x.indices, x.batch_size, x.spatial_shape, ConvAlgo.Native, ksize, stride, padding,
        dilation, [0] * len(ksize), subm, False,
    )  # fmt: skip
    out_shape = x.spatial_shape if subm else _out_shape(x, ksize, stride, padding, dilation)
    return IndiceData(outids, x.indices, pairs, counts, x.spatial_shape, out_shape, is_subm=subm,
                      algo=ConvAlgo.Native, ksize=ksize, stride=stride, padding=padding,
                      dilation=dilation)  # fmt: skip


def implicit_rulebook(
    x: SparseConvTensor, *, subm, ksize, stride, padding, dilation, algo
) -> ImplicitGemmIndiceData:
    """spconv's implicit-GEMM rulebook (CUDA); built with backward pairs, as spconv does."""
    training = torch.is_grad_enabled()
    res = ops.get_indice_pairs_implicit_gemm(
        x.indices, x.batch_size, x.spatial_shape, algo, ksize=ksize, stride=stride,
        padding=padding, dilation=dilation, out_padding=[0] * len(ksize), subm=subm,
        transpose=False, is_train=(not subm) or training, alloc=x.thrust_allocator,
        timer=x._timer,
    )  # fmt: skip
    out_shape = x.spatial_shape if subm else _out_shape(x, ksize, stride, padding, dilation)
    return ImplicitGemmIndiceData(
        res[0], x.indices, res[2], res[3], pair_mask_fwd_splits=res[4],
        pair_mask_bwd_splits=res[5], mask_argsort_fwd_splits=res[6],
        mask_argsort_bwd_splits=res[7], masks=res[8], is_subm=subm,
        spatial_shape=x.spatial_shape, out_spatial_shape=out_shape, algo=algo, ksize=ksize,
        stride=stride, padding=padding, dilation=dilation,
    )  # fmt: skip


def _out_shape(x: SparseConvTensor, ksize, stride, padding, dilation) -> list[int]:
    return ops.get_conv_output_size(x.spatial_shape, ksize, stride, padding, dilation)


def native_conv(x: SparseConvTensor, weight: Tensor, data: IndiceData, *, inverse: bool) -> Tensor:
    """spconv's Native conv (its gather/GEMM/scatter loop) with autograd, its backward inside
    ``allow_cpu_backward``."""
    pairs = data.indice_pairs.to(x.features.device)
    if data.is_subm:
        n_out = data.out_indices.shape[0]
        return _subm_conv(x.features, weight, pairs, data.indice_pair_num, n_out,
                          ConvAlgo.Native, x._timer)  # fmt: skip
    if inverse:
        n_out = data.indices.shape[0]
        return _inverse_conv(x.features, weight, pairs, data.indice_pair_num, n_out,
                             ConvAlgo.Native, x._timer)  # fmt: skip
    n_out = data.out_indices.shape[0]
    return _conv(x.features, weight, pairs, data.indice_pair_num, n_out,
                 ConvAlgo.Native, x._timer)  # fmt: skip


def implicit_conv(
    x: SparseConvTensor, weight: Tensor, data: ImplicitGemmIndiceData, *, inverse: bool
) -> Tensor:
    """spconv's implicit-GEMM conv (CUDA): with autograd when a gradient is needed, else its
    inference op, as spconv's module calls them."""
    d = data
    if inverse:  # run the strided conv's rulebook backwards: forward and backward pairs swap
        fwd, bwd = d.pair_bwd, d.pair_fwd
        mfwd, mbwd = d.pair_mask_bwd_splits, d.pair_mask_fwd_splits
        afwd, abwd = d.mask_argsort_bwd_splits, d.mask_argsort_fwd_splits
        n_out = d.indices.shape[0]
    else:
        fwd, bwd = d.pair_fwd, d.pair_bwd
        mfwd, mbwd = d.pair_mask_fwd_splits, d.pair_mask_bwd_splits
        afwd, abwd = d.mask_argsort_fwd_splits, d.mask_argsort_bwd_splits
        n_out = d.out_indices.shape[0]
    features = x.features
    if torch.is_grad_enabled() and (features.requires_grad or weight.requires_grad):
        return Fsp.implicit_gemm(features, weight, fwd, bwd, mfwd, mbwd, afwd, abwd, n_out,
                                 d.masks, True, d.is_subm, x._timer, None)  # fmt: skip
    if torch.is_autocast_enabled("cuda") and features.is_floating_point():
        features, weight = features.half(), weight.half()
    out, _, _ = ops.implicit_gemm(features, weight, fwd, mfwd, afwd, n_out, d.masks, False,
                                  d.is_subm, x._timer, None,
                                  output_dtype=weight.dtype)  # fmt: skip
    return out
