"""Procedural street scenes for the synthetic LiDAR: the layout of one street.

World frame: the street runs along x, the road surface is z = 0 and the sensor sits above a
lane at x = 0. Lanes, parking, sidewalks, lawns and yards are drawn per side; buildings,
fences and hedges, trees, poles, parked and moving cars and pedestrians are placed along them
(:mod:`pointseg.data.datasets.synth.street_parts` builds each object).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pointseg.data.datasets.synth.street_parts import (
    BUILDING,
    FENCE,
    ROAD,
    SIDEWALK,
    TERRAIN,
    VEGETATION,
    Builder,
    Prim,
    box_span,
    markings,
    windows,
)


@dataclass
class Street:
    prims: list[Prim]
    sensor: np.ndarray  # (3,) world position of the sensor


def build_street(rng: np.random.Generator, *, extent: float, sensor_height: float) -> Street:
    """A straight street (sometimes crossed by another) reaching ``extent`` metres along x."""
    b, E = Builder(rng), extent
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
        *box_span((-E, E), (edge[-1], edge[1]), (-0.5, 0)),
        pattern=markings(rng, lines, asphalt, cross),
    )
    segments = [(-E, E)]
    if cross is not None:
        road("box", *box_span(cross, (-E, E), (-0.5, 0)))
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
    b: Builder, xr: tuple[float, float], s: int, line: float, yard: float, curb: float
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
        box.pattern = windows(rng, box, curb)
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
    b: Builder,
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
    b: Builder, s: int, e: float, park: float, segments: list[tuple[float, float]], E: float
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
    b: Builder,
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
