"""A whole synthetic room as placed primitives, and the one-draw-per-kind surface sampler.

A room is sampled with one vectorised draw per primitive *kind* (parallelograms, cylinder
sides, disks, spheres): the Python cost is one call per part, never one per point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pointseg.data.datasets.synth.shapes import Model, rotate_xy


@dataclass
class Samples:
    coord: np.ndarray  # (N, 3) float64
    prim: np.ndarray  # (N,) int64 row of ``meta``
    meta: np.ndarray  # (P, 6) per primitive: r g b label instance shade


class Scene:
    """Placed primitives of a whole room; each row carries its label and instance id."""

    def __init__(self) -> None:
        self._quads: list[np.ndarray] = []  # rows: origin e1 e2 rgb label instance
        self._cyls: list[np.ndarray] = []  # rows: cx cy z0 r h rgb label instance
        self._disks: list[np.ndarray] = []  # rows: cx cy z r up rgb label instance
        self._spheres: list[np.ndarray] = []  # rows: cx cy cz r rgb label instance
        self.solids: list[list[float]] = []  # cx cy cz hx hy hz yaw instance (world)
        self.tops: list[list[float]] = []  # z cx cy hx hy yaw clearance instance (world)

    def add_quads(self, q: np.ndarray, label: int, instance: int) -> None:
        """Add world-frame (k, 12) parallelograms (origin, e1, e2, rgb): room structure."""
        self._quads.append(np.hstack([q, np.tile([label, instance], (len(q), 1))]))

    def add(
        self,
        m: Model,
        *,
        label: int,
        instance: int,
        xy: Sequence[float],
        yaw: float,
        z: float = 0.0,
    ) -> None:
        """Place a model: rotate by ``yaw`` about its origin, then move it to (xy, z)."""
        off = np.array([xy[0], xy[1], z])
        tag = [label, instance]

        def placed(rows: list) -> np.ndarray:
            a = np.asarray(rows, dtype=np.float64)
            a[:, :3] = rotate_xy(a[:, :3], yaw) + off
            return np.hstack([a, np.tile(tag, (len(a), 1))])

        if m.quads:
            q = np.concatenate(m.quads)
            o, e1, e2 = (rotate_xy(q[:, k : k + 3], yaw) for k in (0, 3, 6))
            self._quads.append(np.hstack([o + off, e1, e2, q[:, 9:12], np.tile(tag, (len(q), 1))]))
        for rows, dest in (
            (m.cyls, self._cyls),
            (m.disks, self._disks),
            (m.spheres, self._spheres),
        ):
            if rows:
                dest.append(placed(rows))
        for cx, cy, cz, hx, hy, hz, y in m.solids:
            (wx, wy), wz = rotate_xy(np.array([[cx, cy]]), yaw)[0] + off[:2], cz + z
            self.solids.append([wx, wy, wz, hx, hy, hz, yaw + y, instance])
        for tz, cx, cy, hx, hy, clear in m.tops:
            wx, wy = rotate_xy(np.array([[cx, cy]]), yaw)[0] + off[:2]
            self.tops.append([tz + z, wx, wy, hx, hy, yaw, clear, instance])

    def sample(
        self,
        rng: np.random.Generator,
        density: float,
        eye: np.ndarray,
        factor: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Samples:
        """Draw points on all surfaces: per primitive a Poisson count of area x ``density`` x
        visibility x ``factor(centre)`` (the scanner's falloff), then uniform positions.

        Visibility: parallelograms turned away from the scanner at ``eye`` keep 15 % (several
        scan positions, but mostly one side is seen); curved primitives get a flat 60 %.
        """
        empty = np.zeros((0, 14))
        q = np.concatenate(self._quads) if self._quads else empty
        c = np.concatenate(self._cyls) if self._cyls else empty[:, :10]
        d = np.concatenate(self._disks) if self._disks else empty[:, :10]
        s = np.concatenate(self._spheres) if self._spheres else empty[:, :9]
        o, e1, e2 = q[:, 0:3], q[:, 3:6], q[:, 6:9]
        n = np.cross(e1, e2)
        q_area = np.linalg.norm(n, axis=1)
        n /= np.maximum(q_area, 1e-12)[:, None]
        q_mid = o + 0.5 * (e1 + e2)
        v = eye - q_mid
        cos = np.einsum("ij,ij->i", n, v) / np.maximum(np.linalg.norm(v, axis=1), 1e-6)
        d_vis = np.clip(np.sign(eye[2] - d[:, 2]) * d[:, 4], 0.0, 1.0)
        area = np.concatenate(
            [
                q_area * (0.15 + 0.85 * np.clip(cos, 0.0, 1.0)),
                2 * np.pi * c[:, 3] * c[:, 4] * 0.6,
                np.pi * d[:, 3] ** 2 * (0.15 + 0.85 * d_vis),
                4 * np.pi * s[:, 3] ** 2 * 0.6,
            ]
        )
        mid = np.concatenate([q_mid, c[:, :3] + c[:, 4:5] * [0, 0, 0.5], d[:, :3], s[:, :3]])
        lam = area * density * (factor(mid) if factor is not None else 1.0)
        prim = np.repeat(np.arange(len(lam)), rng.poisson(lam))
        bounds = np.searchsorted(prim, np.cumsum([len(q), len(c), len(d)]))
        pq, pc, pd, ps = np.split(prim, bounds)
        st = rng.random((len(pq), 2))
        coord = [o[pq] + st[:, :1] * e1[pq] + st[:, 1:] * e2[pq]]
        pc = pc - len(q)
        th, h = rng.uniform(0, 2 * np.pi, len(pc)), rng.random(len(pc))
        ring = np.stack([np.cos(th), np.sin(th), h * c[pc, 4] / c[pc, 3]], 1)
        coord.append(c[pc, :3] + c[pc, 3:4] * ring)
        pd = pd - len(q) - len(c)
        th, rad = rng.uniform(0, 2 * np.pi, len(pd)), np.sqrt(rng.random(len(pd)))
        coord.append(
            d[pd, :3] + d[pd, 3:4] * np.stack([rad * np.cos(th), rad * np.sin(th), 0 * th], 1)
        )
        ps = ps - len(q) - len(c) - len(d)
        u = rng.normal(size=(len(ps), 3))
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-9)
        coord.append(s[ps, :3] + s[ps, 3:4] * u)
        shade = np.concatenate(
            [
                0.92 + 0.08 * n[:, 2],
                np.full(len(c), 0.95),
                0.92 + 0.08 * d[:, 4],
                np.full(len(s), 0.95),
            ]
        )
        meta = np.concatenate([q[:, 9:14], c[:, 5:10], d[:, 5:10], s[:, 4:9]])
        meta = np.hstack([meta, (shade + rng.uniform(-0.05, 0.05, len(shade)))[:, None]])
        return Samples(np.concatenate(coord), prim, meta)
