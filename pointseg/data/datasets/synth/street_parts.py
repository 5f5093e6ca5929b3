"""Parts of the synthetic streets: analytic primitives, the objects built from them, patterns.

Every object is a few primitives, and ground is made of boxes too (road, raised sidewalk
blocks whose faces are the curbs, slightly raised grass strips), so the ray caster needs only
three intersection kernels: boxes (optionally yawed), vertical cylinders and ellipsoids
(optionally yawed). Surface details that would cost primitives (lane markings, facade windows,
car glass) are *patterns*: functions of the hit point applied to the final returns, which
change reflectance or drop the return.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "vegetation", "car", "pole", "person", "terrain", "fence",
)  # fmt: skip
ROAD, SIDEWALK, BUILDING, VEGETATION, CAR, POLE, PERSON, TERRAIN, FENCE = range(len(CLASS_NAMES))

Shape = Literal["box", "cyl", "ell"]
# world hit points (n, 3), rng -> (reflectance (n,), no return (n,) bool)
Pattern = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(slots=True)
class Prim:
    """One analytic surface. ``half``: box half extents, ellipsoid radii or cylinder
    (radius, radius, half height); ``porosity``: chance a ray passes through (foliage,
    chain-link), drawn per ray."""

    shape: Shape
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    label: int
    instance: int
    reflect: float
    yaw: float = 0.0
    porosity: float = 0.0
    pattern: Pattern | None = None

    @property
    def radius(self) -> float:
        """Horizontal bounding radius about the centre."""
        hx, hy, _ = self.half
        return math.hypot(hx, hy) if self.shape == "box" else max(hx, hy)


def _local(p: np.ndarray, prim: Prim) -> np.ndarray:
    """(n, 3) hit points in the primitive's frame (centred, unyawed)."""
    q = p - np.asarray(prim.center)
    if prim.yaw:
        c, s = math.cos(prim.yaw), math.sin(prim.yaw)
        q = np.stack([c * q[:, 0] + s * q[:, 1], -s * q[:, 0] + c * q[:, 1], q[:, 2]], 1)
    return q


def _face(q: np.ndarray, half: tuple[float, float, float]) -> np.ndarray:
    """(n,) axis of the box face each local point lies on (0: x, 1: y, 2: top/bottom)."""
    return np.argmax(np.abs(q) / np.asarray(half), axis=1)


def _f3(v) -> tuple[float, float, float]:
    return float(v[0]), float(v[1]), float(v[2])


def box_span(x, y, z) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half extents) of the box spanning (low, high) ranges given in either order."""
    lo = np.minimum([x[0], y[0], z[0]], [x[1], y[1], z[1]])
    hi = np.maximum([x[0], y[0], z[0]], [x[1], y[1], z[1]])
    return (lo + hi) / 2, (hi - lo) / 2


class Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.prims, self.next_id = rng, [], 0

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(self, shape: Shape, center, half, label: int, inst: int, reflect: float, **kw) -> Prim:
        prim = Prim(shape, _f3(center), _f3(half), label, inst, float(reflect), **kw)
        self.prims.append(prim)
        return prim

    def object(self, label: int, reflect: float) -> Callable[..., Prim]:
        """``part(shape, center, half, reflect=..., **kw)`` adding parts of one new instance."""
        inst = self.new_id()

        def part(shape: Shape, center, half, reflect: float = reflect, **kw) -> Prim:
            return self.add(shape, center, half, label, inst, reflect, **kw)

        return part

    def span(self, x, y, z, label: int, reflect: float, **kw) -> Prim:
        """A new axis-aligned box instance from (low, high) ranges (see :func:`box_span`)."""
        return self.object(label, reflect)("box", *box_span(x, y, z), **kw)

    # ---- objects ---------------------------------------------------------------------------
    def tree(self, x: float, y: float, z: float) -> None:
        rng, part = self.rng, self.object(VEGETATION, self.rng.uniform(0.3, 0.55))
        trunk_h, crown_r, crown_h = rng.uniform(1.6, 3.5), rng.uniform(1.2, 3.2), rng.uniform(2, 6)
        top, r, porosity = (
            z + trunk_h + crown_h * 0.3,
            rng.uniform(0.1, 0.25),
            rng.uniform(0.2, 0.5),
        )
        part("cyl", (x, y, (z + top) / 2), (r, r, (top - z) / 2), reflect=rng.uniform(0.15, 0.3))
        spread = np.array([0.45 * crown_r, 0.45 * crown_r, 0.2])
        for k in range(int(rng.integers(1, 4))):  # a main blob and up to two smaller ones
            s = 1.0 if k == 0 else rng.uniform(0.55, 0.8)
            off = np.zeros(3) if k == 0 else rng.uniform(-1, 1, 3) * spread
            c = (x + off[0], y + off[1], z + trunk_h + crown_h / 2 + off[2] * crown_h)
            r3 = np.array([crown_r, crown_r, crown_h / 2]) * s * rng.uniform(0.85, 1.1, 3)
            part("ell", c, r3, yaw=rng.uniform(0, np.pi), porosity=porosity)

    def bush(self, x: float, y: float, z: float) -> None:
        r = self.rng.uniform([0.4, 0.4, 0.3], [1.3, 1.3, 0.8])
        part = self.object(VEGETATION, self.rng.uniform(0.3, 0.55))
        part("ell", (x, y, z + 0.6 * r[2]), r, yaw=self.rng.uniform(0, np.pi), porosity=0.15)

    def car(self, x: float, y: float, yaw: float) -> None:
        rng, part = self.rng, self.object(CAR, self.rng.uniform(0.05, 0.7))  # paint
        van = rng.random() < 0.15
        length = rng.uniform(4.8, 6.2) if van else rng.uniform(3.8, 4.9)
        width = rng.uniform(1.9, 2.1) if van else rng.uniform(1.65, 1.9)
        belt = rng.uniform(0.95, 1.1) if van else rng.uniform(0.75, 0.95)
        roof = rng.uniform(2.0, 2.6) if van else rng.uniform(1.35, 1.6)
        cab = length * (rng.uniform(0.7, 0.85) if van else rng.uniform(0.45, 0.6))
        shift = (length - cab) / 2 * (rng.uniform(0.3, 0.9) if van else rng.uniform(-0.4, 0.1))
        c, s = math.cos(yaw), math.sin(yaw)

        def at(u: float, v: float, zc: float) -> tuple[float, float, float]:
            return (x + c * u - s * v, y + s * u + c * v, zc)

        part(
            "box", at(0, 0, (0.25 + belt) / 2), (length / 2, width / 2, (belt - 0.25) / 2), yaw=yaw
        )
        half = (cab / 2, width / 2 - 0.07, (roof - belt) / 2)
        cabin = part("box", at(shift, 0, (belt + roof) / 2), half, yaw=yaw)
        cabin.pattern = _glass(cabin, rng.uniform(0.3, 0.7))
        for u in (1, -1):  # wheels, so rays do not pass freely under the body
            for v in (1, -1):
                wheel = at(u * (length / 2 - 0.75), v * (width / 2 - 0.12), 0.17)
                part("box", wheel, (0.32, 0.11, 0.17), reflect=0.05, yaw=yaw)

    def person(self, x: float, y: float, z: float) -> None:
        rng, part = self.rng, self.object(PERSON, self.rng.uniform(0.1, 0.45))  # clothes
        h, yaw, stride = rng.uniform(1.5, 1.95), rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 0.2)
        c, s = math.cos(yaw), math.sin(yaw)
        for side in (1, -1):  # legs
            u, v = side * stride, side * 0.1
            part(
                "cyl",
                (x + c * u - s * v, y + s * u + c * v, z + 0.24 * h),
                (0.065, 0.065, 0.24 * h),
            )
        part("ell", (x, y, z + 0.68 * h), (0.14, 0.22, 0.2 * h), yaw=yaw)  # torso
        part("ell", (x, y, z + h - 0.11), (0.1, 0.1, 0.11), reflect=rng.uniform(0.1, 0.3))

    def pole(self, x: float, y: float, z: float, toward: float, kind: str) -> None:
        """Streetlight (arm over the road), sign (retroreflective plate) or traffic light;
        ``toward`` is the y direction of the road (+1 or -1)."""
        rng, part = self.rng, self.object(POLE, self.rng.uniform(0.25, 0.5))
        r, lo, hi = {"light": (0.1, 6, 9), "sign": (0.05, 2.2, 3.2), "traffic": (0.1, 3.5, 5)}[kind]
        h = rng.uniform(lo, hi)
        part("cyl", (x, y, z + h / 2), (r, r, h / 2))
        top = z + h
        if kind == "light":
            arm = rng.uniform(1.0, 2.5)
            part("box", (x, y + toward * arm / 2, top - 0.1), (0.05, arm / 2, 0.05))
            part("box", (x, y + toward * arm, top - 0.2), (0.25, 0.15, 0.08), reflect=0.5)
        elif kind == "sign":
            w = rng.uniform(0.3, 0.45)
            shape = "ell" if rng.random() < 0.5 else "box"
            part(shape, (x, y, top - w), (0.02, w, w), reflect=rng.uniform(0.85, 1.0))
        else:
            part("box", (x, y, top - 0.45), (0.17, 0.17, 0.45), reflect=0.3)


def _glass(cabin: Prim, void: float) -> Pattern:
    """Car windows: side hits on the cabin return nothing with probability ``void``."""

    def pattern(p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        side = _face(_local(p, cabin), cabin.half) != 2
        refl = np.where(side, 0.1, cabin.reflect)
        return refl, side & (rng.random(len(p)) < void)

    return pattern


def windows(rng: np.random.Generator, box: Prim, base: float) -> Pattern:
    """Facade windows: a grid per floor; glass returns nothing most of the time."""
    floor, spacing = rng.uniform(2.8, 3.6), rng.uniform(1.8, 4.0)
    width, phase, void = rng.uniform(0.3, 0.7), rng.uniform(0, spacing), rng.uniform(0.5, 0.9)
    top = box.center[2] + box.half[2] - 0.6

    def pattern(p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        q = _local(p, box)
        axis = _face(q, box.half)
        u = np.where(axis == 0, q[:, 1], q[:, 0])
        v = (p[:, 2] - base) % floor / floor
        win = (axis != 2) & (((u + phase) % spacing) / spacing < width) & (v > 0.3) & (v < 0.85)
        win &= (p[:, 2] > base + 0.5) & (p[:, 2] < top)
        refl = np.where(win, 0.5 * box.reflect, box.reflect)
        return refl, win & (rng.random(len(p)) < void)

    return pattern


def markings(
    rng: np.random.Generator,
    lines: list[tuple[float, bool]],
    base: float,
    skip: tuple[float, float] | None,
) -> Pattern:
    """Painted lane lines (solid or dashed) at the given y; bright, as paint is in real scans."""
    ys = np.array([y for y, _ in lines])
    dashed = np.array([d for _, d in lines])
    period, phase, paint = rng.uniform(9, 12), rng.uniform(0, 12), rng.uniform(0.6, 0.85)

    def pattern(p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        near = np.abs(p[:, 1, None] - ys[None]) < 0.07  # (n, lines)
        on = ((p[:, 0] + phase) % period < 3.0)[:, None] | ~dashed[None]
        mark = (near & on).any(1)
        if skip is not None:
            mark &= (p[:, 0] < skip[0]) | (p[:, 0] > skip[1])
        return np.where(mark, paint, base), np.zeros(len(p), dtype=bool)

    return pattern
