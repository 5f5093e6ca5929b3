"""What the simulated room scanner cannot see: points inside solids, holes and shadows.

Points are indexed once by a small integer key (x bin, or azimuth bin from the scanner) so that
each solid, hole or shadow tests only the points in its range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from pointseg.data.datasets.synth.shapes import rotate_xy

BIN = 0.05  # m: x-bins that pre-filter points for the inside-a-solid / inside-a-hole tests


class KeyIndex:
    """Points bucketed by a small integer key, sorted once (int16: numpy radix-sorts it), so
    range queries ("points with x in [a, b]") touch only their candidates."""

    def __init__(self, key: np.ndarray) -> None:
        self.order = np.argsort(key.astype(np.int16), kind="stable")
        self.sorted = key[self.order]

    def between(self, lo: int, hi: int) -> np.ndarray:
        a = np.searchsorted(self.sorted, lo, side="left")
        return self.order[a : np.searchsorted(self.sorted, hi, side="right")]


def in_spheres(
    coord: np.ndarray, xs: KeyIndex, centres: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Mask of points inside any sphere (occlusion holes); ``xs`` indexes x in BIN cells."""
    out = np.zeros(len(coord), dtype=bool)
    for c, r in zip(centres, radii, strict=True):
        cand = xs.between(math.floor((c[0] - r) / BIN), math.floor((c[0] + r) / BIN))
        out[cand[((coord[cand] - c) ** 2).sum(1) < r * r]] = True
    return out


def in_solids(
    coord: np.ndarray, xs: KeyIndex, instance: Callable[[np.ndarray], np.ndarray],
    solids: Sequence[Sequence[float]], margin: float,
) -> np.ndarray:  # fmt: skip
    """Mask of points inside a solid of *another* instance (grown by ``margin``).

    This is what removes the floor under a bed, the wall behind a flush cabinet and the
    table top under a monitor; ``instance(rows)`` gives the instance of candidate points.
    """
    out = np.zeros(len(coord), dtype=bool)
    for cx, cy, cz, hx, hy, hz, yaw, inst in solids:
        c, s = math.cos(yaw), math.sin(yaw)
        rx = abs(c) * hx + abs(s) * hy + margin
        cand = xs.between(math.floor((cx - rx) / BIN), math.floor((cx + rx) / BIN))
        p = coord[cand]
        dx, dy = p[:, 0] - cx, p[:, 1] - cy
        hit = (np.abs(c * dx + s * dy) <= hx + margin) & (np.abs(c * dy - s * dx) <= hy + margin)
        hit &= np.abs(p[:, 2] - cz) <= hz + margin
        cand = cand[hit]
        out[cand[instance(cand) != inst]] = True
    return out


AZ_BINS = 2048


def azimuth_key(coord: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """Bin of each point's horizontal direction from the scanner, for :func:`shadowed`."""
    az = np.arctan2(coord[:, 1] - eye[1], coord[:, 0] - eye[0])
    return np.minimum(((az + np.pi) / (2 * np.pi) * AZ_BINS).astype(np.int16), AZ_BINS - 1)


def shadowed(
    coord: np.ndarray, az: KeyIndex, eye: np.ndarray, solid: Sequence[float]
) -> np.ndarray:
    """Indices of points whose line of sight to ``eye`` passes through the (shrunk) solid.

    Only points in the solid's azimuth range are tested (slab test in the box frame). The box
    is shrunk by 2 cm so its own visible faces do not shadow themselves; its far faces do.
    """
    cx, cy, cz, hx, hy, hz, yaw = solid[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    corners = np.array([[sx * hx, sy * hy] for sx in (-1, 1) for sy in (-1, 1)])
    corners = rotate_xy(corners, yaw) + [cx, cy]
    mid = math.atan2(cy - eye[1], cx - eye[0])
    rel = np.arctan2(corners[:, 1] - eye[1], corners[:, 0] - eye[0]) - mid
    rel = (rel + np.pi) % (2 * np.pi) - np.pi
    if np.hypot(cx - eye[0], cy - eye[1]) < max(hx, hy) * 1.5:  # scanner next to it: test all
        lo, hi = -np.pi, np.pi
    else:
        lo, hi = mid + rel.min(), mid + rel.max()
    k0, k1 = (math.floor((a + np.pi) / (2 * np.pi) * AZ_BINS) for a in (lo, hi))
    parts = [az.between(max(k0, 0), min(k1, AZ_BINS - 1))]
    if k0 < 0:
        parts.append(az.between(k0 + AZ_BINS, AZ_BINS - 1))
    if k1 >= AZ_BINS:
        parts.append(az.between(0, k1 - AZ_BINS))
    cand = np.concatenate(parts)
    p = coord[cand]
    half = (max(hx - 0.02, 1e-3), max(hy - 0.02, 1e-3), max(hz - 0.02, 1e-3))
    ex, ey = c * (eye[0] - cx) + s * (eye[1] - cy), c * (eye[1] - cy) - s * (eye[0] - cx)
    dx, dy = p[:, 0] - cx, p[:, 1] - cy
    tmin, tmax = np.full(len(p), -np.inf), np.full(len(p), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for e, dirn, h in (
            (ex, c * dx + s * dy - ex, half[0]),
            (ey, c * dy - s * dx - ey, half[1]),
            (eye[2] - cz, p[:, 2] - eye[2], half[2]),
        ):
            t1, t2 = (-h - e) / dirn, (h - e) / dirn
            tmin = np.fmax(tmin, np.minimum(t1, t2))
            tmax = np.fmin(tmax, np.maximum(t1, t2))
    return cand[(tmin <= tmax) & (tmax > 0) & (tmin < 1)]
