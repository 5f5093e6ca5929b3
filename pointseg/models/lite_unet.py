"""A lighter sparse U-Net: SparseUNet's plan with depthwise-separable residual blocks.

Same levels, keys, strided and inverse convs, skips and head as ``SparseUNet`` (its docstring);
each residual block's two 3x3x3 convs become two separable units

    depthwise SubM conv (one k^3 filter a channel) -> BN -> pointwise (1x1) -> BN

with a ReLU after the first unit and after the residual sum. A full 3x3x3 conv costs
``27 * C_in * C_out`` multiply-adds a site, a unit ``k^3 * C_in + C_in * C_out``. The pointwise
layer is an ``nn.Linear`` on the features, or, with ``pw_groups`` > 1, a grouped one, in which
case ``shuffle`` interleaves the groups' channels between the two units (ShuffleNet), so that
information crosses groups. ``kernel`` 5 gives 5^3 depthwise filters (a wider field for little
cost); their rulebooks are keyed ``subm{level}_k5``, and a 5^3 stem shares level 0's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import spconv.pytorch as spconv
import torch
from torch import Tensor, nn

from pointseg.models.blocks import (
    BN_MOMENTUM,
    batch_norm,
    subm_conv3d,
)
from pointseg.models.sparse_unet import (
    SMALL_CHANNELS,
    SMALL_LAYERS,
    UNetSkeleton,
    unet_widths,
)
from pointseg.sparse import SubMConv3d
from pointseg.sparse.grouped import check_groups, group_mm


def level_key(level: int, kernel: int) -> str:
    """Rulebook key of the submanifold convs of ``level`` with a ``kernel``^3 filter."""
    return f"subm{level}" if kernel == 3 else f"subm{level}_k{kernel}"


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(M, G * C) -> (M, C * G): channel c of group g moves to position c * G + g."""
    m, c = x.shape
    return x.view(m, groups, c // groups).transpose(1, 2).reshape(m, c)


class GroupedPointwise(nn.Module):
    """A grouped 1x1 layer on (M, C_in) features: group g of the outputs sees input group g."""

    def __init__(self, in_features: int, out_features: int, *, groups: int) -> None:
        super().__init__()
        check_groups(in_features, out_features, groups)
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        ci, co = in_features // groups, out_features // groups
        bound = 1.0 / ci**0.5  # nn.Linear's default initialisation, per group
        self.weight = nn.Parameter(torch.empty(groups, ci, co).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return group_mm(x, self.weight)  # (M, C_out)


def pointwise(in_ch: int, out_ch: int, *, groups: int) -> nn.Module:
    """A 1x1 layer: ``nn.Linear`` or, if ``groups`` > 1 divides both widths, a grouped one."""
    if groups > 1 and in_ch % groups == 0 and out_ch % groups == 0:
        return GroupedPointwise(in_ch, out_ch, groups=groups)
    return nn.Linear(in_ch, out_ch, bias=False)


class SeparableUnit(spconv.SparseModule):
    """Depthwise SubM conv -> BN -> pointwise -> BN (no ReLU: the caller adds it)."""

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int, indice_key: str, pw_groups: int,
        bn_momentum: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.dw = SubMConv3d(
            in_ch, in_ch, kernel, padding=kernel // 2, indice_key=indice_key, groups=in_ch
        )
        self.bn_dw = batch_norm(in_ch, momentum=bn_momentum)
        self.pw = pointwise(in_ch, out_ch, groups=pw_groups)
        self.bn_pw = batch_norm(out_ch, momentum=bn_momentum)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self.dw(x)  # (M, C_in): same sites, rulebook cached under indice_key
        return x.replace_feature(self.bn_pw(self.pw(self.bn_dw(x.features))))  # (M, C_out)


class LiteBlock(spconv.SparseModule):
    """Residual block: relu(unit2(shuffle(relu(unit1(x)))) + shortcut(x)); the shortcut is the
    identity or a Linear + BN projection when the width changes (as in ``BasicBlock``)."""

    def __init__(
        self, in_ch: int, out_ch: int, *, mid_ch: int, kernel: int, indice_key: str,
        pw_groups: int = 1, shuffle: bool = False, bn_momentum: float = BN_MOMENTUM,
    ) -> None:  # fmt: skip
        super().__init__()
        unit = {"kernel": kernel, "indice_key": indice_key, "bn_momentum": bn_momentum}
        self.unit1 = SeparableUnit(in_ch, mid_ch, pw_groups=pw_groups, **unit)
        self.unit2 = SeparableUnit(mid_ch, out_ch, pw_groups=pw_groups, **unit)
        pw1 = self.unit1.pw
        self.shuffle_groups = pw1.groups if shuffle and isinstance(pw1, GroupedPointwise) else 1
        self.relu = nn.ReLU(inplace=True)
        self.proj: nn.Module | None = None
        if in_ch != out_ch:
            self.proj = nn.Sequential(
                nn.Linear(in_ch, out_ch, bias=False), batch_norm(out_ch, momentum=bn_momentum)
            )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features if self.proj is None else self.proj(x.features)  # (M, C_out)
        out = self.unit1(x)
        h = self.relu(out.features)  # (M, C_mid)
        if self.shuffle_groups > 1:
            h = channel_shuffle(h, self.shuffle_groups)
        out = self.unit2(out.replace_feature(h))
        return out.replace_feature(self.relu(out.features + identity))  # (M, C_out)


def lite_stack(
    in_ch: int, out_ch: int, mids: Sequence[int], **block: Any
) -> spconv.SparseSequential:
    """``len(mids)`` lite blocks; the first maps ``in_ch`` to ``out_ch``."""
    return spconv.SparseSequential(
        *(
            LiteBlock(in_ch if i == 0 else out_ch, out_ch, mid_ch=mid, **block)
            for i, mid in enumerate(mids)
        )
    )


class LiteUNet(UNetSkeleton):
    """(M, C_in) voxel features -> (M, num_classes) logits, same row order (see module doc)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        stem_channels: int = 32,
        channels: Sequence[int] = SMALL_CHANNELS,
        layers: Sequence[int] = SMALL_LAYERS,
        stem_kernel: int = 3,
        kernel: int = 3,
        pw_groups: int = 1,
        shuffle: bool = False,
        dropout: float = 0.0,
        bn_momentum: float = BN_MOMENTUM,
        widths: Mapping[str, Any] | None = None,
        point_channels: int = 0,
    ) -> None:
        super().__init__()
        w = unet_widths(
            in_channels, num_classes, stem_channels, channels, layers, widths, point_channels
        )
        for name, k in (("stem_kernel", stem_kernel), ("kernel", kernel)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be odd (centred on the voxel), got {k}")
        if pw_groups < 1:
            raise ValueError(f"pw_groups must be >= 1, got {pw_groups}")
        block = {"kernel": kernel, "pw_groups": pw_groups, "shuffle": shuffle,
                 "bn_momentum": bn_momentum}  # fmt: skip
        stem_key = level_key(0, stem_kernel)  # shares level 0's rulebook if the kernels agree

        def stack(in_ch: int, out_ch: int, mids: Sequence[int], level: int) -> nn.Module:
            return lite_stack(in_ch, out_ch, mids, indice_key=level_key(level, kernel), **block)

        self.build(
            in_channels, num_classes, w,
            stem_conv=subm_conv3d(in_channels, w["stem"], stem_kernel, indice_key=stem_key),
            stack=stack, dropout=dropout, bn_momentum=bn_momentum,
        )  # fmt: skip
