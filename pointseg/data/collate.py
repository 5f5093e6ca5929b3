"""Batching: concatenate scenes, prepend a batch index, offset inverse maps.

Offsetting ``inverse`` by the number of voxels before each scene lets
``logits[inverse]`` map a whole batch back to its points, so validation and
evaluation run with any batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Returns ``indices (M, 4) int32 [b, x, y, z]``, ``feat (M, C) f32``,
    ``inverse (N,) i64`` into the batch's voxels, ``segment (N,) i64`` (if labelled),
    ``voxel_offset``/``point_offset (B + 1,) i64``, ``batch_size`` and, for a point branch,
    ``point_feat (N, C') f32``."""
    if len(samples) == 0:
        raise ValueError("cannot collate an empty list of samples")
    n_vox = np.array([len(s["grid_coord"]) for s in samples], dtype=np.int64)
    n_pts = np.array([len(s["inverse"]) for s in samples], dtype=np.int64)
    voxel_offset = np.concatenate([[0], np.cumsum(n_vox)])
    point_offset = np.concatenate([[0], np.cumsum(n_pts)])

    indices = np.empty((voxel_offset[-1], 4), dtype=np.int32)
    for b, s in enumerate(samples):
        rows = slice(voxel_offset[b], voxel_offset[b + 1])
        indices[rows, 0] = b
        indices[rows, 1:] = s["grid_coord"]
    batch: dict[str, Any] = {
        "indices": torch.from_numpy(indices),
        "feat": torch.from_numpy(np.concatenate([s["feat"] for s in samples]).astype(np.float32)),
        "inverse": torch.from_numpy(
            np.concatenate([s["inverse"] + o for s, o in zip(samples, voxel_offset, strict=False)])
        ),
        "voxel_offset": torch.from_numpy(voxel_offset),
        "point_offset": torch.from_numpy(point_offset),
        "batch_size": len(samples),
    }
    if any("point_feat" in s for s in samples):  # a point branch's per-point inputs
        if not all("point_feat" in s for s in samples):
            raise ValueError("some samples have point_feat and some not: one Voxelize for all")
        batch["point_feat"] = torch.from_numpy(
            np.concatenate([s["point_feat"] for s in samples]).astype(np.float32)
        )
    if all("segment" in s for s in samples):
        batch["segment"] = torch.from_numpy(
            np.concatenate([np.asarray(s["segment"], dtype=np.int64) for s in samples])
        )
    return batch


def split_points(values: Tensor, point_offset: Tensor) -> list[Tensor]:
    """Per-scene views of a point-level tensor of a batch."""
    bounds = point_offset.tolist()
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
