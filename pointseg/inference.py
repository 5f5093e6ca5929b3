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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

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
        """The options of an ``inference:`` config node; its ``_target_`` names the class
        (this one by default, or a subclass with its own options)."""
        cfg = dict(cfg or {})
        target = cfg.pop("_target_", None)
        if target is not None and target != f"{cls.__module__}.{cls.__qualname__}":
            import hydra

            other = hydra.utils.get_class(target)
            if not (isinstance(other, type) and issubclass(other, InferenceOptions)):
                raise ValueError(f"inference._target_={target} is no InferenceOptions class")
            return other.from_config(cfg, tta=tta)
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


class Prediction(NamedTuple):
    labels: np.ndarray  # (N,) smallest unsigned int type
    voxel_probs: np.ndarray | None  # (M, K) float32 voted class probabilities (voxel networks)
    inverse: np.ndarray  # (N,) point -> voxel row
    num_blocks: int
    probs: np.ndarray | None = None  # (N, K) float32 voted point probabilities (point branch)

    @property
    def num_classes(self) -> int:
        return (self.voxel_probs if self.probs is None else self.probs).shape[1]

    def point_probs(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        if self.probs is not None:
            return self.probs[start:stop]  # (n, K)
        return self.voxel_probs[self.inverse[start:stop]]  # (n, K)


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


def _turn(feat: np.ndarray, groups: Mapping[str, slice], rot: np.ndarray, scale: float) -> None:
    """In place: the geometric feature columns (``_GEOMETRIC``) of ``feat`` turned by ``rot``
    (2, 2) about z and scaled; the others are invariant."""
    for key, cols in groups.items():
        kind = _GEOMETRIC.get(key)
        if kind in ("vector", "direction") and cols.stop - cols.start == 3:
            feat[:, cols.start : cols.start + 2] = feat[:, cols.start : cols.start + 2] @ rot.T
        if kind in ("vector", "length"):
            feat[:, cols] *= scale


class BlockPoints(NamedTuple):
    """The points of one block, for a network with a point branch."""

    feat: np.ndarray  # (n, C + 3) float32: input features, then the offset inside the voxel
    local: np.ndarray  # (n,) int64: the point's voxel, as a row of the block


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
    points: BlockPoints | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, BlockPoints | None]:
    """One TTA copy of a block: (grid (M', 3) i64 >= 0, feat (M', C), back (B,) or None, the
    block's points turned the same way, their ``local`` rows in the copy's voxels)."""
    if angle % 360 == 0 and not flip and scale == 1.0:
        # keep the global grid's alignment to the pooling strides: same result as one pass
        return grid - (grid.min(0) // align) * align, feat, None, points
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
    _turn(feat, groups, rot, scale)
    if points is not None:
        pf = points.feat.copy()
        c_in = pf.shape[1] - 3
        _turn(pf[:, :c_in], groups, rot, scale)
        # the point's position in voxel units, turned like the voxel centres; its offset is
        # taken from its voxel's cell in the copy (points of a merged voxel keep their voxel)
        p = grid[points.local] + 0.5 + pf[:, c_in:].astype(np.float64)
        p = np.concatenate([p[:, :2] @ rot.T, p[:, 2:]], 1) * scale
        local = points.local if back is None else back[points.local]
        pf[:, c_in:] = (p - g[local] - 0.5).astype(np.float32)
        if c_in != pf.shape[1] - 3 or pf[:, c_in:].shape[1] != 3:
            raise AssertionError("point inputs must end with the 3 offset columns")
        points = BlockPoints(pf, local)
    return g - g.min(0), feat, back, points
