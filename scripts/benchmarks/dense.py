"""The sparse U-Net's training step against the same plan built from dense ``nn.Conv3d`` over
the scene's whole grid."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .core import Context, Section, log, room_batch, timed, train_step_fn


class _DenseBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout)
        self.c2, self.b2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout)
        self.proj = None
        if cin != cout:
            self.proj = nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.proj is None else self.proj(x)
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + idt)


class DenseUNet(nn.Module):
    """The sparse U-Net's plan (stem, strided convs, residual blocks, transposed convs, skips)
    built from dense ``nn.Conv3d`` over the whole grid."""

    def __init__(self, sparse_net: nn.Module) -> None:
        super().__init__()
        n = sparse_net.num_stages
        stem_c = sparse_net.stem.conv.out_channels
        k = sparse_net.stem.conv.kernel_size[0]
        self.stem = nn.Sequential(
            nn.Conv3d(sparse_net.in_channels, stem_c, k, padding=k // 2, bias=False),
            nn.BatchNorm3d(stem_c),
            nn.ReLU(),
        )
        width, self.enc, self.ups = [stem_c], nn.ModuleList(), nn.ModuleList()
        for i, stage in enumerate(sparse_net.encoders):
            w = stage[0].conv.out_channels
            blocks = [_DenseBlock(w, w) for _ in stage[1]]
            self.enc.append(
                nn.Sequential(
                    nn.Conv3d(width[i], w, 2, stride=2, bias=False),
                    nn.BatchNorm3d(w),
                    nn.ReLU(),
                    *blocks,
                )
            )
            width.append(w)
        prev, decs = width[n], []
        for j, (up, dec) in enumerate(zip(sparse_net.ups, sparse_net.decoders, strict=True)):
            out = up.conv.out_channels
            self.ups.append(
                nn.Sequential(
                    nn.ConvTranspose3d(prev, out, 2, stride=2, bias=False),
                    nn.BatchNorm3d(out),
                    nn.ReLU(),
                )
            )
            level = n - j - 1
            decs.append(
                nn.Sequential(
                    _DenseBlock(out + width[level], out),
                    *[_DenseBlock(out, out) for _ in range(len(dec) - 1)],
                )
            )
            prev = out
        self.dec = nn.ModuleList(decs)
        self.head = nn.Conv3d(prev, sparse_net.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for enc in self.enc:
            skips.append(x)
            x = enc(x)
        for up, dec in zip(self.ups, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


def sparse_vs_dense(voxel_size: float, rooms: int) -> dict[str, Any]:
    from pointseg.models.sparse_unet import spunet_small

    feat, idx, points = room_batch(rooms, voxel_size, room_size=(4.0, 6.0))
    torch.manual_seed(0)
    net = spunet_small(4, 9)
    log(f"dense vs sparse: {len(idx):,} voxels at {voxel_size} m")
    sparse_s, _ = timed(train_step_fn(net, feat, idx, rooms, 9), 3)
    # the same voxels on a dense grid (batch x C x X x Y x Z), each axis a multiple of 2^levels
    align = 2**net.num_stages
    ext = ((idx[:, 1:].amax(0) // align + 1) * align).tolist()
    cells = rooms * ext[0] * ext[1] * ext[2]
    dense_net = DenseUNet(net)
    x = torch.zeros((rooms, 4, *ext))
    b, gx, gy, gz = idx.long().unbind(1)
    x[b, :, gx, gy, gz] = feat
    labels = torch.randint(0, 9, (len(idx),), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(dense_net.parameters(), lr=1e-3, momentum=0.9)

    def dense_step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = dense_net(x)  # (B, K, X, Y, Z)
        loss = nn.functional.cross_entropy(logits[b, :, gx, gy, gz], labels)
        loss.backward()
        opt.step()

    log(f"dense step: grid {ext} x {rooms} = {cells:,} cells")
    dense_s, _ = timed(dense_step, 2)
    return {
        "voxel_size": voxel_size,
        "rooms": rooms,
        "points": points,
        "voxels": len(idx),
        "dense_cells": cells,
        "occupancy": round(len(idx) / cells, 4),
        "sparse_step_s": round(sparse_s, 3),
        "dense_step_s": round(dense_s, 3),
        "sparse_voxels_per_s": round(len(idx) / sparse_s),
        "dense_voxels_per_s": round(len(idx) / dense_s),
        "speedup": round(dense_s / sparse_s, 1),
    }


class Dense(Section):
    name = "dense"
    summary = (
        "training step (forward + backward + optimizer step) of the sparse U-Net against the "
        "same network built from dense torch.nn.Conv3d on the same scene, in voxels/s"
    )

    def run(self, ctx: Context) -> dict[str, Any]:
        return sparse_vs_dense(0.1 if ctx.quick else 0.08, 1 if ctx.quick else 2)

    def markdown(self, res: dict[str, Any]) -> list[str]:
        d = res
        return [
            "## Training step: sparse vs dense (spunet_small plan)",
            "",
            "| voxels | dense cells | sparse step | dense step | sparse voxels/s | "
            "dense voxels/s | speed-up |",
            "|---|---|---|---|---|---|---|",
            f"| {d['voxels']:,} | {d['dense_cells']:,} | {d['sparse_step_s']} s | "
            f"{d['dense_step_s']} s | {d['sparse_voxels_per_s']:,} | {d['dense_voxels_per_s']:,}"
            f" | {d['speedup']}x |",
            "",
        ]
