"""Small callables on a sample dict (the Pointcept vocabulary).

A raw sample holds ``coord (N, 3) f32``, optional ``color (N, 3) f32 in [0, 1]``,
``normal``, ``strength`` and ``segment (N,) i64`` (ignore = -1). Geometric transforms
change ``coord`` (and ``normal``); ``Voxelize`` turns the sample into the network's
input: ``grid_coord``, ``feat``, ``inverse`` and ``segment``. Transforms never mutate
the arrays they are given: they return new arrays in a shallow copy of the dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pointseg.data.base import Compose, RandomTransform, Sample
from pointseg.data.voxelize import Mode, voxel_offsets, voxelize


class RandomRotateZ(RandomTransform):
    def __init__(self, *, max_angle: float = np.pi, p: float = 1.0, seed: int | None = None):
        super().__init__(seed)
        self.max_angle, self.p = max_angle, p

    def __call__(self, sample: Sample) -> Sample:
        if self.rng.random() >= self.p:
            return sample
        a = self.rng.uniform(-self.max_angle, self.max_angle)
        c, s = np.cos(a), np.sin(a)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
        out = dict(sample)
        out["coord"] = sample["coord"] @ rot.T
        if "normal" in sample:
            out["normal"] = sample["normal"] @ rot.T
        return out


class RandomFlip(RandomTransform):
    """Mirror x and/or y, each with probability ``p``."""

    def __init__(self, *, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__(seed)
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        sign = np.where(self.rng.random(2) < self.p, -1.0, 1.0).astype(np.float32)
        if (sign == 1).all():
            return sample
        mult = np.array([sign[0], sign[1], 1.0], dtype=np.float32)
        out = dict(sample)
        out["coord"] = sample["coord"] * mult
        if "normal" in sample:
            out["normal"] = sample["normal"] * mult
        return out


class RandomScale(RandomTransform):
    def __init__(self, *, low: float = 0.9, high: float = 1.1, seed: int | None = None) -> None:
        super().__init__(seed)
        self.low, self.high = low, high

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["coord"] = sample["coord"] * np.float32(self.rng.uniform(self.low, self.high))
        return out


class RandomJitter(RandomTransform):
    """Gaussian noise on coordinates, clipped so no point moves more than ``clip`` metres."""

    def __init__(self, *, sigma: float = 0.005, clip: float = 0.02, seed: int | None = None):
        super().__init__(seed)
        self.sigma, self.clip = sigma, clip

    def __call__(self, sample: Sample) -> Sample:
        noise = self.rng.normal(0.0, self.sigma, sample["coord"].shape).astype(np.float32)
        out = dict(sample)
        out["coord"] = sample["coord"] + np.clip(noise, -self.clip, self.clip)
        return out


class ChromaticJitter(RandomTransform):
    """Per-point colour noise, result kept in [0, 1]."""

    def __init__(self, *, std: float = 0.02, p: float = 0.95, seed: int | None = None) -> None:
        super().__init__(seed)
        self.std, self.p = std, p

    def __call__(self, sample: Sample) -> Sample:
        if "color" not in sample or self.rng.random() >= self.p:
            return sample
        noise = self.rng.normal(0.0, self.std, sample["color"].shape).astype(np.float32)
        out = dict(sample)
        out["color"] = np.clip(sample["color"] + noise, 0.0, 1.0)
        return out


class AddHeight:
    """``height (N, 1)``: metres above the lowest point, a cheap feature for floor/ceiling."""

    adds = ("height",)  # feature keys this transform makes (no reader has to provide them)

    def __call__(self, sample: Sample) -> Sample:
        z = sample["coord"][:, 2:3]
        out = dict(sample)
        out["height"] = (z - z.min()).astype(np.float32)
        return out


class Voxelize(RandomTransform):
    """Quantise and assemble the network input.

    ``mode="train"`` keeps one random point per voxel (the points seen by the loss are the
    kept points, so ``inverse`` is the identity). ``mode="mean"`` averages features per
    voxel and keeps every input point: ``inverse (N,)`` maps each to its voxel and
    ``segment (N,)`` stays at full resolution, so metrics skip no point.

    ``point_features=True`` (networks with a point branch) adds ``point_feat (N, C + 3)``: every
    point's own features and its offset inside its voxel (``voxel_offsets``), with ``inverse``
    and ``segment`` over every point in both modes (the loss is per point; ``mode`` then only
    says how voxel features are made).
    """

    def __init__(
        self,
        *,
        voxel_size: float,
        feat_keys: Sequence[str] = ("color",),
        mode: Mode = "mean",
        seed: int | None = None,
        point_features: bool = False,
    ) -> None:
        super().__init__(seed)
        self.voxel_size, self.feat_keys, self.mode = voxel_size, tuple(feat_keys), mode
        self.point_features = bool(point_features)

    def _features(self, sample: Sample) -> np.ndarray:
        n = sample["coord"].shape[0]
        parts = []
        for key in self.feat_keys:
            if key not in sample:
                raise KeyError(
                    f"feature '{key}' is not in the sample (has: {sorted(sample)}); "
                    "fix data.feat_keys or add a transform that provides it"
                )
            arr = np.asarray(sample[key], dtype=np.float32).reshape(n, -1)
            parts.append(arr)
        return np.concatenate(parts, axis=1)

    def __call__(self, sample: Sample) -> Sample:
        coord = sample["coord"]
        feat = self._features(sample)
        vox = voxelize(coord, feat, voxel_size=self.voxel_size, mode=self.mode, seed=self.rng)
        out: Sample = {"grid_coord": vox.grid_coord, "feat": vox.features}
        segment = sample.get("segment")
        if segment is not None and len(segment) != coord.shape[0]:
            raise ValueError(
                f"segment has {len(segment)} labels but coord has {coord.shape[0]} points"
            )
        if self.mode == "train" and not self.point_features:
            out["inverse"] = np.arange(len(vox.index), dtype=np.int64)
            if segment is not None:
                out["segment"] = np.asarray(segment)[vox.index]
            return out
        out["inverse"] = vox.inverse
        if segment is not None:
            out["segment"] = np.asarray(segment)
        if self.point_features:
            offset = voxel_offsets(coord, vox.origin, self.voxel_size, vox.grid_coord[vox.inverse])
            out["point_feat"] = np.concatenate([feat, offset], axis=1)  # (N, C + 3)
        return out


__all__ = [
    "AddHeight",
    "ChromaticJitter",
    "Compose",
    "RandomFlip",
    "RandomJitter",
    "RandomRotateZ",
    "RandomScale",
    "Voxelize",
]
