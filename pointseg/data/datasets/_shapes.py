"""Geometry behind the synthetic rooms: primitives, per-area sampling, occlusion, furniture.

Every object is a union of primitives whose surface can be sampled uniformly in closed form
(parallelograms, vertical cylinder sides, horizontal disks, spheres), so a whole room is
sampled with one vectorised draw per primitive *kind*: the Python cost is one call per part,
never one per point.

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

BIN = 0.05  # m: x-bins that pre-filter points for the inside-a-solid / inside-a-hole tests


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


@dataclass
class Samples:
    coord: np.ndarray  # (N, 3) float64
    prim: np.ndarray  # (N,) int64 row of ``meta``
    meta: np.ndarray  # (P, 6) per primitive: r g b label instance shade


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


class FloorPlan:
    """5 cm occupancy grid of the floor, for rejection sampling of footprints.

    Cells hold 0 (free), -1 (not floor / kept clear, e.g. the L-cut or a door's swing) or
    instance + 1. Rasterising footprints is cheap and handles any yaw, and "may overlap
    its own table" (chairs pushed under tables) is just an allowed value.
    """

    cell = 0.05

    def __init__(self, width: float, depth: float) -> None:
        self.size = (width, depth)
        self.occ = np.zeros((math.ceil(width / self.cell), math.ceil(depth / self.cell)), np.int32)
        self.occ[int(width / self.cell) :, :] = -1  # cells whose centre lies beyond the walls
        self.occ[:, int(depth / self.cell) :] = -1

    def cells(
        self, xy: Sequence[float], half: Sequence[float], yaw: float, grow: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Grid cells whose centre lies in the rotated rectangle, or None if it leaves the
        room's bounding box."""
        hx, hy = half[0] + grow, half[1] + grow
        c, s = math.cos(yaw), math.sin(yaw)
        ex, ey = abs(c) * hx + abs(s) * hy, abs(s) * hx + abs(c) * hy
        (x, y), tol = xy, 0.01
        if x - ex < -tol or y - ey < -tol or x + ex > self.size[0] + tol:
            return None
        if y + ey > self.size[1] + tol:
            return None
        i0, i1 = (
            max(0, int((x - ex) / self.cell)),
            min(self.occ.shape[0], int((x + ex) / self.cell) + 1),
        )
        j0, j1 = (
            max(0, int((y - ey) / self.cell)),
            min(self.occ.shape[1], int((y + ey) / self.cell) + 1),
        )
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
        dx, dy = (ii + 0.5) * self.cell - x, (jj + 0.5) * self.cell - y
        inside = (np.abs(c * dx + s * dy) <= hx) & (np.abs(c * dy - s * dx) <= hy)
        return ii[inside], jj[inside]

    def free(self, cells: tuple[np.ndarray, np.ndarray] | None, allow: Sequence[int] = ()) -> bool:
        if cells is None:
            return False
        v = self.occ[cells]
        ok = v == 0
        for a in allow:
            ok |= v == a + 1
        return bool(ok.all())

    def open_spot(self, target: Sequence[float], margin: float) -> np.ndarray:
        """Point of floor nearest ``target`` that is free for ``margin`` metres around."""
        k = max(1, round(margin / self.cell))
        free = np.pad(self.occ == 0, k)  # outside the grid counts as occupied
        ok = free.copy()
        for di in range(-k, k + 1):
            for dj in range(-k, k + 1):
                ok[k:-k, k:-k] &= free[
                    k + di : free.shape[0] - k + di, k + dj : free.shape[1] - k + dj
                ]
        ok = ok[k:-k, k:-k]
        if not ok.any():  # packed room: any free cell, else the target itself
            ok = self.occ == 0
            if not ok.any():
                return np.asarray(target, dtype=np.float64)
        i, j = np.nonzero(ok)
        xy = (np.stack([i, j], 1) + 0.5) * self.cell
        return xy[np.argmin(((xy - np.asarray(target)) ** 2).sum(1))]

    def mark(self, cells: tuple[np.ndarray, np.ndarray] | None, value: int) -> None:
        if cells is not None:
            self.occ[cells] = value


# --------------------------------------------------------------------------------------------
# Furniture. Sizes are drawn here; colours come from ``paint(role)``, which the caller ties to
# a class palette, so geometry and colour tendencies stay independent.
# --------------------------------------------------------------------------------------------


def table(rng: np.random.Generator, paint: Paint) -> Model:
    """Rectangular table on four legs (sometimes with a drawer pedestal), or a round one."""
    u, m = rng.uniform, Model()
    h, t = u(0.68, 0.78), u(0.025, 0.06)
    top, legs = paint("top"), paint("legs")
    if rng.random() < 0.2:
        r = u(0.4, 0.65)
        m.cylinder((0, 0), h - t, r, t, top, base=True, solid=True)
        m.cylinder((0, 0), 0.0, u(0.03, 0.07), h - t, legs, cap=False)
        m.cylinder((0, 0), 0.0, u(0.2, 0.3), 0.03, legs)
        m.tops.append([h, 0.0, 0.0, 0.7 * r, 0.7 * r, 0.6])
        m.half, m.height = (r, r), h
        return m
    w, d = u(0.8, 2.4), u(0.6, 1.2)
    m.box((-w / 2, -d / 2, h - t), (w / 2, d / 2, h), top, skip=(), solid=True, top=0.6)
    ls, inset = u(0.035, 0.08), u(0.02, 0.12)
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (w / 2 - inset - ls / 2), sy * (d / 2 - inset - ls / 2)
            m.box(
                (x - ls / 2, y - ls / 2, 0),
                (x + ls / 2, y + ls / 2, h - t),
                legs,
                skip=("bottom", "top"),
            )
    if rng.random() < 0.25:  # drawer block under one end: a small cabinet that is "table"
        pw = min(0.45, 0.35 * w)
        x0 = w / 2 - inset - pw if rng.random() < 0.5 else -w / 2 + inset
        m.box((x0, -d / 2 + inset, 0), (x0 + pw, d / 2 - inset, h - t), top, solid=True)
    m.half, m.height = (w / 2, d / 2), h
    return m


def chair(rng: np.random.Generator, paint: Paint) -> Model:
    """Four-legged or swivel office chair facing +y; backrest at -y, sometimes armrests."""
    u, m = rng.uniform, Model()
    w, d, sh, st = u(0.4, 0.52), u(0.4, 0.5), u(0.42, 0.5), u(0.03, 0.08)
    seat, frame = paint("seat"), paint("frame")
    back = seat if rng.random() < 0.6 else paint("back")
    m.box((-w / 2, -d / 2, sh - st), (w / 2, d / 2, sh), seat, skip=())
    bt, bh = u(0.02, 0.06), u(0.3, 0.5)
    m.box((-w / 2, -d / 2, sh), (w / 2, -d / 2 + bt, sh + bh), back)
    reach = max(w, d) / 2
    if rng.random() < 0.35:
        m.cylinder((0, 0), 0.07, 0.025, sh - st - 0.07, frame, cap=False)
        reach, phase = u(0.26, 0.32), u(0, 2 * np.pi)
        for k in range(5):
            m.box(
                (0, -0.02, 0.03), (reach, 0.02, 0.07), frame, skip=(), yaw=phase + k * 2 * np.pi / 5
            )
    else:
        ls = u(0.02, 0.04)
        for sx in (-1, 1):
            for sy in (-1, 1):
                x, y = sx * (w / 2 - ls / 2), sy * (d / 2 - ls / 2)
                m.box(
                    (x - ls / 2, y - ls / 2, 0),
                    (x + ls / 2, y + ls / 2, sh - st),
                    frame,
                    skip=("bottom", "top"),
                )
    if rng.random() < 0.3:
        az = sh + u(0.17, 0.23)
        for sx in (-1, 1):
            x = sx * (w / 2 + 0.02)
            m.box((x - 0.025, -d / 2, az - 0.03), (x + 0.025, d / 2 - 0.05, az), frame, skip=())
            m.box(
                (x - 0.01, d / 2 - 0.1, sh),
                (x + 0.01, d / 2 - 0.08, az - 0.03),
                frame,
                skip=("bottom",),
            )
    m.half, m.height = (reach, reach), sh + bh
    return m


def sofa(rng: np.random.Generator, paint: Paint, *, against_wall: bool) -> Model:
    """Seat block, backrest and two arms, optionally on legs and with cushions."""
    u, m = rng.uniform, Model()
    w, d, sh = u(1.4, 2.6), u(0.8, 1.0), u(0.38, 0.48)
    leg = 0.08 if rng.random() < 0.4 else 0.0
    fab = paint("fabric")
    bt, bh, aw, ah = u(0.15, 0.25), u(0.75, 0.95), u(0.1, 0.25), u(0.55, 0.7)
    m.box((-w / 2 + aw, -d / 2 + bt, leg), (w / 2 - aw, d / 2, sh), fab, solid=True)
    back_skip = ("bottom", "-y") if against_wall else ("bottom",)
    m.box((-w / 2, -d / 2, leg), (w / 2, -d / 2 + bt, bh), fab, skip=back_skip, solid=True)
    for x0 in (-w / 2, w / 2 - aw):
        m.box((x0, -d / 2, leg), (x0 + aw, d / 2, ah), fab, solid=True)
    if leg:
        lc = paint("legs")
        for x in (-w / 2 + 0.05, w / 2 - 0.08):
            for y in (-d / 2 + 0.05, d / 2 - 0.08):
                m.box((x, y, 0), (x + 0.03, y + 0.03, leg), lc, skip=("bottom", "top"))
    if rng.random() < 0.5:  # loose seat cushions, slightly off the base colour
        n, cw = int(rng.integers(2, 4)), w - 2 * aw
        cush = np.clip(fab * u(0.9, 1.1), 0, 1)
        for k in range(n):
            x0 = -cw / 2 + k * cw / n + 0.01
            m.box(
                (x0, -d / 2 + bt, sh), (x0 + cw / n - 0.02, d / 2 - 0.02, sh + u(0.06, 0.1)), cush
            )
    m.half, m.height = (w / 2, d / 2), bh
    return m


def cabinet(rng: np.random.Generator, paint: Paint, *, against_wall: bool) -> Model:
    """Closed cabinet with door seams and handles, or an open bookshelf (shelves as supports)."""
    u, m = rng.uniform, Model()
    w, d, h = u(0.4, 2.0), u(0.3, 0.6), u(0.5, 2.2)
    body = paint("body")
    back = ("bottom", "-y") if against_wall else ("bottom",)
    if h > 0.9 and rng.random() < 0.3:
        p = 0.02
        m.box((-w / 2, -d / 2, 0), (w / 2, -d / 2 + p, h), body, skip=back, solid=True)
        for x0 in (-w / 2, w / 2 - p):
            m.box((x0, -d / 2, 0), (x0 + p, d / 2, h), body, solid=True)
        n = max(2, round(h / u(0.3, 0.4)))
        gap = h / n
        for k in range(n + 1):
            z = min(k * gap, h - p)
            skip = ("bottom",) if k == 0 else ()
            clear = gap - p - 0.02 if k < n else 0.4
            lo, hi = (-w / 2 + p, -d / 2 + p, z), (w / 2 - p, d / 2, z + p)
            m.box(lo, hi, body, skip=skip, solid=k == 0, top=clear)
        m.half, m.height = (w / 2, d / 2), h
        return m
    m.box(
        (-w / 2, -d / 2, 0),
        (w / 2, d / 2, h),
        body,
        skip=back,
        solid=True,
        top=0.5 if h < 1.3 else None,
    )
    doors = max(1, round(w / u(0.4, 0.6)))
    seam, handle = np.clip(body * 0.5, 0, 1), paint("handle")
    for k in range(doors):
        x = -w / 2 + (k + 1) * w / doors
        if k < doors - 1:
            m.box(
                (x - 0.004, d / 2, 0.03),
                (x + 0.004, d / 2 + 0.003, h - 0.03),
                seam,
                skip=("bottom", "-y"),
            )
        hx = x - 0.06 if k % 2 == 0 else x - w / doors + 0.06
        hz = min(h - 0.1, u(0.8, 1.1)) if h > 1.2 else h - 0.1
        m.box(
            (hx - 0.01, d / 2, hz - 0.06),
            (hx + 0.01, d / 2 + 0.025, hz + 0.06),
            handle,
            skip=("-y",),
        )
    m.half, m.height = (w / 2, d / 2), h
    return m


def bed(rng: np.random.Generator, paint: Paint, *, against_wall: bool) -> Model:
    """Frame, mattress, optional duvet, pillows, headboard (at -y) and footboard."""
    u, m = rng.uniform, Model()
    w, ln, fh, mt = u(0.9, 1.9), u(1.9, 2.2), u(0.2, 0.4), u(0.15, 0.28)
    frame, sheet = paint("frame"), paint("sheet")
    ht = u(0.04, 0.1) if rng.random() < 0.8 else 0.0
    y0 = -(ln + ht) / 2
    yh, top = y0 + ht, fh + mt
    m.box((-w / 2, yh, 0), (w / 2, yh + ln, fh), frame, solid=True)
    ins = u(0.0, 0.03)
    duvet = rng.random() < 0.7
    yd = yh + u(0.45, 0.7) if duvet else yh + ln - ins
    m.box(
        (-w / 2 + ins, yh + ins, fh),
        (w / 2 - ins, yh + ln - ins, top),
        sheet,
        skip=("bottom", "top"),
        solid=True,
    )
    m.box(
        (-w / 2 + ins, yh + ins, top - 0.01),
        (w / 2 - ins, yd, top),
        sheet,
        skip=("bottom", "-x", "+x", "-y", "+y"),
    )
    if duvet:  # quilt on top plus drapes over the sides and the foot
        dc, dt, drop = paint("duvet"), u(0.03, 0.08), u(0.1, 0.3)
        m.box((-w / 2 - 0.02, yd, top), (w / 2 + 0.02, yh + ln + 0.02, top + dt), dc, solid=True)
        for x0 in (-w / 2 - 0.03, w / 2 + 0.02):
            m.box((x0, yd, top - drop), (x0 + 0.01, yh + ln + 0.02, top), dc, skip=("top",))
        m.box(
            (-w / 2 - 0.02, yh + ln + 0.02, top - drop),
            (w / 2 + 0.02, yh + ln + 0.03, top),
            dc,
            skip=("top",),
        )
    pc, npil = paint("pillow"), 1 if w < 1.3 else 2
    for k in range(npil):
        pw = min(u(0.5, 0.7), w / npil - 0.08)
        x0 = -w / 2 + (k + 0.5) * w / npil - pw / 2
        m.box((x0, yh + 0.05, top), (x0 + pw, yh + 0.05 + u(0.3, 0.42), top + u(0.08, 0.16)), pc)
    if ht:
        hc = frame if rng.random() < 0.6 else paint("headboard")
        skip = ("bottom", "-y") if against_wall else ("bottom",)
        m.box((-w / 2 - 0.02, y0, 0), (w / 2 + 0.02, yh, u(0.8, 1.3)), hc, skip=skip, solid=True)
        if rng.random() < 0.25:
            m.box((-w / 2, yh + ln, 0), (w / 2, yh + ln + ht, u(0.45, 0.7)), hc, solid=True)
    m.half, m.height = (w / 2 + 0.03, (ln + ht) / 2 + 0.03), top + 0.2
    return m


def clutter(rng: np.random.Generator, paint: Paint, where: str, clearance: float = 2.0) -> Model:
    """One small object; ``where`` is "table", "floor", "shelf", "wall" or "ceiling"."""
    u, m = rng.uniform, Model()
    if where == "wall":  # picture, whiteboard or wall TV, back against the wall (-y)
        w, h, t = u(0.3, 1.8), u(0.3, 1.2), u(0.02, 0.05)
        m.box(
            (-w / 2, -t / 2, -h / 2),
            (w / 2, t / 2, h / 2),
            paint("board"),
            skip=("-y",),
            solid=True,
        )
        m.half, m.height = (w / 2, t / 2), h
        return m
    if where == "ceiling":  # light panel hanging flush under the ceiling (z = 0 is its top)
        w, d, t = u(0.3, 1.2), u(0.2, 0.6), u(0.03, 0.08)
        m.box((-w / 2, -d / 2, -t), (w / 2, d / 2, 0), paint("lamp"), skip=("top",), solid=True)
        m.half, m.height = (w / 2, d / 2), t
        return m
    if where == "shelf":  # a row of upright books
        x, depth, n = 0.0, u(0.12, 0.25), int(rng.integers(3, 13))
        for k in range(n):
            bw, bh = u(0.015, 0.06), min(u(0.15, 0.32), clearance)
            m.box(
                (x, -depth / 2, 0),
                (x + bw, depth / 2, bh),
                paint(f"book{k}"),
                skip=("bottom", "-y"),
            )
            x += bw
        for q in m.quads:
            q[:, 0] -= x / 2
        m.half, m.height = (x / 2, depth / 2), 0.32
        return m
    kinds = ("monitor", "books", "cup", "lamp", "plant", "box", "laptop")
    if where == "floor":
        kinds = ("bin", "box", "plant", "floor_lamp", "ball", "box")
    kind = kinds[rng.integers(len(kinds))]
    body, r = paint("body"), 0.1
    if kind == "monitor":
        w, h = u(0.4, 0.7), u(0.25, 0.4)
        m.box((-w / 2, -0.02, 0.1), (w / 2, 0.02, 0.1 + h), paint("screen"), skip=())
        m.box((-0.02, -0.04, 0), (0.02, -0.02, 0.12), body)
        m.box((-0.1, -0.1, 0), (0.1, 0.05, 0.012), body)
        m.half, m.height = (w / 2, 0.1), 0.1 + h
    elif kind == "laptop":
        w, d = u(0.28, 0.38), u(0.2, 0.26)
        m.box((-w / 2, -d / 2, 0), (w / 2, d / 2, 0.02), body)
        m.box((-w / 2, -d / 2, 0.02), (w / 2, -d / 2 + 0.01, 0.02 + d), paint("screen"), skip=())
        m.half, m.height = (w / 2, d / 2), d
    elif kind == "books":
        z = 0.0
        for k in range(int(rng.integers(1, 6))):
            bw, bd, bh = u(0.15, 0.3), u(0.1, 0.22), u(0.015, 0.06)
            m.box(
                (-bw / 2, -bd / 2, z), (bw / 2, bd / 2, z + bh), paint(f"book{k}"), yaw=u(-0.3, 0.3)
            )
            z += bh
        m.half, m.height = (0.17, 0.17), z
    elif kind in ("box", "bin"):
        big = 2.0 if where == "floor" else 1.0
        w, d, h = u(0.08, 0.3) * big, u(0.08, 0.3) * big, u(0.05, 0.3) * big
        if kind == "bin":
            r = u(0.1, 0.2)
            m.cylinder((0, 0), 0, r, h + 0.1, body, solid=True)
            w = d = 2 * r
        else:
            m.box((-w / 2, -d / 2, 0), (w / 2, d / 2, h), body, solid=True)
        m.half, m.height = (w / 2, d / 2), h
    elif kind in ("cup", "ball"):
        r = u(0.03, 0.05) if kind == "cup" else u(0.1, 0.25)
        h = u(0.08, 0.3)
        if kind == "cup":
            m.cylinder((0, 0), 0, r, h, body)
        else:
            m.sphere((0, 0, r), r, body)
            h = 2 * r
        m.half, m.height = (r, r), h
    elif kind in ("lamp", "floor_lamp"):
        s = 1.0 if kind == "lamp" else 3.5
        post, r = u(0.25, 0.45) * s, u(0.08, 0.14) * (1 + (s > 1))
        m.cylinder((0, 0), 0, 0.05 * s**0.5, 0.02, body)
        m.cylinder((0, 0), 0.02, 0.01 * s**0.5, post, body, cap=False)
        m.cylinder((0, 0), post, r, u(0.12, 0.25), paint("shade"), base=True)
        m.half, m.height = (r, r), post + 0.25
    else:  # plant: pot plus foliage ball
        s = 1.0 if where != "floor" else 2.2
        r, h = u(0.05, 0.12) * s, u(0.08, 0.2) * s
        m.cylinder((0, 0), 0, r, h, paint("pot"), solid=True)
        fr = u(1.1, 1.6) * r
        m.sphere((0, 0, h + 0.7 * fr), fr, paint("foliage"))
        m.half, m.height = (fr, fr), h + 1.7 * fr
    return m
