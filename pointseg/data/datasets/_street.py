"""Procedural street scenes for the synthetic LiDAR: every object a few analytic primitives.

World frame: the street runs along x, the road surface is z = 0 and the sensor sits above a
lane at x = 0. Ground is made of boxes too (road, raised sidewalk blocks whose faces are the
curbs, slightly raised grass strips), so the ray caster needs only three intersection kernels:
boxes (optionally yawed), vertical cylinders and ellipsoids (optionally yawed). Surface details
that would cost primitives (lane markings, facade windows, car glass) are *patterns*: functions
of the hit point applied to the final returns, which change reflectance or drop the return.
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


@dataclass
class Street:
    prims: list[Prim]
    sensor: np.ndarray  # (3,) world position of the sensor


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


def _extent(x, y, z) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half extents) of the box spanning (low, high) ranges given in either order."""
    lo = np.minimum([x[0], y[0], z[0]], [x[1], y[1], z[1]])
    hi = np.maximum([x[0], y[0], z[0]], [x[1], y[1], z[1]])
    return (lo + hi) / 2, (hi - lo) / 2


class _Builder:
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
        """A new axis-aligned box instance from (low, high) ranges (see :func:`_extent`)."""
        return self.object(label, reflect)("box", *_extent(x, y, z), **kw)

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


def _windows(rng: np.random.Generator, box: Prim, base: float) -> Pattern:
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


def _markings(
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


def build_street(rng: np.random.Generator, *, extent: float, sensor_height: float) -> Street:
    """A straight street (sometimes crossed by another) reaching ``extent`` metres along x."""
    b, E = _Builder(rng), extent
    lane = rng.uniform(3.0, 3.6)
    n_right, n_left = int(rng.integers(1, 3)), int(rng.choice([0, 1, 1, 2]))
    ego = -(int(rng.integers(n_right)) + 0.5) * lane  # the sensor's lane, driving towards +x
    park = {s: 2.3 if rng.random() < 0.6 else 0.0 for s in (-1, 1)}
    edge = {-1: -(n_right * lane + park[-1]), 1: n_left * lane + park[1]}
    curb = rng.uniform(0.1, 0.18)
    cross = None
    if rng.random() < 0.4:
        xc, wc = rng.choice([-1, 1]) * rng.uniform(14, 45), rng.uniform(7, 14)
        cross = (xc - wc / 2, xc + wc / 2)

    lines = [(-j * lane, True) for j in range(1, n_right)]
    lines += [(j * lane, True) for j in range(1, n_left)]
    lines += [(-n_right * lane, False), (n_left * lane, False)] + ([(0.0, False)] if n_left else [])
    asphalt = rng.uniform(0.06, 0.15)
    road = b.object(ROAD, asphalt)  # instance 0
    road(
        "box",
        *_extent((-E, E), (edge[-1], edge[1]), (-0.5, 0)),
        pattern=_markings(rng, lines, asphalt, cross),
    )
    segments = [(-E, E)]
    if cross is not None:
        road("box", *_extent(cross, (-E, E), (-0.5, 0)))
        segments = [(-E, cross[0]), (cross[1], E)]

    walk_band: dict[int, tuple[float, float]] = {}
    for s in (-1, 1):
        e, trees = edge[s], []
        lawn = rng.uniform(1.0, 2.5) if rng.random() < 0.4 else 0.0
        inner = 0.3 + lawn if lawn else 0.0
        walk = inner + rng.uniform(1.8, 4.5)  # curb to property line
        walk_band[s] = (inner, walk)
        yard = rng.uniform(1.0, 7.0) if rng.random() < 0.6 else 0.0
        grass = rng.random() < 0.7
        concrete = rng.uniform(0.2, 0.35)
        for x0, x1 in segments:
            # margins keep lawns, yards and buildings off the sidewalk along the cross street
            x0m, x1m = x0 + (walk if x0 > -E else 0.0), x1 - (walk if x1 < E else 0.0)
            b.span((x0, x1), (e, s * E), (-0.5, curb), SIDEWALK, concrete)  # curb faces too
            if lawn:
                grass_refl = rng.uniform(0.35, 0.6)
                b.span(
                    (x0m, x1m), (e + s * 0.3, e + s * inner), (0, curb + 0.03), TERRAIN, grass_refl
                )
            if lawn or rng.random() < 0.4:  # a row of street trees
                y, step = e + s * (0.3 + lawn / 2 if lawn else 0.9), rng.uniform(6, 16)
                for x in np.arange(x0m + rng.uniform(2, 8), x1m - 2, step):
                    if rng.random() < 0.85:
                        b.tree(x, y, curb)
                        trees.append(x)
            line = e + s * walk  # property line
            if yard and grass:
                b.span((x0m, x1m), (line, s * E), (0, curb + 0.04), TERRAIN, rng.uniform(0.35, 0.6))
            _buildings(b, (x0m, x1m), s, line, yard, curb)
        _poles(b, s, e, curb, segments, trees)
        _parked_cars(b, s, e, park[s], segments, E)

    _traffic(b, lane, n_right, n_left, ego, cross)
    for _ in range(int(rng.integers(2, 16))):  # pedestrians, mostly near the sensor
        s = int(rng.choice([-1, 1]))
        x = rng.normal(0, 20)
        if cross is not None and rng.random() < 0.25:  # crossing the side street
            b.person(rng.uniform(*cross), edge[s] + s * rng.uniform(1, 8), 0.0)
        elif cross is None or not cross[0] - 1 < x < cross[1] + 1:
            lo, hi = walk_band[s]
            for k in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):  # or a group
                b.person(x + 0.7 * k, edge[s] + s * rng.uniform(lo + 0.4, hi - 0.4), curb)
    if cross is not None:
        for sx, sy in ((0, -1), (1, -1), (0, 1), (1, 1)):
            if rng.random() < 0.8:
                b.pole(cross[sx] + (sx * 2 - 1) * 0.6, edge[sy] + sy * 0.6, curb, -sy, "traffic")
    return Street(b.prims, np.array([0.0, ego, sensor_height]))


def _buildings(
    b: _Builder, xr: tuple[float, float], s: int, line: float, yard: float, curb: float
) -> None:
    rng, x = b.rng, xr[0]
    while x < xr[1] - 3:
        length = min(rng.uniform(8, 30), xr[1] - x)
        setback = max(0.0, yard + rng.uniform(-1.0, 1.5)) if yard else rng.uniform(0, 0.4)
        if rng.random() < 0.2:  # a gap: a yard between houses, maybe a tree in it
            gap = rng.uniform(3, 10)
            if yard + setback > 3 and rng.random() < 0.6:
                b.tree(x + gap / 2, line + s * rng.uniform(1.5, yard + setback), curb)
            x += gap
            continue
        height = int(rng.integers(1, 8)) * rng.uniform(2.8, 3.6) + rng.uniform(0.3, 1.5)
        y0 = line + s * setback
        depth = rng.uniform(8, 20)
        box = b.span(
            (x, x + length),
            (y0, y0 + s * depth),
            (0, curb + height),
            BUILDING,
            rng.uniform(0.1, 0.6),
        )
        box.pattern = _windows(rng, box, curb)
        if yard > 1.5 and rng.random() < 0.4:  # fence or hedge on the property line
            y, xs, top = line + s * 0.15, (x + 0.5, x + length - 0.5), curb + rng.uniform(0.8, 1.8)
            if rng.random() < 0.7:  # solid, or chain-link that lets rays through
                porosity = 0.6 if rng.random() < 0.4 else 0.0
                b.span(
                    xs,
                    (y - 0.03, y + 0.03),
                    (curb, top),
                    FENCE,
                    rng.uniform(0.15, 0.5),
                    porosity=porosity,
                )
            else:
                width = rng.uniform(0.5, 1.0)
                b.span(
                    xs,
                    (y, y + s * width),
                    (curb, top),
                    VEGETATION,
                    rng.uniform(0.3, 0.55),
                    porosity=0.1,
                )
        for _ in range(int(rng.integers(0, 3)) if yard > 1.5 else 0):
            b.bush(rng.uniform(x, x + length), line + s * rng.uniform(0.8, yard), curb)
        x += length + (rng.uniform(0.5, 4) if rng.random() < 0.3 else 0.0)


def _poles(
    b: _Builder,
    s: int,
    e: float,
    curb: float,
    segments: list[tuple[float, float]],
    trees: list[float],
) -> None:
    rng = b.rng
    y = e + s * rng.uniform(0.4, 0.7)
    spacing = rng.uniform(20, 40)
    for x0, x1 in segments:
        xs = list(np.arange(x0 + rng.uniform(1, spacing), x1 - 1, spacing))
        kinds = ["light"] * len(xs)
        extra = int(rng.poisson((x1 - x0) / 30))
        xs += list(rng.uniform(x0 + 1, x1 - 1, extra))
        kinds += ["sign"] * extra
        for x, kind in zip(xs, kinds, strict=True):
            if all(abs(x - t) > 1.5 for t in trees):
                b.pole(x, y, curb, -s, kind)


def _parked_cars(
    b: _Builder, s: int, e: float, park: float, segments: list[tuple[float, float]], E: float
) -> None:
    if not park:
        return
    rng = b.rng
    for x0, x1 in segments:
        x = x0 + (rng.uniform(0, 6) if x0 <= -E else 6.0)  # keep clear of the crossing
        while x < x1 - 6:
            if rng.random() < 0.25:
                x += rng.uniform(5, 25)
                continue
            yaw = (0.0 if rng.random() < 0.8 else np.pi) + rng.normal(0, 0.03)
            b.car(x + 2.5, e - s * (park / 2 + rng.normal(0, 0.12)), yaw)
            x += 5.0 + rng.uniform(0.5, 3)


def _traffic(
    b: _Builder,
    lane: float,
    n_right: int,
    n_left: int,
    ego: float,
    cross: tuple[float, float] | None,
) -> None:
    rng = b.rng
    taken: list[tuple[float, float]] = [(ego, 0.0)]  # (lane y, x): the ego car first
    for _ in range(int(rng.integers(0, 7))):
        k = int(rng.integers(n_right + n_left))
        y, yaw = (-(k + 0.5) * lane, 0.0) if k < n_right else ((k - n_right + 0.5) * lane, np.pi)
        x = rng.uniform(-60, 60)
        if all(abs(x - tx) > 8 or abs(y - ty) > 1 for ty, tx in taken):
            taken.append((y, x))
            b.car(x, y + rng.normal(0, 0.2), yaw + rng.normal(0, 0.02))
    if cross is not None:
        mid, w = (cross[0] + cross[1]) / 2, (cross[1] - cross[0]) / 4
        for _ in range(int(rng.integers(0, 3))):
            side = rng.choice([-1, 1])
            b.car(mid + side * w, side * rng.uniform(12, 40), side * np.pi / 2)
