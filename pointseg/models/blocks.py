"""Building blocks of the sparse U-Net: conv factories, conv + BN + ReLU units, residual blocks.

Every sparse conv is one of pointseg's own (``pointseg.sparse``: spconv's weight layout, kernels
picked per call by ``pointseg.sparse.functional``), built bias-free by the factories below
(BatchNorm follows anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from torch import Tensor, nn

from pointseg import sparse

# Pointcept's SpUNet uses eps=1e-3, momentum=0.01. A few large scenes per batch give noisy batch
# statistics, so running stats should average over many steps; 0.02 still lets them settle within
# a few hundred steps, which matters for short runs evaluated in eval mode.
BN_EPS = 1e-3
BN_MOMENTUM = 0.02


def subm_conv3d(in_ch: int, out_ch: int, kernel: int, *, indice_key: str) -> nn.Module:
    """Submanifold conv: output sites == input sites, same row order; bias-free (see above)."""
    return sparse.SubMConv3d(in_ch, out_ch, kernel, padding=kernel // 2, indice_key=indice_key)


def strided_conv3d(in_ch: int, out_ch: int, *, indice_key: str) -> nn.Module:
    """k=2, s=2 downsampling; its rulebook is stored under ``indice_key`` for the inverse conv."""
    return sparse.SparseConv3d(in_ch, out_ch, 2, stride=2, indice_key=indice_key)


def inverse_conv3d(in_ch: int, out_ch: int, *, indice_key: str) -> nn.Module:
    """Undo ``strided_conv3d(indice_key=...)``: back to its input sites, in their row order."""
    return sparse.SparseInverseConv3d(in_ch, out_ch, 2, indice_key=indice_key)


class _RowStats(torch.autograd.Function):
    """Training-mode batch norm of (N, C) rows whose statistics are per-channel reductions."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float):  # type: ignore[override]
        mean = x.mean(0)
        xhat = x - mean
        var = xhat.square().mean(0)  # biased, as batch norm normalises with
        invstd = torch.rsqrt(var + eps)
        xhat.mul_(invstd)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.mark_non_differentiable(mean, var)  # for the running statistics only
        return torch.addcmul(bias, xhat, weight), mean, var

    @staticmethod
    def backward(ctx, grad: Tensor, _gm: Tensor, _gv: Tensor):  # type: ignore[override]
        xhat, invstd, weight = ctx.saved_tensors
        n = xhat.shape[0]
        grad_bias = grad.sum(0)
        grad_weight = (grad * xhat).sum(0)
        grad_x = grad - grad_bias / n
        grad_x.addcmul_(xhat, grad_weight / n, value=-1.0).mul_(weight * invstd)
        return grad_x, grad_weight, grad_bias, None


class BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose CPU training step gives the same bits on any thread count.

    torch's CPU batch-norm kernel adds its statistics and its backward sums in per-thread parts,
    so they change with ``torch.get_num_threads()``. Here every sum is a reduction over rows
    with one result per channel (``Tensor.mean(0)``, ``Tensor.sum(0)``), which torch splits
    between threads by channel, never within one, so each channel's sum has one order
    (``tests/test_thread_invariance.py``). Eval mode, and CUDA, use torch's kernel; the weights,
    buffers and state-dict keys are ``nn.BatchNorm1d``'s.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats and x.device.type == "cpu"):
            return super().forward(x)
        if x.dim() != 2 or x.shape[0] < 2:
            return super().forward(x)  # torch's own checks and errors
        y, mean, var = _RowStats.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = self.momentum
            if factor is None:  # a cumulative average, as nn.BatchNorm1d keeps one
                factor = 1.0 / float(self.num_batches_tracked)
            n = x.shape[0]
            self.running_mean.lerp_(mean, factor)
            self.running_var.lerp_(var * (n / (n - 1)), factor)
        return y


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor):  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.rows, grad.shape[1]))
        return out.index_add_(0, index, grad.contiguous()), None


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for (M, C) voxel rows and an (N,) point -> voxel index, whose backward adds
    each point's gradient into its voxel row in point order, on any thread count.

    The backward of ``x[index]`` (``index_put_`` with accumulation) splits its sums between
    threads on the CPU; ``index_add_`` adds in index order and was 4-6x faster on 200 k points.
    """
    if x.device.type != "cpu" or not torch.is_grad_enabled() or not x.requires_grad:
        return x[index]
    return _GatherRows.apply(x, index)


def batch_norm(channels: int, *, momentum: float = BN_MOMENTUM) -> nn.BatchNorm1d:
    """BatchNorm1d over (M, C) rows: of a sparse tensor's features, or of points."""
    return BatchNorm1d(channels, eps=BN_EPS, momentum=momentum)


class ConvBNReLU(spconv.SparseModule):
    """A sparse conv (subm / strided / inverse) followed by BatchNorm1d and ReLU on the features."""

    def __init__(self, conv: nn.Module, out_channels: int, *, bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        self.conv = conv
        self.bn = batch_norm(out_channels, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self.conv(x)  # (M', C_out): M' depends on the conv kind
        return x.replace_feature(self.relu(self.bn(x.features)))


class BasicBlock(spconv.SparseModule):
    """Residual block of two 3x3x3 submanifold convs (ResNet "basic" block, as in MinkUNet34C).

    out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). The shortcut is the identity, or a
    1x1 projection + BN when the channel count changes. A 1x1 submanifold conv is a per-row matmul,
    so the projection is an ``nn.Linear`` on the features (same maths, no rulebook, plain weights).
    Sites and row order are unchanged. ``indice_key`` names the rulebook shared by every k=3 subm
    conv of one resolution level, so it is computed once per forward. ``mid_channels`` (default
    ``out_channels``) is the width between conv1 and conv2, e.g. after channel pruning.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        indice_key: str,
        bn_momentum: float = BN_MOMENTUM,
        mid_channels: int | None = None,
    ) -> None:
        super().__init__()
        mid = out_channels if mid_channels is None else int(mid_channels)
        if mid < 1:
            raise ValueError(f"mid_channels must be positive, got {mid}")
        self.conv1 = subm_conv3d(in_channels, mid, 3, indice_key=indice_key)
        self.bn1 = batch_norm(mid, momentum=bn_momentum)
        self.conv2 = subm_conv3d(mid, out_channels, 3, indice_key=indice_key)
        self.bn2 = batch_norm(out_channels, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.proj: nn.Module | None = None
        if in_channels != out_channels:
            self.proj = nn.Sequential(
                nn.Linear(in_channels, out_channels, bias=False),
                batch_norm(out_channels, momentum=bn_momentum),
            )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features  # (M, C_in)
        if self.proj is not None:
            identity = self.proj(identity)  # (M, C_out)
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))  # (M, C_out)
        out = self.conv2(out)
        # Return conv2's tensor, not x: it carries the rulebook conv1 cached under indice_key.
        return out.replace_feature(self.relu(self.bn2(out.features) + identity))  # (M, C_out)


def residual_stack(
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    *,
    indice_key: str,
    bn_momentum: float = BN_MOMENTUM,
    mid_channels: Sequence[int] | None = None,
) -> spconv.SparseSequential:
    """``num_blocks`` basic blocks; the first maps ``in_channels`` to ``out_channels``.
    ``mid_channels`` gives each block's inner width (default: ``out_channels``)."""
    if mid_channels is not None and len(mid_channels) != num_blocks:
        raise ValueError(
            f"mid_channels {list(mid_channels)} needs one width per block ({num_blocks})"
        )
    blocks = [
        BasicBlock(
            in_channels if i == 0 else out_channels,
            out_channels,
            indice_key=indice_key,
            bn_momentum=bn_momentum,
            mid_channels=None if mid_channels is None else mid_channels[i],
        )
        for i in range(num_blocks)
    ]
    return spconv.SparseSequential(*blocks)
