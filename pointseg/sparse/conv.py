"""pointseg's sparse conv modules: parameters only; ``functional.sparse_conv`` does the work.

Weights are spconv's KRSC layout ``(C_out, kD, kH, kW, C_in)`` and are named ``weight`` (and
``bias``), so state dicts of networks built on ``spconv.pytorch`` convs load unchanged; a grouped
submanifold conv (``groups``, see ``grouped``) holds ``(C_out, kD, kH, kW, C_in / groups)``.
The initialisation is spconv's (uniform, bound ``1 / sqrt(fan_in)``, fan_in =
``C_in / groups * kD * kH * kW``). The modules
subclass ``spconv.pytorch.SparseModule`` (a marker class) so that ``spconv.SparseSequential``
passes them the sparse tensor.

A conv runs on its input tensor's configuration (``config``, recorded by
``tensor.sparse_tensor``) unless its ``sparse_config`` (an argument, or an attribute set later)
is a ``SparseConfig``: then that conv alone runs on it. It is not part of the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from spconv.pytorch import SparseConvTensor, SparseModule
from torch import nn

from pointseg.sparse.config import SparseConfig
from pointseg.sparse.functional import Kind, sparse_conv
from pointseg.sparse.grouped import check_groups

IntOr3 = int | Sequence[int]


def _triple(v: IntOr3, name: str) -> list[int]:
    out = [int(v)] * 3 if isinstance(v, int) else [int(x) for x in v]
    if len(out) != 3 or any(x < 0 for x in out):
        raise ValueError(f"{name} must be a non-negative int or three of them, got {v!r}")
    return out


class SparseConvNd(SparseModule):
    """A 3-D sparse conv of one ``kind`` ("subm", "conv" or "inverse"; see ``sparse_conv``)."""

    kind: Kind = "conv"
    sparse_config: SparseConfig | None = None  # class default: modules pickled before it load

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOr3,
        stride: IntOr3 = 1,
        padding: IntOr3 = 0,
        dilation: IntOr3 = 1,
        *,
        bias: bool = False,
        indice_key: str | None = None,
        groups: int = 1,
        sparse_config: SparseConfig | None = None,
    ) -> None:
        super().__init__()
        if sparse_config is not None and not isinstance(sparse_config, SparseConfig):
            raise TypeError(f"sparse_config must be a SparseConfig or None, got {sparse_config!r}")
        self.sparse_config = sparse_config
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got {in_channels}, {out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.stride = _triple(stride, "stride")
        self.padding = _triple(padding, "padding")
        self.dilation = _triple(dilation, "dilation")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise ValueError("kernel_size, stride and dilation must be >= 1")
        if self.kind == "inverse" and indice_key is None:
            raise ValueError("an inverse conv needs the indice_key of the conv it undoes")
        if groups != 1 and self.kind != "subm":
            raise ValueError(f"groups={groups}: grouped sparse convs are submanifold only")
        check_groups(in_channels, out_channels, groups)
        self.groups = int(groups)
        self.indice_key = indice_key
        self.weight = nn.Parameter(
            torch.empty(out_channels, *self.kernel_size, in_channels // self.groups)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels // self.groups * math.prod(self.kernel_size))
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        out = sparse_conv(
            x,
            self.weight,
            kind=self.kind,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            indice_key=self.indice_key,
            groups=self.groups,
            config=self.sparse_config,
        )
        if self.bias is not None:  # added here, not fused: spconv's CPU ops refuse a bias
            out = out.replace_feature(out.features + self.bias)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, indice_key={self.indice_key!r}"
            + (f", groups={self.groups}" if self.groups != 1 else "")
            + (f", sparse_config={self.sparse_config}" if self.sparse_config is not None else "")
        )


class SubMConv3d(SparseConvNd):
    """Submanifold conv: output sites == input sites, in the same row order."""

    kind: Kind = "subm"


class SparseConv3d(SparseConvNd):
    """Regular (e.g. strided) sparse conv: output sites are every site any input reaches."""

    kind: Kind = "conv"


class SparseInverseConv3d(SparseConvNd):
    """Back to the input sites of the ``SparseConv3d`` that stored ``indice_key``, in their
    row order; ``kernel_size`` must be that conv's."""

    kind: Kind = "inverse"
