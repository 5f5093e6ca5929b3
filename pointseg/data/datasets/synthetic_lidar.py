"""Synthetic outdoor LiDAR scans: a spinning multi-beam sensor ray-cast through street scenes.

A scene (:mod:`pointseg.data.datasets.synth.street`) is a straight street, sometimes with a
side street, made of analytic primitives: road with lane markings, sidewalk blocks raised by a
curb, grass strips, building facades with windows, trees and bushes, fences and hedges, parked
and moving cars, street lights, signs and traffic lights, and pedestrians. A sensor like a
Velodyne HDL-32E/64E (beam elevations, ``azimuth_steps`` firings per revolution) sits above a
lane; every ray keeps its nearest hit, so occlusion, ring patterns and the fall of density with
range all follow from the geometry. Foliage and chain-link fences let some rays through, glass
returns nothing, and returns get range noise, random dropout and a remission-like ``strength``
from the material and the angle of incidence.

Everything is a pure function of the integer seed, as in :mod:`.synthetic`: ``scene_seed``
derives disjoint seeds for the train/val/test splits and :class:`SyntheticLidar` serves the
scans as a torch ``Dataset``. Coordinates are metres in the sensor frame (x forward along the
street, z up; the road is about ``sensor_height`` below the origin).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from pointseg.data.datasets.generated import SPLITS, GeneratedScenes, scene_seed
from pointseg.data.datasets.synth.street import build_street
from pointseg.data.datasets.synth.street_parts import CLASS_NAMES, Prim

__all__ = ["CLASS_NAMES", "SPLITS", "SyntheticLidar", "beam_elevations", "generate_scan"]
__all__ += ["scene_seed"]

VEGETATION, TERRAIN = CLASS_NAMES.index("vegetation"), CLASS_NAMES.index("terrain")


def beam_elevations(beams: int, fov: tuple[float, float] | None = None) -> np.ndarray:
    """(beams,) elevation angles in degrees, ascending.

    ``fov=None`` mimics the real sensors: 32 beams evenly over -30.67..+10.67 deg (HDL-32E);
    64 beams as the HDL-64E's two blocks (+2..-8.33 deg at 1/3 deg, -8.83..-24.33 at 1/2 deg);
    any other count evenly over -25..+3 deg. ``fov=(low, high)`` spreads them evenly.
    """
    if isinstance(beams, bool) or operator.index(beams) < 2:
        raise ValueError(f"beams must be an integer >= 2, got {beams!r}")
    if fov is not None:
        low, high = map(float, fov)
        if not -90 < low < high < 90:
            raise ValueError(f"fov must be (low, high) degrees with -90 < low < high < 90: {fov}")
        return np.linspace(low, high, beams)
    if beams == 32:
        return np.linspace(-30.67, 10.67, 32)
    if beams == 64:
        return np.concatenate([np.linspace(-24.33, -8.83, 32), np.linspace(-8.33, 2.0, 32)])
    return np.linspace(-25.0, 3.0, beams)


# ---- ray / primitive intersection: rays share the origin o; d* are (b, a) direction grids ----
def _box(p: Prim, o: np.ndarray, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
    """Slab test; returns (t (b, a) with inf for misses, |cos| of the incidence angle)."""
    rx, ry, rz = o - p.center
    if p.yaw:  # into the box frame
        c, s = math.cos(p.yaw), math.sin(p.yaw)
        rx, ry = c * rx + s * ry, -s * rx + c * ry
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    near = np.full(dx.shape, -np.inf)
    far = np.full(dx.shape, np.inf)
    cos = np.zeros(dx.shape)
    for r, d, h in ((rx, dx, p.half[0]), (ry, dy, p.half[1]), (rz, dz, p.half[2])):
        inv = 1.0 / d
        t1, t2 = (-h - r) * inv, (h - r) * inv
        lo = np.minimum(t1, t2)
        face = lo > near  # the slab entered last is the face that was hit
        near = np.where(face, lo, near)
        cos = np.where(face, np.abs(d), cos)
        far = np.minimum(far, np.maximum(t1, t2))
    return np.where((near <= far) & (near > 0), near, np.inf), cos


def _cyl(p: Prim, o: np.ndarray, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cylinder: side, plus the top cap when the sensor is above it."""
    rx, ry = o[0] - p.center[0], o[1] - p.center[1]
    r, z0, z1 = p.half[0], p.center[2] - p.half[2], p.center[2] + p.half[2]
    a = dx * dx + dy * dy
    hb = rx * dx + ry * dy
    disc = hb * hb - a * (rx * rx + ry * ry - r * r)
    t = (-hb - np.sqrt(np.maximum(disc, 0.0))) / a
    z = o[2] + t * dz
    t = np.where((disc >= 0) & (t > 0) & (z >= z0) & (z <= z1), t, np.inf)
    cos = np.abs((rx + t * dx) * dx + (ry + t * dy) * dy) / r
    if o[2] > z1:
        tc = (z1 - o[2]) / dz
        qx, qy = rx + tc * dx, ry + tc * dy
        cap = (dz < 0) & (qx * qx + qy * qy <= r * r) & (tc < t)
        t, cos = np.where(cap, tc, t), np.where(cap, np.abs(dz), cos)
    return t, cos


def _ell(p: Prim, o: np.ndarray, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
    rx, ry, rz = o - p.center
    if p.yaw:
        c, s = math.cos(p.yaw), math.sin(p.yaw)
        rx, ry = c * rx + s * ry, -s * rx + c * ry
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    ax, ay, az = p.half
    rx, ry, rz = rx / ax, ry / ay, rz / az  # into the unit sphere's frame
    ux, uy, uz = dx / ax, dy / ay, dz / az
    a = ux * ux + uy * uy + uz * uz
    hb = rx * ux + ry * uy + rz * uz
    disc = hb * hb - a * (rx * rx + ry * ry + rz * rz - 1.0)
    t = (-hb - np.sqrt(np.maximum(disc, 0.0))) / a
    nx, ny, nz = (rx + t * ux) / ax, (ry + t * uy) / ay, (rz + t * uz) / az  # normal direction
    cos = np.abs(nx * dx + ny * dy + nz * dz) / np.sqrt(nx * nx + ny * ny + nz * nz)
    return np.where((disc >= 0) & (t > 0), t, np.inf), cos


_KERNELS = {"box": _box, "cyl": _cyl, "ell": _ell}


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (math.cos, math.sin))
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


class _Caster:
    """The (beams, azimuth) ray grid, a depth buffer, and culling of primitives to the block of
    rays that can see them (an azimuth window of columns and a range of beams)."""

    def __init__(self, elev_deg: np.ndarray, steps: int, rot: np.ndarray, phase: float) -> None:
        el = np.radians(elev_deg)[:, None]  # (B, 1)
        self.az0, self.step = phase, 2 * np.pi / steps
        az = phase + self.step * np.arange(steps)[None]  # (1, A)
        self.local = np.stack(
            np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el))
        )
        self.dx, self.dy, self.dz = np.einsum("ij,jba->iba", rot, self.local)  # world (B, A)
        self.el, self.steps = el[:, 0], steps
        self.yaw = math.atan2(rot[1, 0], rot[0, 0])
        # how far the tilt can move a ray in azimuth/elevation from its nominal angles
        tilt = math.acos(min(1.0, rot[2, 2]))
        self.el_margin = tilt + 1e-3
        self.az_margin = tilt * (1 + math.tan(np.abs(self.el).max())) + self.step
        shape = (len(self.el), steps)
        self.t = np.full(shape, np.inf)
        self.cos = np.zeros(shape)
        self.prim = np.full(shape, -1, dtype=np.int64)

    def blocks(self, prim: Prim, o: np.ndarray, max_range: float) -> list[tuple[slice, slice]]:
        cx, cy = prim.center[0] - o[0], prim.center[1] - o[1]
        dist, rad = math.hypot(cx, cy), prim.radius
        if dist - rad > max_range:
            return []
        z0, z1 = prim.center[2] - prim.half[2] - o[2], prim.center[2] + prim.half[2] - o[2]
        if dist <= rad + 0.05:  # around the sensor: every column
            cols, near = [slice(0, self.steps)], 1e-6
        else:
            half = math.asin(rad / dist) + self.az_margin
            mid = (math.atan2(cy, cx) - self.yaw - self.az0) / self.step
            lo = math.floor(mid - half / self.step)
            n = min(self.steps, math.ceil(mid + half / self.step) - lo + 1)
            lo %= self.steps
            cols = [slice(lo, min(lo + n, self.steps))]
            if lo + n > self.steps:
                cols.append(slice(0, lo + n - self.steps))
            near = dist - rad
        far = dist + rad
        el_lo = min(math.atan2(z0, near), math.atan2(z0, far)) - self.el_margin
        el_hi = max(math.atan2(z1, near), math.atan2(z1, far)) + self.el_margin
        rows = slice(
            int(np.searchsorted(self.el, el_lo)), int(np.searchsorted(self.el, el_hi, "right"))
        )
        return [] if rows.start >= rows.stop else [(rows, c) for c in cols]

    def cast(self, prims: list[Prim], o: np.ndarray, max_range: float, rng) -> None:
        for k, prim in enumerate(prims):
            kernel = _KERNELS[prim.shape]
            for rows, cols in self.blocks(prim, o, max_range):
                d = self.dx[rows, cols], self.dy[rows, cols], self.dz[rows, cols]
                with np.errstate(all="ignore"):  # parallel rays and misses make inf/nan
                    t, cos = kernel(prim, o, *d)
                best = self.t[rows, cols]  # a view: updated in place
                win = t < best
                if prim.porosity:
                    win &= rng.random(t.shape) >= prim.porosity
                best[win] = t[win]
                self.cos[rows, cols][win] = cos[win]
                self.prim[rows, cols][win] = k


def generate_scan(
    seed: int,
    *,
    beams: int = 32,
    azimuth_steps: int = 1800,
    fov: tuple[float, float] | None = None,
    max_range: float = 80.0,
    min_range: float = 1.5,
    sensor_height: float = 1.73,
    range_noise: float = 0.015,
    dropout: float = 0.03,
) -> dict[str, np.ndarray]:
    """Ray-cast one scan of a procedural street, fully determined by ``seed``.

    Args:
        beams: lasers; 32 and 64 get HDL-32E / HDL-64E elevations (see :func:`beam_elevations`).
        azimuth_steps: firings per revolution (1800 = 0.2 deg).
        fov: (low, high) elevation in degrees to spread the beams evenly over instead.
        max_range, min_range: returns outside [min_range, max_range] metres are dropped.
        sensor_height: metres above the road.
        range_noise: std of the gaussian range noise (metres); foliage and grass get more.
        dropout: chance that any return is lost; far, dark returns are lost more often.

    Returns:
        ``coord`` (N, 3) float32 sensor frame, ``strength`` (N, 1) float32 in [0, 1],
        ``segment`` (N,) int64 index into :data:`CLASS_NAMES`, ``instance`` (N,) int64 object
        id (0 is the road), points in firing order (azimuth-major). A default 32-beam scan has
        roughly 42k-52k points.
    """
    elev = beam_elevations(beams, fov)
    if isinstance(azimuth_steps, bool) or operator.index(azimuth_steps) < 8:
        raise ValueError(f"azimuth_steps must be an integer >= 8, got {azimuth_steps!r}")
    if not 0 <= min_range < max_range or not 0 < sensor_height < 10:
        raise ValueError(
            "need 0 <= min_range < max_range and 0 < sensor_height < 10 m, got "
            f"min_range={min_range}, max_range={max_range}, sensor_height={sensor_height}"
        )
    if not range_noise >= 0 or not 0 <= dropout < 1:
        raise ValueError(
            f"need range_noise >= 0 and 0 <= dropout < 1, got {range_noise}, {dropout}"
        )
    rng = np.random.default_rng(seed)
    street = build_street(rng, extent=max_range + 10, sensor_height=sensor_height)
    rot = _rotation(rng.normal(0, 0.05), rng.normal(0, 0.01), rng.normal(0, 0.01))
    caster = _Caster(elev, azimuth_steps, rot, phase=rng.uniform(0, 2 * np.pi / azimuth_steps))
    o = street.sensor
    caster.cast(street.prims, o, max_range, rng)

    # firing order: azimuth-major, every beam of a firing together
    t, cos, pid = caster.t.T.ravel(), caster.cos.T.ravel(), caster.prim.T.ravel()
    local = caster.local.transpose(2, 1, 0).reshape(-1, 3)  # (A * B, 3) sensor-frame directions
    hit = np.flatnonzero((pid >= 0) & (t >= min_range) & (t <= max_range))
    t, cos, pid, local = t[hit], cos[hit], pid[hit], local[hit]
    prims = street.prims
    label = np.array([p.label for p in prims])[pid]
    reflect = np.array([p.reflect for p in prims])[pid]
    void = np.zeros(len(t), dtype=bool)
    world = o + t[:, None] * (local @ rot.T)
    for k in np.unique(pid):
        if prims[k].pattern is not None:
            rows = np.flatnonzero(pid == k)
            reflect[rows], void[rows] = prims[k].pattern(world[rows], rng)

    sigma = np.where(label == VEGETATION, 0.04, np.where(label == TERRAIN, 0.02, 0.0))
    r = t + np.sqrt(range_noise**2 + sigma**2) * rng.standard_normal(len(t))
    strength = reflect * (0.35 + 0.65 * cos) * (1 - 0.3 * t / max_range)
    strength = np.clip(strength + rng.normal(0, 0.025, len(t)), 0.0, 1.0)
    lost = rng.random(len(t)) < dropout + 0.4 * (t / max_range) ** 2 * (1 - strength)
    keep = ~void & ~lost
    return {
        "coord": (r[keep, None] * local[keep]).astype(np.float32),
        "strength": strength[keep, None].astype(np.float32),
        "segment": label[keep].astype(np.int64),
        "instance": np.array([p.instance for p in prims], dtype=np.int64)[pid[keep]],
    }


class SyntheticLidar(GeneratedScenes):
    """``num_scenes`` synthetic LiDAR scans of one split (``generate_scan`` per scene seed)."""

    class_names = CLASS_NAMES
    generate = staticmethod(generate_scan)
