"""Primitives of the synthetic rooms' objects: a :class:`Model` is a union of surfaces.

Every object is a union of primitives whose surface can be sampled uniformly in closed form
(parallelograms, vertical cylinder sides, horizontal disks, spheres); :mod:`.scene` places
models and samples them.

Conventions: a :class:`Model` lives in a local frame with the floor at z = 0, its footprint
centred on the origin and its front (the side a person uses, away from a wall) facing +y.
Placing it rotates by a yaw about z and translates. Parallelogram normals (e1 x e2) point out
of the solid; the sampler uses them to thin faces that look away from the simulated scanner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Paint = Callable[[str], np.ndarray]  # part role ("top", "legs", ...) -> RGB for this instance


def rotate_xy(v: np.ndarray, yaw: float) -> np.ndarray:
    """Rotate the first two columns of (k, >=2) rows by ``yaw`` about z (copy)."""
    c, s = math.cos(yaw), math.sin(yaw)
    out = np.array(v, dtype=np.float64, copy=True)
    out[:, 0] = c * v[:, 0] - s * v[:, 1]
    out[:, 1] = s * v[:, 0] + c * v[:, 1]
    return out


def box_faces(lo: Sequence[float], hi: Sequence[float], skip: Sequence[str] = ()) -> np.ndarray:
    """(k, 9) rows origin|e1|e2 of an axis-aligned box's faces, normals pointing outwards.

    Faces are named by their outward normal: bottom, top, -x, +x, -y (back), +y (front).
    Skipping faces nobody can see (the bottom of anything on the floor, the back of a
    cabinet against a wall) keeps points off invisible surfaces.
    """
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    dx, dy, dz = x1 - x0, y1 - y0, z1 - z0
    faces = {
        "bottom": (x0, y0, z0, 0, dy, 0, dx, 0, 0),
        "top": (x0, y0, z1, dx, 0, 0, 0, dy, 0),
        "-y": (x0, y0, z0, dx, 0, 0, 0, 0, dz),
        "+y": (x0, y1, z0, 0, 0, dz, dx, 0, 0),
        "-x": (x0, y0, z0, 0, 0, dz, 0, dy, 0),
        "+x": (x1, y0, z0, 0, dy, 0, 0, 0, dz),
    }
    return np.array([f for name, f in faces.items() if name not in skip], dtype=np.float64)


@dataclass
class Model:
    """Surfaces of one object in its local frame, plus what layout and occlusion need."""

    half: tuple[float, float] = (0.0, 0.0)  # footprint half extents along local x, y
    height: float = 0.0
    quads: list[np.ndarray] = field(default_factory=list)  # (k, 12) origin e1 e2 rgb
    cyls: list[list[float]] = field(default_factory=list)  # cx cy z0 r h rgb (side only)
    disks: list[list[float]] = field(default_factory=list)  # cx cy z r up(+-1) rgb
    spheres: list[list[float]] = field(default_factory=list)  # cx cy cz r rgb
    solids: list[list[float]] = field(default_factory=list)  # cx cy cz hx hy hz yaw
    tops: list[list[float]] = field(default_factory=list)  # z cx cy hx hy clearance

    def box(
        self,
        lo: Sequence[float],
        hi: Sequence[float],
        rgb: np.ndarray,
        *,
        skip: Sequence[str] = ("bottom",),
        solid: bool = False,
        yaw: float = 0.0,
        top: float | None = None,
    ) -> None:
        """Add a box; ``solid`` hides other objects' points inside it, ``top`` (clearance in
        metres) offers its upper face as a support surface for clutter."""
        f = box_faces(lo, hi, skip)
        if yaw:
            f = np.hstack(
                [rotate_xy(f[:, 0:3], yaw), rotate_xy(f[:, 3:6], yaw), rotate_xy(f[:, 6:9], yaw)]
            )
        self.quads.append(np.hstack([f, np.broadcast_to(rgb, (len(f), 3))]))
        c = (np.asarray(lo, float) + np.asarray(hi, float)) / 2
        h = (np.asarray(hi, float) - np.asarray(lo, float)) / 2
        if solid:
            cx, cy = rotate_xy(c[None, :2], yaw)[0]
            self.solids.append([cx, cy, c[2], *h, yaw])
        if top is not None:
            self.tops.append([hi[2], c[0], c[1], h[0], h[1], top])

    def cylinder(
        self,
        xy: Sequence[float],
        z0: float,
        r: float,
        h: float,
        rgb: np.ndarray,
        *,
        cap: bool = True,
        base: bool = False,
        solid: bool = False,
    ) -> None:
        """Add an upright cylinder (side, optional top cap and bottom)."""
        self.cyls.append([xy[0], xy[1], z0, r, h, *rgb])
        if cap:
            self.disks.append([xy[0], xy[1], z0 + h, r, 1.0, *rgb])
        if base:
            self.disks.append([xy[0], xy[1], z0, r, -1.0, *rgb])
        if solid:
            self.solids.append([xy[0], xy[1], z0 + h / 2, 0.8 * r, 0.8 * r, h / 2, 0.0])

    def sphere(self, c: Sequence[float], r: float, rgb: np.ndarray) -> None:
        self.spheres.append([c[0], c[1], c[2], r, *rgb])


def tiles(q: np.ndarray, size: float) -> np.ndarray:
    """Split (k, 9+) parallelograms into pieces at most ``size`` along each edge, so that
    density factors evaluated per primitive (distance to the scanner) vary across big walls."""
    out = []
    for row in q:
        n1 = max(1, math.ceil(np.linalg.norm(row[3:6]) / size))
        n2 = max(1, math.ceil(np.linalg.norm(row[6:9]) / size))
        i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
        i, j = i.reshape(-1, 1), j.reshape(-1, 1)
        t = np.repeat(row[None], i.size, 0)
        t[:, 0:3] += i / n1 * row[3:6] + j / n2 * row[6:9]
        t[:, 3:6] /= n1
        t[:, 6:9] /= n2
        out.append(t)
    return np.concatenate(out)
