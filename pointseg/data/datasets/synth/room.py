"""Layout of one synthetic room: structure, door and window openings, furniture, clutter.

A room is rectangular or L-shaped (floor, walls, ceiling, openings); furniture is placed by
rejection sampling on a :class:`~pointseg.data.datasets.synth.floorplan.FloorPlan`, the biggest
wall-hugging pieces first, chairs around tables, then clutter on walls, under the ceiling, on
support surfaces and on the floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from pointseg.data.datasets.synth import clutter, furniture
from pointseg.data.datasets.synth.floorplan import FloorPlan
from pointseg.data.datasets.synth.palette import (
    BED,
    CABINET,
    CEILING,
    CHAIR,
    CLUTTER,
    FLOOR,
    SOFA,
    TABLE,
    WALL,
    painter,
)
from pointseg.data.datasets.synth.scene import Scene
from pointseg.data.datasets.synth.shapes import Model, Paint, rotate_xy, tiles

TILE = 0.4  # m: big room surfaces are split so per-primitive density factors vary smoothly


def _with_rgb(q: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    return np.hstack([q, np.tile(rgb, (len(q), 1))])


class _WallSpot(NamedTuple):
    wall: int  # instance id of the wall
    p0: np.ndarray  # wall start (xy)
    dirn: np.ndarray  # unit direction along the wall
    u: float  # distance of the spot from p0
    yaw: float  # yaw that puts a model's back (-y) against the wall

    @property
    def normal(self) -> np.ndarray:  # into the room (the outline is counter-clockwise)
        return np.array([-self.dirn[1], self.dirn[0]])


@dataclass
class Room:
    width: float
    depth: float
    height: float
    cut: tuple[float, float] | None  # L-shape: (cut width, cut depth) removed at (W, D)
    walls: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # id, p0, p1

    def polygon(self) -> np.ndarray:
        """Floor outline, counter-clockwise, so the inside is left of every wall."""
        w, d = self.width, self.depth
        if self.cut is None:
            return np.array([(0, 0), (w, 0), (w, d), (0, d)], dtype=np.float64)
        cw, cd = self.cut
        return np.array([(0, 0), (w, 0), (w, d - cd), (w - cw, d - cd), (w - cw, d), (0, d)], float)

    def contains(self, x: float, y: float) -> bool:
        inside = 0 <= x <= self.width and 0 <= y <= self.depth
        return inside and (
            self.cut is None or x < self.width - self.cut[0] or y < self.depth - self.cut[1]
        )


class Layout:
    """Builds one room: structure, openings, furniture by rejection sampling, clutter."""

    def __init__(self, rng: np.random.Generator, room: Room) -> None:
        self.rng, self.room = rng, room
        self.scene, self.plan = Scene(), FloorPlan(room.width, room.depth)
        self.next_id = 0
        self.openings: list[tuple[int, np.ndarray, np.ndarray, float, float, float, float]] = []
        self.chairs_left = 8

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def structure(self) -> None:
        """Floor and ceiling (tiled, so the scanner falloff varies across them) and the wall
        outline; the wall surfaces are emitted by :meth:`walls` once openings are known."""
        rng, r = self.rng, self.room
        w, d, h = r.width, r.depth, r.height
        rects = [(0, 0, w, d)]
        if r.cut is not None:
            rects = [(0, 0, w, d - r.cut[1]), (0, d - r.cut[1], w - r.cut[0], d)]
        for label, z in ((FLOOR, 0.0), (CEILING, h)):
            q = np.array([(x0, y0, z, x1 - x0, 0, 0, 0, y1 - y0, 0) for x0, y0, x1, y1 in rects])
            if label == CEILING:  # swap edges so the normal points down into the room
                q = q[:, [0, 1, 2, 6, 7, 8, 3, 4, 5]]
            rgb, inst = painter(rng, label)("*"), self.new_id()
            self.scene.add_quads(_with_rgb(tiles(q, TILE), rgb), label, inst)
        poly = r.polygon()
        for k, p0 in enumerate(poly):
            r.walls.append((self.new_id(), p0, poly[(k + 1) % len(poly)]))
        if r.cut is not None:
            i0, j0 = int((w - r.cut[0]) / self.plan.cell), int((d - r.cut[1]) / self.plan.cell)
            self.plan.occ[i0:, j0:] = -1

    def walls(self) -> None:
        """Wall surfaces as strips around the door/window openings; one wall may get an
        accent colour."""
        paint, h = painter(self.rng, WALL), self.room.height
        accent = int(self.rng.integers(-2 * len(self.room.walls), len(self.room.walls)))
        for k, (inst, p0, p1) in enumerate(self.room.walls):
            length = float(np.linalg.norm(p1 - p0))
            dirn, u, pieces = (p1 - p0) / length, 0.0, []
            for _, _, _, u0, u1, z0, z1 in sorted(
                (o for o in self.openings if o[0] == inst), key=lambda o: o[3]
            ):
                pieces += [(u, u0, 0.0, h), (u0, u1, 0.0, z0), (u0, u1, z1, h)]
                u = u1
            pieces.append((u, length, 0.0, h))
            q = [(*(p0 + dirn * ua), za, 0, 0, zb - za, *(dirn * (ub - ua)), 0)
                 for ua, ub, za, zb in pieces if ub > ua and zb > za]  # fmt: skip
            rgb = paint("accent" if k == accent else "*")
            self.scene.add_quads(_with_rgb(tiles(np.array(q), TILE), rgb), WALL, inst)

    def wall_spot(self, width: float) -> _WallSpot | None:
        """Random wall (weighted by length) and a position along it where ``width`` fits."""
        lens = np.array([np.linalg.norm(p1 - p0) for _, p0, p1 in self.room.walls])
        k = int(self.rng.choice(len(lens), p=lens / lens.sum()))
        if lens[k] < width + 0.1:
            return None
        inst, p0, p1 = self.room.walls[k]
        u = self.rng.uniform(width / 2 + 0.05, lens[k] - width / 2 - 0.05)
        return _WallSpot(inst, p0, (p1 - p0) / lens[k], u, float(np.arctan2(*(p1 - p0)[::-1])))

    def openings_(self) -> None:
        """A door (floor in front kept clear) and 0-3 windows, not overlapping each other."""
        rng = self.rng
        for is_door in [rng.random() < 0.8] + [False] * int(rng.integers(0, 4)):
            width = rng.uniform(0.8, 1.0) if is_door else rng.uniform(0.6, 2.0)
            spot = self.wall_spot(width + 0.4)
            if spot is None:
                continue
            u0, u1 = spot.u - width / 2, spot.u + width / 2
            if any(
                o[0] == spot.wall and o[3] < u1 + 0.2 and u0 - 0.2 < o[4] for o in self.openings
            ):
                continue
            z0, z1 = (0.0, rng.uniform(2.0, 2.15)) if is_door else (rng.uniform(0.7, 1.0), 2.2)
            z1 = min(z1, self.room.height - 0.15)
            self.openings.append((spot.wall, spot.p0, spot.dirn, u0, u1, z0, z1))
            if is_door:
                xy = spot.p0 + spot.dirn * spot.u + spot.normal * 0.45
                self.plan.mark(self.plan.cells(xy, (width / 2 + 0.05, 0.45), spot.yaw), -1)

    def place(
        self,
        m: Model,
        label: int,
        *,
        wall: bool,
        grow: float = 0.1,
        allow: Sequence[int] = (),
        tries: int = 25,
    ) -> tuple[int, np.ndarray, float] | None:
        """Rejection-sample a pose whose footprint (grown by ``grow`` for walking space) is free;
        against a wall the back touches it (0-2 cm gap) and the front faces the room."""
        rng, (hx, hy) = self.rng, m.half
        if m.height > self.room.height - 0.1:
            return None
        if not wall and 2 * (max(hx, hy) + grow) > min(self.room.width, self.room.depth):
            return None  # too big to stand free in this (small) room
        for _ in range(tries):
            if wall:
                spot = self.wall_spot(2 * hx)
                if spot is None:
                    continue
                yaw = spot.yaw
                xy = spot.p0 + spot.dirn * spot.u + spot.normal * (hy + rng.uniform(0.0, 0.02))
                check = self.plan.cells(xy, (hx + grow, hy), yaw)
            else:
                ex = max(hx, hy) + grow
                xy = np.array(
                    [rng.uniform(ex, self.room.width - ex), rng.uniform(ex, self.room.depth - ex)]
                )
                yaw = (
                    rng.integers(4) * np.pi / 2 + rng.normal(0, 0.05)
                    if rng.random() < 0.6
                    else rng.uniform(0, 2 * np.pi)
                )
                check = self.plan.cells(xy, (hx + grow, hy + grow), yaw)
            if self.plan.free(check, allow):
                inst = self.new_id()
                self.plan.mark(self.plan.cells(xy, (hx, hy), yaw), inst + 1)
                self.scene.add(m, label=label, instance=inst, xy=xy, yaw=yaw)
                return inst, xy, yaw
        return None

    def furnish(self) -> None:
        """Big wall-hugging pieces first (they are the hardest to fit), then tables with
        chairs, cabinets and a few loose chairs. Counts are drawn so that most rooms hold
        every class; a piece that does not fit is redrawn (other size) twice, then dropped."""
        rng = self.rng
        plan = [(BED, furniture.bed, 0.9, 0.3)] * int(rng.choice([0, 1, 1, 1, 1, 1, 1, 1, 2, 2]))
        plan += [(SOFA, furniture.sofa, 0.6, 0.3)] * int(rng.choice([0, 1, 1, 1, 1, 1, 1, 1, 2, 2]))
        plan += [(TABLE, None, 0.3, 0.5)] * int(rng.integers(1, 4))
        plan += [(CABINET, furniture.cabinet, 0.8, 0.1)] * int(
            rng.choice([0, 1, 1, 1, 2, 2, 3, 3, 4, 4])
        )
        for label, build, p_wall, grow in plan:
            for _ in range(3):
                wall = bool(rng.random() < p_wall)
                if build is None:
                    model = furniture.table(rng, painter(rng, label))
                else:
                    model = build(rng, painter(rng, label), against_wall=wall)
                placed = self.place(model, label, wall=wall, grow=grow, tries=15)
                if placed is not None:
                    if label == TABLE:
                        self.chairs_around(model, *placed)
                    break
        for _ in range(int(rng.integers(0, 3))):
            chair = furniture.chair(rng, painter(rng, CHAIR))
            if self.chairs_left > 0 and self.place(chair, CHAIR, wall=False):
                self.chairs_left -= 1

    def chairs_around(self, t: Model, tid: int, txy: np.ndarray, tyaw: float) -> None:
        """Matching chairs around a placed table, facing it and pushed in by up to 20 cm, so
        chairs and table touch (the seat may be under the top)."""
        rng = self.rng
        c = furniture.chair(rng, painter(rng, CHAIR))  # one model: chairs around a table match
        (hx, hy), ch = t.half, c.half[1]
        slots = []
        for nx, ny, reach, side in (
            (0, 1, hy, hx),
            (0, -1, hy, hx),
            (1, 0, hx, hy),
            (-1, 0, hx, hy),
        ):
            k = max(1, int(2 * side / 0.65))
            for j in range(k):
                along = (j + 0.5) / k * 2 * side - side
                slots.append((nx, ny, reach, along))
        want = min(int(rng.integers(1, 6)), self.chairs_left)
        for i in rng.permutation(len(slots)):
            if want == 0:
                break
            nx, ny, reach, along = slots[i]
            dist = reach + ch - rng.uniform(-0.1, 0.2)
            local = np.array([[nx * dist - ny * along, ny * dist + nx * along]])
            xy = txy + rotate_xy(local, tyaw)[0]
            yaw = tyaw + math.atan2(nx, -ny) + rng.normal(0, 0.12)
            if self.plan.free(self.plan.cells(xy, c.half, yaw), allow=(tid,)):
                inst = self.new_id()
                self.plan.mark(self.plan.cells(xy, c.half, yaw), inst + 1)
                self.scene.add(c, label=CHAIR, instance=inst, xy=xy, yaw=yaw)
                want, self.chairs_left = want - 1, self.chairs_left - 1

    def clutter(self) -> None:
        """5-25 small objects: on walls, under the ceiling, on tables/cabinets/shelves, on floor."""
        rng, r = self.rng, self.room
        n = int(rng.integers(5, 26))
        n_wall, n_ceil = int(rng.integers(0, 4)), int(rng.integers(0, 3))
        on_top: dict[int, list[tuple[float, float, float, float]]] = {}
        tops = self.scene.tops
        for i in range(n):
            paint = painter(rng, CLUTTER)
            if i < n_wall:
                m = clutter.item(rng, paint, "wall")
                spot = self.wall_spot(2 * m.half[0])
                if spot is None or any(
                    o[0] == spot.wall and o[3] < spot.u + m.half[0] and spot.u - m.half[0] < o[4]
                    for o in self.openings
                ):
                    continue
                z = min(rng.uniform(1.1, 1.9), r.height - 0.1 - m.height / 2)
                xy = spot.p0 + spot.dirn * spot.u + spot.normal * m.half[1]
                inst = self.new_id()
                self.scene.add(m, label=CLUTTER, instance=inst, xy=xy, yaw=spot.yaw, z=z)
            elif i < n_wall + n_ceil:
                m = clutter.item(rng, paint, "ceiling")
                x, y = rng.uniform(0.5, r.width - 0.5), rng.uniform(0.5, r.depth - 0.5)
                if r.contains(x, y):
                    yaw = float(rng.integers(2)) * np.pi / 2
                    self.scene.add(
                        m, label=CLUTTER, instance=self.new_id(), xy=(x, y), yaw=yaw, z=r.height
                    )
            elif tops and rng.random() < 0.65:
                area = np.array([t[3] * t[4] for t in tops])
                k = int(rng.choice(len(tops), p=area / area.sum()))
                self.on_support(k, paint, on_top.setdefault(k, []))
            else:
                m = clutter.item(rng, paint, "floor")
                self.place(m, CLUTTER, wall=rng.random() < 0.3, grow=0.02, tries=10)

    def on_support(
        self, k: int, paint: Paint, taken: list[tuple[float, float, float, float]]
    ) -> None:
        """Put one item on support surface ``k`` (table top, cabinet top or shelf board)."""
        rng = self.rng
        z, cx, cy, hx, hy, tyaw, clear, _ = self.scene.tops[k]
        shelf = clear < 0.45
        m = clutter.item(rng, paint, "shelf" if shelf else "table", clearance=clear)
        if m.height > clear or z + m.height > self.room.height - 0.05:
            return
        ryaw = 0.0 if shelf else rng.integers(4) * np.pi / 2 + rng.normal(0, 0.3)
        c, s = abs(math.cos(ryaw)), abs(math.sin(ryaw))
        ax, ay = c * m.half[0] + s * m.half[1], s * m.half[0] + c * m.half[1]
        if ax > hx or ay > hy:
            return
        u, v = rng.uniform(-hx + ax, hx - ax), rng.uniform(-hy + ay, hy - ay)
        if any(abs(u - u2) < ax + a2 and abs(v - v2) < ay + b2 for u2, v2, a2, b2 in taken):
            return
        taken.append((u, v, ax, ay))
        xy = np.array([cx, cy]) + rotate_xy(np.array([[u, v]]), tyaw)[0]
        self.scene.add(m, label=CLUTTER, instance=self.new_id(), xy=xy, yaw=tyaw + ryaw, z=z)
