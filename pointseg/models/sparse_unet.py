"""Sparse residual U-Net for voxel-wise semantic segmentation (the SpUNet / MinkUNet34C plan).

stem (subm conv) -> num_stages x [strided conv k2 s2 -> residual blocks]
                 -> num_stages x [inverse conv k2 -> concat skip -> residual blocks] -> Linear head
with num_stages = len(channels) // 2: the first half of ``channels`` / ``layers`` describes the
encoder stages (coarser and coarser), the second half the decoder stages (back to full
resolution). Every inverse conv reuses the rulebook of its strided conv (same ``indice_key``), so
the output has exactly the input voxels, in the input row order.

``widths`` (optional) sets every layer's width explicitly, e.g. for a channel-pruned network
(``pointseg.prune.structured``); by default they follow ``stem_channels`` and ``channels``.

``point_channels > 0`` adds a point branch (the point-voxel fusion of SPVCNN): an MLP on every
point's own input features and its offset inside its voxel (``POINT_EXTRA`` columns), joined
with its voxel's decoder features before the head, so points of one voxel can get different
labels. Called with ``inverse`` (N,) the network returns point logits (N, K); a network without
the branch then returns its voxel logits gathered by ``inverse``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import spconv.pytorch as spconv
import torch
from torch import Tensor, nn

from pointseg.models.blocks import (
    BN_MOMENTUM,
    ConvBNReLU,
    batch_norm,
    gather_rows,
    inverse_conv3d,
    residual_stack,
    strided_conv3d,
    subm_conv3d,
)
from pointseg.models.point_branch import POINT_EXTRA, has_point_branch
from pointseg.sparse import sparse_tensor

SPUNET34C_CHANNELS = (32, 64, 128, 256, 256, 128, 96, 96)
SPUNET34C_LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
# Four levels like 34C but one block per stage and narrow full-resolution stages (where the voxel
# count, hence the cost, is highest): ~1.8 M parameters, ~1 s forward+backward on 2 CPU cores for
# 4 surface scenes x 20k voxels.
SMALL_CHANNELS = (32, 48, 64, 96, 64, 48, 32, 32)
SMALL_LAYERS = (1, 1, 1, 1, 1, 1, 1, 1)


def _check_config(channels: Sequence[int], layers: Sequence[int]) -> tuple[tuple, tuple]:
    channels, layers = tuple(int(c) for c in channels), tuple(int(n) for n in layers)
    if len(channels) != len(layers):
        raise ValueError(f"channels {channels} and layers {layers} must have the same length")
    if len(channels) < 2 or len(channels) % 2:
        raise ValueError(
            f"channels/layers need an even length >= 2 (encoder half + decoder half), got "
            f"{len(channels)}"
        )
    if any(c < 1 for c in channels):
        raise ValueError(f"channels must be positive, got {channels}")
    half = len(layers) // 2
    # Encoder stages may have no blocks (the strided conv sets the width); decoder stages need
    # one, as their first block maps the concatenated (up + skip) channels back down.
    if any(n < 0 for n in layers[:half]) or any(n < 1 for n in layers[half:]):
        raise ValueError(f"layers must be >= 0 (encoder) and >= 1 (decoder), got {layers}")
    return channels, layers


WIDTH_KEYS = ("stem", "down", "enc_mid", "up", "dec", "dec_mid", "point_mid", "point")


def resolve_widths(
    stem_channels: int,
    channels: Sequence[int],
    layers: Sequence[int],
    widths: Mapping[str, Any] | None = None,
    point_channels: int = 0,
) -> dict[str, Any]:
    """Every layer width of the network, as plain ints and lists.

    ``stem``: stem output; ``down[i]``: encoder stage i (strided conv and its residual blocks);
    ``enc_mid[i][b]``: inner width of block b of encoder stage i; ``up[j]``: inverse conv of
    decoder stage j; ``dec[j]``: decoder stage j output; ``dec_mid[j][b]``: inner widths;
    ``point_mid`` / ``point``: the point branch's two layers (0 without a branch).
    Keys missing from ``widths`` take the defaults of ``stem_channels``, ``channels`` and
    ``point_channels``.
    """
    n = len(channels) // 2
    out: dict[str, Any] = {
        "stem": int(stem_channels),
        "down": list(channels[:n]),
        "enc_mid": [[int(c)] * layers[i] for i, c in enumerate(channels[:n])],
        "up": list(channels[n:]),
        "dec": list(channels[n:]),
        "dec_mid": [[int(c)] * layers[n + j] for j, c in enumerate(channels[n:])],
        "point_mid": int(point_channels),
        "point": int(point_channels),
    }
    given = dict(widths or {})
    if point_channels == 0 and any(int(given.get(k) or 0) for k in ("point_mid", "point")):
        raise ValueError("model.net.widths sets point branch widths but point_channels is 0")
    unknown = sorted(set(given) - set(WIDTH_KEYS))
    if unknown:
        raise ValueError(f"model.net.widths: unknown key(s) {unknown}; known: {list(WIDTH_KEYS)}")
    for key, value in given.items():
        if key in ("stem", "point_mid", "point"):
            out[key] = int(value)
        elif key in ("enc_mid", "dec_mid"):
            value = [[int(c) for c in stage] for stage in value]
            if [len(v) for v in value] != [len(v) for v in out[key]]:
                raise ValueError(
                    f"model.net.widths.{key} must give one width per block "
                    f"({[len(v) for v in out[key]]} per stage), got {value}"
                )
            out[key] = value
        else:
            value = [int(c) for c in value]
            if len(value) != n:
                raise ValueError(f"model.net.widths.{key} needs {n} entries, got {value}")
            out[key] = value
    flat = [out["stem"], *out["down"], *out["up"], *out["dec"]]
    flat += [c for key in ("enc_mid", "dec_mid") for stage in out[key] for c in stage]
    if point_channels:
        flat += [out["point_mid"], out["point"]]
    if any(c < 1 for c in flat):
        raise ValueError(f"model.net.widths must all be positive, got {out}")
    return out


def unet_widths(
    in_channels: int,
    num_classes: int,
    stem_channels: int,
    channels: Sequence[int],
    layers: Sequence[int],
    widths: Mapping[str, Any] | None,
    point_channels: int = 0,
) -> dict[str, Any]:
    """Check a U-Net's size options and resolve its widths (``resolve_widths``)."""
    channels, layers = _check_config(channels, layers)
    if in_channels < 1 or num_classes < 1 or stem_channels < 1:
        raise ValueError("in_channels, num_classes and stem_channels must be positive")
    if point_channels < 0:
        raise ValueError(f"point_channels must be >= 0 (0: none), got {point_channels}")
    return resolve_widths(stem_channels, channels, layers, widths, point_channels)


# stack(in_channels, out_channels, mid_widths, level) -> the blocks of one encoder or decoder
# stage working at ``level`` (one block per entry of ``mid_widths``)
StageFactory = Callable[[int, int, Sequence[int], int], nn.Module]


class UNetSkeleton(nn.Module):
    """The layout and forward pass shared by pointseg's U-Nets: stem, encoders (each pooling
    one level), then per level an inverse conv, concatenation with that level's skip and a
    decoder, and a Linear head. A subclass checks its options and calls ``build`` with its
    stem conv and its stage blocks; the module names (``stem``, ``encoders.i``, ``ups.j``,
    ``decoders.j``, ``head``) are the same for every U-Net, which structured pruning and
    checkpoints rely on."""

    in_channels: int
    num_stages: int

    def build(
        self,
        in_channels: int,
        num_classes: int,
        widths: dict[str, Any],
        *,
        stem_conv: nn.Module,
        stack: StageFactory,
        dropout: float,
        bn_momentum: float,
        point_channels: int = 0,
    ) -> None:
        """Create every layer from the resolved ``widths`` (``resolve_widths``)."""
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if point_channels < 0:
            raise ValueError(
                f"point_channels must be >= 0 (0: no point branch), got {point_channels}"
            )
        w, bn = widths, {"bn_momentum": bn_momentum}
        self.in_channels, self.num_classes, self.widths = in_channels, num_classes, w
        self.num_stages = n = len(w["down"])
        self.stem = ConvBNReLU(stem_conv, w["stem"], **bn)

        # Encoder stage i goes from level i to level i + 1 (level 0 = input resolution).
        width = [w["stem"], *w["down"]]  # width[level] of the encoder features
        self.encoders = nn.ModuleList()
        for i in range(n):
            down = strided_conv3d(width[i], width[i + 1], indice_key=f"down{i + 1}")
            blocks = stack(width[i + 1], width[i + 1], w["enc_mid"][i], i + 1)
            self.encoders.append(
                spconv.SparseSequential(ConvBNReLU(down, width[i + 1], **bn), blocks)
            )

        # Decoder stage j goes from level n - j back to level n - j - 1, undoing "down{n - j}",
        # then fuses the encoder features of that level (the skip).
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        prev = width[n]
        for j in range(n):
            level, up_w, out = n - j - 1, w["up"][j], w["dec"][j]
            up = inverse_conv3d(prev, up_w, indice_key=f"down{level + 1}")
            self.ups.append(ConvBNReLU(up, up_w, **bn))
            self.decoders.append(stack(up_w + width[level], out, w["dec_mid"][j], level))
            prev = out

        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.point_channels = int(w.get("point", 0))
        self.point_mlp = point_mlp(
            in_channels + POINT_EXTRA, w.get("point_mid", 0), self.point_channels, bn_momentum
        )
        # A Linear head, not a 1x1 sparse conv: its bias is safe on CPU in eval mode.
        self.head = nn.Linear(prev + self.point_channels, num_classes)

    def forward(
        self,
        feat: Tensor,
        indices: Tensor,
        batch_size: int,
        *,
        inverse: Tensor | None = None,
        point_feat: Tensor | None = None,
    ) -> Tensor:
        """feat (M, C_in) float32/float16, indices (M, 4) int32 [b, x, y, z] -> (M, K) voxel
        logits; with ``inverse`` (N,) point -> voxel row: (N, K) point logits, for which the
        point branch needs ``point_feat`` (N, C_in + POINT_EXTRA) (``point_inputs``)."""
        x = self.decode(feat, indices, batch_size).features  # (M, C_dec)
        if self.point_mlp is None:
            logits = self.head(self.dropout(x))  # (M, K)
            return logits if inverse is None else gather_rows(logits, inverse)
        if inverse is None or point_feat is None:
            raise ValueError(
                "this network has a point branch (point_channels > 0): pass inverse= and "
                "point_feat= (Voxelize(point_features=True) gives both)"
            )
        if point_feat.shape != (len(inverse), self.in_channels + POINT_EXTRA):
            raise ValueError(
                f"point_feat must be (N={len(inverse)}, {self.in_channels + POINT_EXTRA}) "
                f"(input features, then the offset inside the voxel), got {tuple(point_feat.shape)}"
            )
        points = self.point_mlp(point_feat.to(x.dtype))
        z = torch.cat([gather_rows(x, inverse), points], dim=1)  # (N, C + P)
        return self.head(self.dropout(z))  # (N, K)

    def decode(self, feat: Tensor, indices: Tensor, batch_size: int) -> spconv.SparseConvTensor:
        """The last decoder's features at the input voxels, in input row order."""
        x = sparse_tensor(feat, indices, batch_size, levels=self.num_stages)
        if feat.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} feature channels, got {feat.shape[1]}")
        x = self.stem(x)  # (M, stem_channels)
        skips = []
        for encoder in self.encoders:
            skips.append(x)  # encoder features of the level we are leaving
            x = encoder(x)  # (M_{l+1}, channels[l])
        for up, decoder in zip(self.ups, self.decoders, strict=True):
            x = up(x)  # (M_l, C_dec): rows in the order of the matching skip
            skip = skips.pop()
            x = x.replace_feature(torch.cat([x.features, skip.features], dim=1))
            x = decoder(x)  # (M_l, C_dec)
        return x  # (M, C_dec), input row order

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def point_mlp(in_channels: int, mid: int, channels: int, bn_momentum: float) -> nn.Module | None:
    """The point branch: two Linear + BN + ReLU layers on (N, in_channels) point inputs."""
    if channels == 0:
        return None
    return nn.Sequential(
        nn.Linear(in_channels, mid, bias=False),
        batch_norm(mid, momentum=bn_momentum),
        nn.ReLU(inplace=True),
        nn.Linear(mid, channels, bias=False),
        batch_norm(channels, momentum=bn_momentum),
        nn.ReLU(inplace=True),
    )


def forward_batch(net: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    """Point logits (N, K) of a collated batch (``pointseg.data.collate``): the point branch's
    own where ``net`` has one (it needs ``batch['point_feat']``), else each point's voxel's;
    voxel logits (M, K) for a batch without ``inverse``."""
    if has_point_branch(net) and "point_feat" not in batch:
        raise ValueError(
            "model.net.point_channels > 0 (a point branch) needs per-point inputs: set "
            "point_features: true on the Voxelize of data.train_transforms and "
            "data.val_transforms"
        )
    if "inverse" not in batch:  # voxel rows only (e.g. a timing batch of a voxel network)
        return net(batch["feat"], batch["indices"], batch["batch_size"])
    return net(
        batch["feat"], batch["indices"], batch["batch_size"],
        inverse=batch["inverse"], point_feat=batch.get("point_feat"),
    )  # fmt: skip


class SparseUNet(UNetSkeleton):
    """Sparse U-Net: (M, C_in) voxel features -> (M, num_classes) logits, same row order."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        stem_channels: int = 32,
        channels: Sequence[int] = SPUNET34C_CHANNELS,
        layers: Sequence[int] = SPUNET34C_LAYERS,
        stem_kernel: int = 5,
        dropout: float = 0.0,
        bn_momentum: float = BN_MOMENTUM,
        widths: Mapping[str, Any] | None = None,
        point_channels: int = 0,
    ) -> None:
        super().__init__()
        w = unet_widths(
            in_channels, num_classes, stem_channels, channels, layers, widths, point_channels
        )
        if stem_kernel < 1 or stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be odd (centred on the voxel), got {stem_kernel}")
        # A k=3 stem can share the full-resolution rulebook with the last decoder stage.
        stem_key = "subm0" if stem_kernel == 3 else "stem"

        def stack(in_ch: int, out_ch: int, mids: Sequence[int], level: int) -> nn.Module:
            return residual_stack(in_ch, out_ch, len(mids), indice_key=f"subm{level}",
                                  mid_channels=mids, bn_momentum=bn_momentum)  # fmt: skip

        self.build(
            in_channels, num_classes, w,
            stem_conv=subm_conv3d(in_channels, w["stem"], stem_kernel, indice_key=stem_key),
            stack=stack, dropout=dropout, bn_momentum=bn_momentum,
        )  # fmt: skip


def spunet34c(in_channels: int, num_classes: int, **kwargs) -> SparseUNet:
    """The standard SpUNet-34C / MinkUNet34C plan (4 levels, 39.1 M parameters)."""
    kwargs = {"channels": SPUNET34C_CHANNELS, "layers": SPUNET34C_LAYERS, **kwargs}
    return SparseUNet(in_channels, num_classes, **kwargs)


def spunet_small(in_channels: int, num_classes: int, **kwargs) -> SparseUNet:
    """A 4-level, one-block-per-stage variant for CPU CI (1.8 M parameters)."""
    kwargs = {"channels": SMALL_CHANNELS, "layers": SMALL_LAYERS, **kwargs}
    return SparseUNet(in_channels, num_classes, **kwargs)
