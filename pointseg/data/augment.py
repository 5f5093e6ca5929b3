"""Augmentations of the Pointcept recipes (rotations about every axis, translation, elastic
distortion, colour contrast and shift, dropout, crops, feature gains): small callables on a
sample dict, like those of ``pointseg.data.transforms``. Cropping and dropout belong before
``Voxelize``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from pointseg.data.base import RandomTransform, Sample


def take_points(sample: Sample, index: np.ndarray) -> Sample:
    """Shallow copy of ``sample`` with rows ``index`` of every per-point array: each numpy
    array whose first dimension is the number of points N (= len(coord)), so coord, color,
    normal, strength, segment, instance, height and any extra array stay aligned."""
    n = sample["coord"].shape[0]
    out = dict(sample)
    for key, value in sample.items():
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
            out[key] = value[index]
    return out


def _rotation_zyx(z: float, y: float, x: float) -> np.ndarray:
    """(3, 3) float32 Rz(z) @ Ry(y) @ Rx(x)."""
    cz, sz, cy, sy, cx, sx = np.cos(z), np.sin(z), np.cos(y), np.sin(y), np.cos(x), np.sin(x)
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return (rz @ ry @ rx).astype(np.float32)


def _check_ratio(name: str, value: float, *, high_open: bool = True) -> None:
    ok = 0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0
    if not ok:
        bound = "[0, 1)" if high_open else "[0, 1]"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")


class RandomRotate(RandomTransform):
    """Rotate about z by U(-angle_z, angle_z) and tilt about x and y by U(-max_tilt, max_tilt)
    each (radians), about the origin, with probability ``p``; normals rotate too. A small tilt
    mimics an uneven floor or a pitching vehicle."""

    def __init__(
        self,
        *,
        angle_z: float = np.pi,
        max_tilt: float = 0.0,
        p: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if not angle_z >= 0 or not max_tilt >= 0:
            raise ValueError(f"angle_z and max_tilt must be >= 0, got {angle_z}, {max_tilt}")
        _check_ratio("p", p, high_open=False)
        self.angle_z, self.max_tilt, self.p = angle_z, max_tilt, p

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        if self.rng.random() >= self.p:
            return out
        z = self.rng.uniform(-self.angle_z, self.angle_z)
        y, x = self.rng.uniform(-self.max_tilt, self.max_tilt, 2)
        rot = _rotation_zyx(z, y, x)
        out["coord"] = (sample["coord"] @ rot.T).astype(sample["coord"].dtype, copy=False)
        if "normal" in sample:
            out["normal"] = (sample["normal"] @ rot.T).astype(sample["normal"].dtype, copy=False)
        return out


class RandomTranslate(RandomTransform):
    """Shift the whole cloud by U(-shift, shift) metres per axis."""

    def __init__(
        self, *, shift: Sequence[float] = (0.2, 0.2, 0.0), seed: int | None = None
    ) -> None:
        super().__init__(seed)
        self.shift = np.asarray(shift, dtype=np.float64)
        if self.shift.shape != (3,) or (self.shift < 0).any():
            raise ValueError(f"shift must be three non-negative numbers (x, y, z), got {shift}")

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        delta = self.rng.uniform(-self.shift, self.shift)
        out["coord"] = (sample["coord"] + delta).astype(sample["coord"].dtype, copy=False)
        return out


def _blur(a: np.ndarray, axis: int) -> np.ndarray:
    """3-tap box filter along ``axis``; edge padding, so borders keep their scale."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 1)
    p = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    return (
        p.take(range(n), axis) + p.take(range(1, n + 1), axis) + p.take(range(2, n + 2), axis)
    ) / 3


def _trilinear(grid: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample ``grid`` (C, X, Y, Z) at fractional node coordinates ``u`` (N, 3) -> (N, C)."""
    dims = np.array(grid.shape[1:])
    i0 = np.clip(np.floor(u).astype(np.int64), 0, dims - 2)  # (N, 3)
    f = u - i0
    out = np.zeros((len(u), grid.shape[0]), dtype=np.float64)
    for corner in range(8):
        o = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        w = np.prod(np.where(o, f, 1.0 - f), axis=1)  # (N,)
        i = i0 + o
        out += w[:, None] * grid[:, i[:, 0], i[:, 1], i[:, 2]].T
    return out


class ElasticDistortion(RandomTransform):
    """Smooth random warping (as in MinkowskiEngine / Pointcept), with probability ``p``.

    For each ``(granularity, magnitude)`` pair, random noise on a lattice of ``granularity``
    metres is box-blurred twice along each axis, scaled so its largest value is 1, and
    trilinearly interpolated at every point; the point moves by ``magnitude`` times that.
    So each axis of each point moves by at most the sum of the magnitudes, and points closer
    than ``granularity`` move almost alike. (Pointcept's ``(0.2, 0.4), (0.8, 1.6)`` leave
    the noise unnormalised; ``(0.2, 0.1), (0.8, 0.4)`` here give displacements of a similar
    size.) The lattice spans the cloud: crop big outdoor scenes first or use a coarse
    granularity; more than ``max_nodes`` lattice nodes is refused.
    """

    def __init__(
        self,
        *,
        granularity_magnitude: Sequence[Sequence[float]] = ((0.2, 0.1), (0.8, 0.4)),
        p: float = 0.95,
        max_nodes: int = 8_000_000,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.levels = [(float(g), float(m)) for g, m in granularity_magnitude]
        if any(not g > 0 or not m >= 0 for g, m in self.levels):
            raise ValueError(
                "granularity_magnitude must be (granularity > 0, magnitude >= 0) pairs, got "
                f"{granularity_magnitude}"
            )
        _check_ratio("p", p, high_open=False)
        self.p, self.max_nodes = p, max_nodes

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        if self.rng.random() >= self.p or not self.levels:
            return out
        coord = sample["coord"]
        c = coord.astype(np.float64)
        lo, extent = c.min(0), np.ptp(c, axis=0)
        disp = np.zeros_like(c)
        for g, mag in self.levels:
            dims = np.floor(extent / g).astype(np.int64) + 3  # a node beyond the cloud each side
            if int(np.prod(dims)) > self.max_nodes:
                raise ValueError(
                    f"ElasticDistortion: granularity {g} m over a cloud of {extent.round(1)} m "
                    f"needs {int(np.prod(dims)):,} lattice nodes (max_nodes={self.max_nodes:,}); "
                    "use a coarser granularity, crop the cloud first (SphereCrop) or raise "
                    "max_nodes"
                )
            noise = self.rng.standard_normal((3, *dims)).astype(np.float32)
            for _ in range(2):
                for axis in (1, 2, 3):
                    noise = _blur(noise, axis)
            noise /= max(float(np.abs(noise).max()), 1e-12)
            disp += mag * _trilinear(noise, (c - lo) / g + 1.0)
        out["coord"] = (c + disp).astype(coord.dtype)
        return out


def _unit_color(sample: Sample, name: str) -> np.ndarray:
    color = sample["color"]
    if color.size and (color.min() < 0.0 or color.max() > 1.0):
        raise ValueError(
            f"{name}: color must be in [0, 1], got values in [{color.min()}, {color.max()}]; "
            "scale colours to [0, 1] (e.g. divide 8-bit colours by 255) when preparing the data"
        )
    return color


class ChromaticAutoContrast(RandomTransform):
    """Stretch each colour channel to the full [0, 1] range, blended with the original by
    ``blend_factor`` (random in [0, 1) when None), with probability ``p``. Channels that are
    constant are left alone."""

    def __init__(
        self, *, p: float = 0.2, blend_factor: float | None = None, seed: int | None = None
    ) -> None:
        super().__init__(seed)
        _check_ratio("p", p, high_open=False)
        if blend_factor is not None:
            _check_ratio("blend_factor", blend_factor, high_open=False)
        self.p, self.blend_factor = p, blend_factor

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        if "color" not in sample or self.rng.random() >= self.p:
            return out
        color = _unit_color(sample, "ChromaticAutoContrast")
        if len(color) == 0:
            return out
        lo, hi = color.min(0), color.max(0)
        span = hi - lo
        flat = span <= 1e-6
        stretched = np.where(flat, color, (color - lo) / np.where(flat, 1.0, span))
        blend = self.rng.random() if self.blend_factor is None else self.blend_factor
        mixed = (1.0 - blend) * color + blend * stretched
        out["color"] = np.clip(mixed, 0.0, 1.0).astype(color.dtype)  # clip: rounding only
        return out


class ChromaticTranslation(RandomTransform):
    """Add one random offset in [-ratio, ratio] per channel to every colour (a global tint),
    with probability ``p``; results saturate at 0 and 1."""

    def __init__(self, *, p: float = 0.95, ratio: float = 0.05, seed: int | None = None) -> None:
        super().__init__(seed)
        _check_ratio("p", p, high_open=False)
        _check_ratio("ratio", ratio, high_open=False)
        self.p, self.ratio = p, ratio

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        if "color" not in sample or self.rng.random() >= self.p:
            return out
        color = _unit_color(sample, "ChromaticTranslation")
        shift = self.rng.uniform(-self.ratio, self.ratio, color.shape[-1])
        out["color"] = np.clip(color + shift, 0.0, 1.0).astype(color.dtype)
        return out


class RandomDropout(RandomTransform):
    """With probability ``p``, drop ``round(ratio * N)`` random points from every per-point
    array alike (see :func:`take_points`); the kept points stay in their order."""

    def __init__(self, *, ratio: float = 0.2, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__(seed)
        _check_ratio("ratio", ratio)
        _check_ratio("p", p, high_open=False)
        self.ratio, self.p = ratio, p

    def __call__(self, sample: Sample) -> Sample:
        if self.rng.random() >= self.p:
            return dict(sample)
        n = sample["coord"].shape[0]
        keep = max(1, n - round(self.ratio * n)) if n else 0
        index = np.sort(self.rng.choice(n, keep, replace=False))
        return take_points(sample, index)


def _crop_center(
    coord: np.ndarray,
    mode: str,
    rng: np.random.Generator,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Centre of a crop: a random point (``"random"``) or the middle of the bounding box
    (``bounds``: the float64 (min, max) if the caller has them already)."""
    if mode == "random":
        return coord[rng.integers(coord.shape[0])].astype(np.float64)
    lo, hi = bounds if bounds is not None else (coord.min(0).astype(np.float64), coord.max(0))
    return (lo + hi) / 2


class SphereCrop(RandomTransform):
    """Keep the ``max_points`` points nearest to a centre: a random point (``mode="random"``,
    for training) or the middle of the bounding box (``"center"``). Clouds with at most
    ``max_points`` points pass unchanged; every per-point array is cropped alike."""

    def __init__(
        self,
        *,
        max_points: int = 80_000,
        mode: Literal["random", "center"] = "random",
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if isinstance(max_points, bool) or int(max_points) != max_points or max_points < 1:
            raise ValueError(f"max_points must be an integer >= 1, got {max_points!r}")
        if mode not in ("random", "center"):
            raise ValueError(f"mode must be 'random' or 'center', got {mode!r}")
        self.max_points, self.mode = int(max_points), mode

    def __call__(self, sample: Sample) -> Sample:
        coord = sample["coord"]
        n = coord.shape[0]
        if n <= self.max_points:
            return dict(sample)
        center = _crop_center(coord, self.mode, self.rng)
        d2 = ((coord - center) ** 2).sum(1)
        index = np.sort(np.argpartition(d2, self.max_points - 1)[: self.max_points])
        return take_points(sample, index)


class BoxCrop(RandomTransform):
    """Keep the points inside an axis-aligned box of ``size`` metres (x, y, z; ``None`` leaves
    an axis whole) centred on a random point (``mode="random"``, for training) or on the middle
    of the bounding box (``"center"``). For big LiDAR tiles and outdoor scans, where a crop of
    fixed extent (not a fixed point count, as ``SphereCrop``) keeps the density as it is. A cloud
    that fits inside the box passes unchanged; every per-point array is cropped alike."""

    def __init__(
        self,
        *,
        size: Sequence[float | None] = (40.0, 40.0, None),
        mode: Literal["random", "center"] = "random",
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if len(size) != 3:
            raise ValueError(f"size must give 3 extents (x, y, z; null = whole axis), got {size}")
        half = [np.inf if s is None else float(s) / 2 for s in size]
        if any(not h > 0 for h in half):
            raise ValueError(f"size extents must be positive (or null), got {list(size)}")
        if mode not in ("random", "center"):
            raise ValueError(f"mode must be 'random' or 'center', got {mode!r}")
        self.half, self.mode = np.array(half), mode

    def __call__(self, sample: Sample) -> Sample:
        coord = sample["coord"]
        lo, hi = coord.min(0).astype(np.float64), coord.max(0).astype(np.float64)
        if np.all(hi - lo <= 2 * self.half):
            return dict(sample)
        center = _crop_center(coord, self.mode, self.rng, (lo, hi))
        inside = np.all(np.abs(coord - center) <= self.half, axis=1)
        return take_points(sample, np.flatnonzero(inside))


class RandomFeatureScale(RandomTransform):
    """Multiply one per-point feature (e.g. ``strength``) by a factor drawn from
    ``[low, high]`` per sample: robustness to another sensor's or survey's gain."""

    def __init__(
        self,
        *,
        key: str = "strength",
        low: float = 0.8,
        high: float = 1.25,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if not 0 < low <= high:
            raise ValueError(f"RandomFeatureScale needs 0 < low <= high, got {low}, {high}")
        self.key, self.low, self.high = key, low, high

    def __call__(self, sample: Sample) -> Sample:
        if self.key not in sample:
            return sample
        out = dict(sample)
        factor = np.float32(self.rng.uniform(self.low, self.high))
        out[self.key] = np.asarray(sample[self.key], dtype=np.float32) * factor
        return out
