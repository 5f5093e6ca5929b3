"""Label scans of any size with a trained voxel network: one voxel grid, x/y blocks, voting, TTA.

The whole scan is voxelized once on the network's grid (anchored at the minimum coordinate,
exactly like ``Voxelize(mode="mean")``), so every block sees the same voxels and features as a
single pass would. Blocks are square x/y tiles of ``block_size`` metres widened by ``overlap``
metres of context on each side; each block's softmax is added to a per-voxel accumulator,
weighted down towards the block's outer edge where the network saw less context. Memory is
O(N) small per-point arrays (coordinates, features, one int32 inverse map) plus O(M x K) for
M voxels, whatever the block count. Test-time augmentation (z-rotations, x flip, scales)
averages the softmax of transformed copies of each block; 90-degree turns and flips permute
the integer grid exactly, other angles and scales re-quantise voxel centres.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from pointseg.data.voxelize import grid_extent, ravelled_keys, unravel_keys
from pointseg.io import label_dtype

Sample = dict[str, Any]
# how each feature changes under a rotation/flip/scale of the scene (others are invariant)
_GEOMETRIC = {"coord": "vector", "normal": "direction", "height": "length", "hag": "length"}


@dataclass(frozen=True)
class InferenceOptions:
    block_size: float = 16.0  # metres: x/y tile that each block labels
    overlap: float = 3.0  # metres of context added on every side of a tile
    margin_weight: float = 0.1  # vote of a margin voxel (tapering to 0 at the block edge)
    single_pass_max_voxels: int = 400_000  # scans with at most this many voxels: one pass
    tta: bool = False
    tta_angles: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)  # degrees about z
    tta_flip: bool = True  # also each angle with x mirrored (covers y mirrors too)
    tta_scales: tuple[float, ...] = (1.0,)
    chunk_size: int = 2_000_000  # points per chunk when voxelizing

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, *, tta: bool = False) -> InferenceOptions:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__) - {"tta"})
        if unknown:
            raise ValueError(f"unknown inference option(s) {unknown}")
        for key in ("tta_angles", "tta_scales"):
            if key in cfg:
                cfg[key] = tuple(float(v) for v in cfg[key])
        opts = cls(**{**cfg, "tta": bool(tta)})
        if opts.block_size is not None and opts.block_size <= 0:
            raise ValueError(f"inference.block_size must be > 0 metres, got {opts.block_size}")
        if opts.overlap < 0:
            raise ValueError(f"inference.overlap must be >= 0 metres, got {opts.overlap}")
        if not 0.0 <= opts.margin_weight <= 1.0:
            raise ValueError(f"inference.margin_weight must be in [0, 1], got {opts.margin_weight}")
        if any(s <= 0 for s in opts.tta_scales) or not opts.tta_angles or not opts.tta_scales:
            raise ValueError("inference.tta_angles/tta_scales must be non-empty, scales > 0")
        return opts

    def variants(self) -> list[tuple[float, bool, float]]:
        """(angle in degrees, mirror x, scale) of every TTA pass; identity alone without TTA."""
        if not self.tta:
            return [(0.0, False, 1.0)]
        flips = (False, True) if self.tta_flip else (False,)
        return [(a, f, s) for s in self.tta_scales for a in self.tta_angles for f in flips]


class SceneVoxels(NamedTuple):
    grid: np.ndarray  # (M, 3) int32 >= 0, sorted by ravelled key (as pointseg.data.voxelize)
    inverse: np.ndarray  # (N,) int32/int64 point -> voxel
    counts: np.ndarray  # (M,) int64 points per voxel
    feat: np.ndarray  # (M, C) float32 mean features
    groups: dict[str, slice]  # feature key -> its columns of feat


class Prediction(NamedTuple):
    labels: np.ndarray  # (N,) smallest unsigned int type
    voxel_probs: np.ndarray  # (M, K) float32 voted class probabilities
    inverse: np.ndarray  # (N,) point -> voxel row
    num_blocks: int

    def point_probs(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.voxel_probs[self.inverse[start:stop]]  # (n, K)


def voxelize_scene(
    sample: Sample, feat_keys: Sequence[str], *, voxel_size: float, chunk_size: int = 2_000_000
) -> SceneVoxels:
    """Mean-voxelize a whole scan chunk by chunk (same grid, order and features as
    ``pointseg.data.voxelize.voxelize(mode="mean")`` but no (N, C) or (N, 3) int64 copies)."""
    coord = sample["coord"]  # (N, 3) f32
    n = len(coord)
    if n == 0:
        raise ValueError("the scan has 0 points: nothing to label")
    for k in feat_keys:
        if len(sample[k]) != n:
            raise ValueError(
                f"feature '{k}' has {len(sample[k])} rows but coord has {n} points; every "
                "per-point array must describe the same points"
            )
    finite = np.isfinite(coord).all(1)
    if not finite.all():
        raise ValueError(
            f"coord has {int((~finite).sum())} point(s) with NaN/Inf coordinates (first at row "
            f"{int(np.flatnonzero(~finite)[0])}); leave them out first "
            "(pointseg.io.read_points(..., nonfinite='drop') does it and says which)"
        )
    origin, dims = grid_extent(coord, voxel_size)
    if float(np.prod(dims.astype(np.float64))) >= 2**62:
        raise ValueError(f"voxel grid {dims} too large at voxel_size={voxel_size}")
    key = ravelled_keys(coord, origin, voxel_size, dims)
    ukey, inverse, counts = torch.unique(
        torch.from_numpy(key), sorted=True, return_inverse=True, return_counts=True
    )
    del key
    grid = unravel_keys(ukey.numpy(), dims)
    del ukey
    if len(counts) < 2**31:
        inverse = inverse.to(torch.int32)
    groups, start = {}, 0
    for k in feat_keys:
        width = int(np.prod(np.shape(sample[k])[1:], dtype=np.int64))
        groups[k], start = slice(start, start + width), start + width
    acc = torch.zeros((len(counts), start), dtype=torch.float64)
    for i in range(0, n, chunk_size):
        cols = [np.asarray(sample[k][i : i + chunk_size], dtype=np.float32) for k in feat_keys]
        f = np.concatenate([c.reshape(len(c), -1) for c in cols], 1).astype(np.float64)
        acc.index_add_(0, inverse[i : i + chunk_size].long(), torch.from_numpy(f))
    feat = (acc / counts[:, None].to(torch.float64)).to(torch.float32).numpy()
    return SceneVoxels(grid.astype(np.int32), inverse.numpy(), counts.numpy(), feat, groups)


def plan_blocks(
    grid: np.ndarray, *, tile: int, margin: int, margin_weight: float = 0.1
) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """(number of blocks, iterator of (voxel rows (B,) sorted, vote weights (B,) f32)).

    ``tile`` and ``margin`` are in voxels. A voxel of the block's own tile votes with weight
    1: it has at least ``margin`` of context all round. A margin voxel (context cut short on
    one side) votes with ``margin_weight`` falling linearly to 0 at the block edge.
    """
    tx = (grid[:, 0] // tile).astype(np.int64)
    ty = (grid[:, 1] // tile).astype(np.int64)
    nty = int(ty.max()) + 1
    tile_id = tx * nty + ty
    del tx, ty
    order = np.argsort(tile_id, kind="stable")
    edges = np.searchsorted(tile_id[order], np.arange(int(tile_id.max()) + 2))
    occupied = np.flatnonzero(np.diff(edges))
    reach = max(1, math.ceil(margin / tile))  # neighbour tiles that can hold margin voxels

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for t in occupied:
            i, j = divmod(int(t), nty)
            parts = [
                order[edges[a * nty + b] : edges[a * nty + b + 1]]
                for a in range(max(0, i - reach), i + reach + 1)
                for b in range(max(0, j - reach), min(nty, j + reach + 1))
                if a * nty + b < len(edges) - 1
            ]
            ids = np.concatenate(parts)
            xy = grid[ids, :2].astype(np.float64) + 0.5  # voxel centres, voxel units
            lo = np.array([i * tile - margin, j * tile - margin], dtype=np.float64)
            hi = lo + tile + 2 * margin
            inside = ((xy >= lo) & (xy < hi)).all(1)
            ids, xy = ids[inside], xy[inside]
            keep = np.argsort(ids)
            ids, xy = ids[keep], xy[keep]
            depth = np.minimum(xy - lo, hi - xy).min(1)  # distance to the block edge
            taper = margin_weight * np.clip(depth / max(margin, 1), 1e-3, 1.0)
            weight = np.where(depth >= margin, 1.0, taper)
            yield ids, weight.astype(np.float32)

    return len(occupied), blocks()


def _transform(
    grid: np.ndarray,
    feat: np.ndarray,
    counts: np.ndarray,
    groups: Mapping[str, slice],
    *,
    angle: float,
    flip: bool,
    scale: float,
    align: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One TTA copy of a block: (grid (M', 3) i64 >= 0, feat (M', C), back (B,) or None)."""
    if angle % 360 == 0 and not flip and scale == 1.0:
        # keep the global grid's alignment to the pooling strides: same result as one pass
        return grid - (grid.min(0) // align) * align, feat, None
    rad = math.radians(angle)
    c, s = round(math.cos(rad), 12), round(math.sin(rad), 12)
    rot = np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])  # (2, 2)
    back = None
    if scale == 1.0 and angle % 90 == 0:  # an exact permutation of grid cells
        xy = (grid[:, :2] + 0.5) @ rot.T - 0.5  # integral again
        g = np.concatenate([np.rint(xy), grid[:, 2:]], 1).astype(np.int64)
    else:
        centres = np.concatenate([(grid[:, :2] + 0.5) @ rot.T, grid[:, 2:] + 0.5], 1) * scale
        rows, inv = np.unique(np.floor(centres).astype(np.int64), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        w = counts.astype(np.float64)[:, None]
        merged = np.zeros((len(rows), feat.shape[1]))
        np.add.at(merged, inv, feat * w)
        wsum = np.bincount(inv, weights=counts, minlength=len(rows))[:, None]
        g, feat, back = rows, (merged / wsum).astype(np.float32), inv
    feat = feat.copy()
    for key, cols in groups.items():
        kind = _GEOMETRIC.get(key)
        if kind in ("vector", "direction") and cols.stop - cols.start == 3:
            feat[:, cols.start : cols.start + 2] = feat[:, cols.start : cols.start + 2] @ rot.T
        if kind in ("vector", "length"):
            feat[:, cols] *= scale
    return g - g.min(0), feat, back


class Predictor:
    """A trained network plus the data pipeline it was trained with, ready to label scans."""

    def __init__(
        self,
        net: nn.Module,
        *,
        pre_transform: Callable[[Sample], Sample],
        voxel_size: float,
        feat_keys: Sequence[str],
        class_names: Sequence[str],
        options: InferenceOptions | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.pre_transform, self.voxel_size = pre_transform, float(voxel_size)
        self.feat_keys, self.class_names = list(feat_keys), list(class_names)
        self.num_classes = len(self.class_names)
        self.options = options or InferenceOptions()
        self.align = 2 ** int(getattr(net, "num_stages", 4))
        self.derived = _derived_keys(pre_transform)

    @property
    def file_features(self) -> list[str]:
        """Features the input file itself must provide (the rest come from transforms)."""
        return [k for k in self.feat_keys if k not in self.derived]

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        options: InferenceOptions | None = None,
        device: str = "auto",
        data_overrides: Mapping[str, Any] | None = None,
        ckpt: Mapping[str, Any] | None = None,
        trust: bool = False,
    ) -> Predictor:
        """Network, classes and the val transforms before ``Voxelize`` from a checkpoint
        (``ckpt``: the already loaded checkpoint of ``path``, to avoid reading it twice; ``trust``:
        see ``pointseg.checkpoint.load_checkpoint``)."""
        import hydra
        from omegaconf import OmegaConf

        from pointseg.checkpoint import build_net, load_checkpoint
        from pointseg.data.transforms import Compose, Voxelize

        ckpt = load_checkpoint(path, trust=trust) if ckpt is None else ckpt
        stored = OmegaConf.create(ckpt["pointseg_config"])
        data = OmegaConf.merge(stored.data, data_overrides or {})
        net = build_net(ckpt)
        transforms = list(hydra.utils.instantiate(data.val_transforms))
        if not transforms or not isinstance(transforms[-1], Voxelize):
            raise ValueError(
                f"{path}: the stored data.val_transforms must end with Voxelize (got "
                f"{[type(t).__name__ for t in transforms]}); predict re-voxelizes the scan itself"
            )
        vox = transforms.pop()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(
            net,
            pre_transform=Compose(transforms),
            voxel_size=vox.voxel_size,
            feat_keys=vox.feat_keys,
            class_names=list(data.class_names),
            options=options,
            device=device,
        )

    @torch.no_grad()
    def _scores(self, grid: np.ndarray, feat: np.ndarray, counts: np.ndarray, groups) -> np.ndarray:
        """Mean softmax over the TTA copies of one block: (B, K) float32."""
        total = None
        for angle, flip, scale in self.options.variants():
            g, f, back = _transform(
                grid, feat, counts, groups, angle=angle, flip=flip, scale=scale, align=self.align
            )
            idx = torch.zeros((len(g), 4), dtype=torch.int32)
            idx[:, 1:] = torch.from_numpy(g.astype(np.int32))
            x = torch.from_numpy(np.ascontiguousarray(f)).to(self.device)
            probs = torch.softmax(self.net(x, idx.to(self.device), 1).float(), 1).cpu().numpy()
            probs = probs if back is None else probs[back]
            total = probs if total is None else total + probs
        return total / len(self.options.variants())

    def predict(self, sample: Sample, *, progress: Any = None) -> Prediction:
        """Labels for every point of ``sample`` (a dict from ``pointseg.io.read_points`` or a
        dataset); ``progress`` (a tqdm bar) is advanced once per block."""
        sample = self.pre_transform(dict(sample))
        for key in self.feat_keys:
            if key not in sample:
                raise KeyError(f"feature '{key}' missing (sample has {sorted(sample)})")
        opts = self.options
        vox = voxelize_scene(
            sample, self.feat_keys, voxel_size=self.voxel_size, chunk_size=opts.chunk_size
        )
        del sample
        m = len(vox.grid)
        if opts.block_size is None or m <= opts.single_pass_max_voxels:
            nblocks, blocks = 1, iter([(np.arange(m), np.ones(m, np.float32))])
        else:
            tile = max(1, round(opts.block_size / self.voxel_size))
            margin = round(opts.overlap / self.voxel_size)
            nblocks, blocks = plan_blocks(
                vox.grid, tile=tile, margin=margin, margin_weight=opts.margin_weight
            )
        if progress is not None:
            progress.reset(total=nblocks)
        acc = np.zeros((m, self.num_classes), np.float32)
        for ids, weight in blocks:
            grid = vox.grid[ids].astype(np.int64)
            probs = self._scores(grid, vox.feat[ids], vox.counts[ids], vox.groups)
            acc[ids] += weight[:, None] * probs
            if progress is not None:
                progress.update(1)
        acc /= acc.sum(1, keepdims=True)
        labels = acc.argmax(1).astype(label_dtype(self.num_classes))[vox.inverse]
        return Prediction(labels=labels, voxel_probs=acc, inverse=vox.inverse, num_blocks=nblocks)


def _derived_keys(pre_transform: Callable[[Sample], Sample]) -> set[str]:
    """Keys the pre-voxelization transforms add (e.g. AddHeight's ``height``)."""
    dummy = {"coord": np.zeros((2, 3), np.float32)}
    try:
        return set(pre_transform(dict(dummy))) - set(dummy)
    except Exception:  # a transform that needs more than coordinates: assume it adds nothing
        return set()
