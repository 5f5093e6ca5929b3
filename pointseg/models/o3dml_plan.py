"""The reference plan for peer comparison: Open3D-ML's ``SparseConvUnet``, on ``pointseg.sparse``.

Open3D-ML's sparse U-Net (multiplier 16, ``conv_block_reps=1``, no residual blocks) is a
7-level U-Net with widths 16, 32, ..., 112. Built here from pointseg's sparse-conv factories so the
same network can be timed against other implementations:

    input subm conv 3x3x3 (C_in -> 16)
    level l (widths p_0..p_6 = 16..112), recursively:
        BN-ReLU-subm(p_l -> p_l)                                  encoder block
        l < 6:  skip = x
                BN-ReLU-SparseConv k2 s2 (p_l -> p_{l+1})         down
                ... level l + 1 ...
                BN-ReLU-InverseConv k2 (p_{l+1} -> p_l)           up (reuses down's rulebook)
                concat [skip, up] -> BN-ReLU-subm(2 p_l -> p_l)    decoder block
    BN-ReLU -> Linear(16 -> num_classes)

Pre-activation (BN-ReLU before each conv), bias-free convs, 2,689,605 parameters for 3 inputs
and 5 classes. Every subm conv of one level shares the level's rulebook (``indice_key``).
"""

from __future__ import annotations

from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from torch import Tensor, nn

from pointseg.models.blocks import (
    BN_MOMENTUM,
    batch_norm,
    gather_rows,
    inverse_conv3d,
    strided_conv3d,
    subm_conv3d,
)
from pointseg.sparse import sparse_tensor

O3DML_MULTIPLIER = 16
O3DML_LEVELS = 7


class PreActConv(spconv.SparseModule):
    """BatchNorm1d -> ReLU on the features, then a sparse conv (Open3D-ML's block order)."""

    def __init__(self, in_channels: int, conv: nn.Module, *, bn_momentum: float) -> None:
        super().__init__()
        self.bn = batch_norm(in_channels, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.conv = conv

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        return self.conv(x.replace_feature(self.relu(self.bn(x.features))))


class O3DMLPlanUNet(nn.Module):
    """(M, C_in) voxel features -> (M, num_classes) logits, in the input row order."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 5,
        *,
        widths: Sequence[int] | None = None,
        multiplier: int = O3DML_MULTIPLIER,
        levels: int = O3DML_LEVELS,
        bn_momentum: float = BN_MOMENTUM,
    ) -> None:
        super().__init__()
        if widths is None:
            if multiplier < 1 or levels < 1:
                raise ValueError(f"multiplier and levels must be >= 1, got {multiplier}, {levels}")
            widths = [multiplier * (i + 1) for i in range(levels)]
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive, got {widths}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError("in_channels and num_classes must be positive")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.widths = widths
        self.num_stages = len(widths) - 1  # downsamplings
        bn = {"bn_momentum": bn_momentum}
        self.input_conv = subm_conv3d(in_channels, widths[0], 3, indice_key="subm0")
        self.enc = nn.ModuleList()
        self.down, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level, w in enumerate(widths):
            key = f"subm{level}"
            self.enc.append(PreActConv(w, subm_conv3d(w, w, 3, indice_key=key), **bn))
            if level == self.num_stages:
                continue
            nxt, dkey = widths[level + 1], f"down{level + 1}"
            self.down.append(PreActConv(w, strided_conv3d(w, nxt, indice_key=dkey), **bn))
            self.up.append(PreActConv(nxt, inverse_conv3d(nxt, w, indice_key=dkey), **bn))
            self.dec.append(PreActConv(2 * w, subm_conv3d(2 * w, w, 3, indice_key=key), **bn))
        self.out_bn = batch_norm(widths[0], momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(widths[0], num_classes)

    def forward(
        self,
        feat: Tensor,
        indices: Tensor,
        batch_size: int,
        *,
        inverse: Tensor | None = None,
        point_feat: Tensor | None = None,
    ) -> Tensor:
        """feat (M, C_in), indices (M, 4) int32 [b, x, y, z] -> (M, num_classes) logits;
        with ``inverse`` (N,), each point's voxel logits (N, K) (no point branch: ``point_feat``
        is not used)."""
        if feat.dim() == 2 and feat.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} feature channels, got {feat.shape[1]}")
        x = sparse_tensor(feat, indices, batch_size, levels=self.num_stages)
        x = self.input_conv(x)  # (M, p_0)
        skips = []
        for level in range(self.num_stages):
            x = self.enc[level](x)
            skips.append(x)
            x = self.down[level](x)  # (M_{l+1}, p_{l+1})
        x = self.enc[self.num_stages](x)
        for level in reversed(range(self.num_stages)):
            x = self.up[level](x)  # back to level l's sites, in skip's row order
            skip = skips.pop()
            x = x.replace_feature(torch.cat([skip.features, x.features], dim=1))
            x = self.dec[level](x)  # (M_l, p_l)
        logits = self.head(self.relu(self.out_bn(x.features)))  # (M, K)
        return logits if inverse is None else gather_rows(logits, inverse)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
