"""``sparse_conv``: one sparse conv of a ``SparseConvTensor``, with an explicit choice of kernel.

The choice is made from the conv's ``SparseConfig`` (``config``): the one its input tensor
recorded when it was made (``tensor.config_of``), or the module's override (``sparse_config``),
read once per conv and passed down; a switch of the process default during a forward changes
nothing for it. The configuration and the device fix the rulebook's format (``_on_rulebook``);
``_run`` is the one place the kernel is chosen:

===================  =====================================  ===================================
backend / device     rulebook (cached per ``indice_key``)   kernel
===================  =====================================  ===================================
pointseg / CPU       ``rulebook.build`` (lookup tables)     ``cpu_conv`` gather-GEMM-scatter
pointseg / CUDA      spconv's implicit GEMM (<= 32 offsets) spconv's ``implicit_gemm`` op
                     spconv's Native (more offsets)         ``gather_conv`` (submanifold, few
                                                            columns: the stem) or spconv's loop
spconv / any         spconv's, with spconv's algorithm      spconv's, as shipped
===================  =====================================  ===================================

Grouped and depthwise submanifold convs (``groups > 1``) take ``grouped``: its offset loop on
pointseg's rulebooks (compiled for depthwise convs with ``fused_depthwise``), its neighbour-map
kernel on spconv's.

A rulebook is built by the first conv of a forward that uses its ``indice_key`` and stored in
the tensor's ``indice_dict``: every later conv of that key (the level's submanifold convs, the
inverse conv undoing a strided one) and every backward pass reuse it, with whatever the kernels
derived from it. A conv whose configuration wants the other format for a cached rulebook (a
module override on a shared key) is refused.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from spconv.core import ConvAlgo
from spconv.pytorch import SparseConvTensor
from spconv.pytorch.core import ImplicitGemmIndiceData, IndiceData
from torch import Tensor

import pointseg.sparse.cpu_conv as cpu_conv
import pointseg.sparse.gather_conv as gather_conv
import pointseg.sparse.grouped as grouped
import pointseg.sparse.spconv_ops as spconv_ops
from pointseg.sparse.config import SparseConfig
from pointseg.sparse.rulebook import Rulebook, build
from pointseg.sparse.tensor import CONFIG_KEY, config_of

Kind = Literal["subm", "conv", "inverse"]
AnyRulebook = Rulebook | IndiceData | ImplicitGemmIndiceData


class _CPUConv(torch.autograd.Function):
    """``cpu_conv`` with autograd; the rulebook is shared with backward."""

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, rb: Rulebook, inverse: bool) -> Tensor:
        ctx.save_for_backward(features, weight)
        ctx.rb, ctx.inverse = rb, inverse
        return cpu_conv.conv_forward(features, weight, rb, inverse=inverse)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        features, weight = ctx.saved_tensors
        grad_in, grad_w = cpu_conv.conv_backward(
            features,
            weight,
            grad_out,
            ctx.rb,
            inverse=ctx.inverse,
            input_grad=ctx.needs_input_grad[0],
        )
        return grad_in, grad_w, None, None


class _GatherConv(torch.autograd.Function):
    """``gather_conv`` (a submanifold conv as one gather and one GEMM) with autograd."""

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, pairs: Tensor, counts: Tensor) -> Tensor:
        ctx.save_for_backward(features, weight, pairs, counts)
        return gather_conv.forward(features, weight, pairs, counts)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        features, weight, pairs, counts = ctx.saved_tensors
        grad_in, grad_w = gather_conv.backward(
            features, weight, grad_out, pairs, counts, input_grad=ctx.needs_input_grad[0]
        )
        return grad_in, grad_w, None, None


def _on_rulebook(config: SparseConfig, x: SparseConvTensor) -> bool:
    """Whether the conv runs on pointseg's ``Rulebook`` (pointseg's CPU path); otherwise on
    spconv's rulebooks."""
    return config.backend == "pointseg" and not x.features.is_cuda


def _build(x: SparseConvTensor, kind: Kind, kv: int, geometry: dict, ours: bool) -> AnyRulebook:
    """A new rulebook for a conv of ``kind`` over ``x``'s sites: pointseg's if ``ours``."""
    if kind == "inverse":
        raise ValueError("an inverse conv needs the rulebook of its strided conv (indice_key)")
    subm = kind == "subm"
    if ours:
        return build(x.indices, x.batch_size, list(x.spatial_shape), subm=subm, **geometry)
    algo = spconv_ops.algo_for(x.features, kv)
    if algo == ConvAlgo.Native:
        return spconv_ops.native_rulebook(x, subm=subm, **geometry)
    return spconv_ops.implicit_rulebook(x, subm=subm, algo=algo, **geometry)


def _run(
    x: SparseConvTensor,
    weight: Tensor,
    rb: AnyRulebook,
    kind: Kind,
    groups: int,
    config: SparseConfig,
) -> Tensor:
    """(N_out, C_out) features of the conv: the one place its kernel is chosen, from the
    rulebook's format (fixed by ``config`` and the device), the conv and ``config``."""
    inverse = kind == "inverse"
    features = x.features
    if groups > 1:
        grouped.check_rulebook(rb, weight)
        if isinstance(rb, Rulebook):
            return grouped.rulebook_conv(
                features, weight, rb, groups=groups, fused=config.fused_depthwise
            )
        return grouped.neighbour_conv(features, weight, rb, groups=groups)
    if isinstance(rb, Rulebook):
        if features.dtype != torch.float32 or weight.dtype != torch.float32:
            raise TypeError(f"CPU sparse convs run in float32, got {features.dtype} features")
        return _CPUConv.apply(features, weight, rb, inverse)
    if isinstance(rb, ImplicitGemmIndiceData):
        return spconv_ops.implicit_conv(x, weight, rb, inverse=inverse)
    if (
        config.backend == "pointseg"
        and features.dtype == weight.dtype
        and features.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and gather_conv.usable(features, weight, rb.is_subm, inverse)
    ):
        return _GatherConv.apply(features, weight, rb.indice_pairs, rb.indice_pair_num)
    return spconv_ops.native_conv(x, weight, rb, inverse=inverse)


def _checked_reuse(
    rb: AnyRulebook, x: SparseConvTensor, kind: Kind, key: str, ours: bool
) -> AnyRulebook:
    """Refuse a cached rulebook that does not fit this conv (a wrong ``indice_key``)."""
    if isinstance(rb, Rulebook) != ours:
        raise RuntimeError(
            f"indice_key {key!r}: its rulebook was built by another backend; a conv whose "
            "sparse_config differs from its tensor's needs an indice_key of its own"
        )
    sites = rb.out_indices if kind == "inverse" else rb.indices
    if kind == "inverse" and rb.is_subm:
        raise ValueError(f"indice_key {key!r} belongs to a submanifold conv; an inverse conv "
                         "needs a strided conv's key")  # fmt: skip
    if kind == "conv" or (kind == "subm" and not rb.is_subm) or len(sites) != len(x.features):
        raise ValueError(
            f"indice_key {key!r} is already used by a conv over other sites; give each strided "
            "conv its own key and share a key only between convs over the same sites"
        )
    return rb


def sparse_conv(
    x: SparseConvTensor,
    weight: Tensor,
    *,
    kind: Kind,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    indice_key: str | None,
    groups: int = 1,
    config: SparseConfig | None = None,
) -> SparseConvTensor:
    """Apply a sparse conv with KRSC ``weight`` (C_out, *kernel, C_in) to ``x``.

    ``kind``: "subm" (output sites = input sites, same rows), "conv" (strided/regular: new
    output sites), "inverse" (back to the input sites of the strided conv that stored its
    rulebook under ``indice_key``). ``groups`` > 1 (submanifold only): a grouped conv whose
    weight is (C_out, *kernel, C_in / groups). ``config``: run this conv on it instead of
    ``x``'s record (a module's override); the output keeps ``x``'s record.
    """
    if indice_key == CONFIG_KEY:
        raise ValueError(f"indice_key {CONFIG_KEY!r} is reserved for the tensor's sparse config")
    config = config_of(x) if config is None else config
    ksize = list(weight.shape[1:-1])
    if x.features.shape[1] != weight.shape[-1] * groups:
        raise ValueError(
            f"expected {weight.shape[-1] * groups} input channels, got {x.features.shape[1]}"
        )
    if groups > 1 and kind != "subm":
        raise ValueError(f"grouped sparse convs are submanifold only, got a {kind!r} conv")
    geometry = {"ksize": ksize, "stride": stride, "padding": padding, "dilation": dilation}
    ours = _on_rulebook(config, x)
    rb = x.indice_dict.get(indice_key) if indice_key is not None else None
    fresh = rb is None
    if fresh:
        rb = _build(x, kind, math.prod(ksize), geometry, ours)
    else:
        rb = _checked_reuse(rb, x, kind, indice_key, ours)
    features = _run(x, weight, rb, kind, groups, config)
    if kind == "inverse":
        indices, shape = rb.indices, rb.spatial_shape
    else:
        indices, shape = rb.out_indices, rb.out_spatial_shape
    out = x.replace_feature(features)
    out.indice_dict = dict(x.indice_dict)
    if fresh and indice_key is not None:
        out.indice_dict[indice_key] = rb
    out.indices, out.spatial_shape = indices, list(shape)
    return out
