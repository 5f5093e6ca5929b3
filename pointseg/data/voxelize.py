"""Points -> voxels: unique grid coordinates, per-voxel features and the inverse map.

Everything is vectorised (one sort of ravelled int64 keys), so 10 M points take a few
seconds on two cores. The grid is anchored at the minimum coordinate of the cloud, so
grid coordinates are non-negative and start at 0.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch

Mode = Literal["mean", "train"]


class Voxelized(NamedTuple):
    grid_coord: np.ndarray  # (M, 3) int32, >= 0, unique, sorted by ravelled key
    inverse: np.ndarray  # (N,) int64, point -> voxel row
    counts: np.ndarray  # (M,) int64, points per voxel, sums to N
    index: np.ndarray  # (M,) int64, one representative point per voxel
    features: np.ndarray | None  # (M, C) float32: mean ("mean") or the representative's ("train")
    origin: np.ndarray  # (3,) float64, world position of grid cell (0, 0, 0)


def _check_inputs(coord: np.ndarray, feat: np.ndarray | None, voxel_size: float) -> None:
    if not isinstance(coord, np.ndarray):
        raise TypeError(f"coord must be a numpy array, got {type(coord).__name__}")
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must have shape (N, 3), got {coord.shape}")
    if coord.shape[0] == 0:
        raise ValueError("coord is empty (0 points): nothing to voxelize; check the input file")
    if coord.dtype not in (np.float32, np.float64):
        raise ValueError(f"coord must be float32 or float64, got {coord.dtype}")
    finite = np.isfinite(coord).all(axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        first = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"coord has {bad} point(s) with NaN/Inf coordinates (first at row {first}); "
            "remove them before voxelizing, e.g. coord[np.isfinite(coord).all(1)]"
        )
    if feat is not None:
        if feat.ndim not in (1, 2):
            raise ValueError(f"features must have shape (N,) or (N, C), got {feat.shape}")
        if feat.shape[0] != coord.shape[0]:
            raise ValueError(
                f"features have {feat.shape[0]} rows but coord has {coord.shape[0]} points; "
                "they must describe the same points"
            )
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise ValueError(f"voxel_size must be a positive number, got {voxel_size}")


def grid_coordinates(
    coord: np.ndarray, voxel_size: float, origin: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Integer cell of every point, computed in float64; returns (grid (N, 3) int64, origin)."""
    c64 = coord.astype(np.float64, copy=False)
    if origin is None:
        origin = c64.min(axis=0)
    grid = np.floor((c64 - origin) / voxel_size).astype(np.int64)
    if grid.max() >= 2**31 - 1:
        raise ValueError(
            f"voxel grid is too large for int32 coordinates (extent {np.ptp(c64, 0)} m at "
            f"voxel_size={voxel_size}); use a larger voxel_size or cut the scene into blocks"
        )
    return grid, origin


def voxelize(
    coord: np.ndarray,
    features: np.ndarray | None = None,
    *,
    voxel_size: float,
    mode: Mode = "mean",
    seed: int | np.random.Generator | None = 0,
) -> Voxelized:
    """Quantise points to a grid of ``voxel_size`` metres.

    ``mode="mean"`` averages the features of the points in each voxel (test time: nothing
    is dropped, ``inverse`` maps every point back). ``mode="train"`` keeps one random point
    per voxel as its representative, like Pointcept's GridSample train mode; ``seed`` makes
    the draw reproducible.
    """
    _check_inputs(coord, features, voxel_size)
    if mode not in ("mean", "train"):
        raise ValueError(f"mode must be 'mean' or 'train', got {mode!r}")
    grid, origin = grid_coordinates(coord, voxel_size)
    dims = grid.max(axis=0) + 1  # (3,)
    if float(dims[0]) * float(dims[1]) * float(dims[2]) >= 2**62:
        # the ravelled key would overflow int64: sort rows instead (slower, same result)
        rows, inverse, counts = torch.unique(
            torch.from_numpy(grid), dim=0, sorted=True, return_inverse=True, return_counts=True
        )
        grid_coord = rows.numpy()
    else:
        key = torch.from_numpy((grid[:, 0] * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2])
        ukey, inverse, counts = torch.unique(
            key, sorted=True, return_inverse=True, return_counts=True
        )
        uk = ukey.numpy()
        grid_coord = np.stack(
            [uk // (dims[1] * dims[2]), (uk // dims[2]) % dims[1], uk % dims[2]], 1
        )
    m = counts.numel()

    # points sorted by voxel; voxel v owns order[start[v] : start[v] + counts[v]]
    order = torch.argsort(inverse, stable=True)
    start = torch.cumsum(counts, 0) - counts
    if mode == "train":
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        offset = torch.from_numpy(np.floor(rng.random(m) * counts.numpy()).astype(np.int64))
        index = order[start + offset]
    else:
        index = order[start]  # first point of each voxel in input order

    feats_out = None
    if features is not None:
        f = np.asarray(features)
        f2 = f.reshape(f.shape[0], -1)
        if mode == "train":
            feats_out = f2[index.numpy()].astype(np.float32)
        else:
            acc = torch.zeros((m, f2.shape[1]), dtype=torch.float64)
            acc.index_add_(0, inverse, torch.from_numpy(f2.astype(np.float64, copy=False)))
            feats_out = (acc / counts[:, None].to(torch.float64)).to(torch.float32).numpy()
        if f.ndim == 1:
            feats_out = feats_out[:, 0]
    return Voxelized(
        grid_coord=grid_coord.astype(np.int32),
        inverse=inverse.numpy().astype(np.int64, copy=False),
        counts=counts.numpy().astype(np.int64, copy=False),
        index=index.numpy(),
        features=feats_out,
        origin=origin,
    )
