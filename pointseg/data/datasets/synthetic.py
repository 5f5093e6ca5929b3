"""Procedural furnished indoor rooms: a labelled point-cloud dataset that needs no download.

Each scene is a rectangular or L-shaped room (floor, walls, ceiling, door and window openings)
furnished with tables and chairs, sofas, cabinets and bookshelves, beds and clutter, then
"scanned": points are drawn on visible surfaces in proportion to area, thinned with distance
from a simulated scanner and in random patches, punched with occlusion holes and shadows
behind big furniture, and jittered. Colours follow per-class tendencies whose ranges overlap
(wood tables, cabinets and floors; white walls, ceilings, lamps and sheets; fabric sofas and
beds), so neither colour nor geometry alone solves the task and a good model stays below
mIoU 1.0 (clutter on tables, chairs pushed under tables, cabinets flush with walls, sofa vs
bed).

Everything is a pure function of the integer seed (one ``np.random.default_rng(seed)``, no
global state), so scenes never need to be stored: ``scene_seed`` derives disjoint seeds for
the train/val/test splits and :class:`SyntheticRooms` serves them as a torch ``Dataset``.
Coordinates are metres with the floor at z = 0 and the room in x, y >= 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pointseg.data.datasets.generated import SPLITS, GeneratedScenes, scene_seed
from pointseg.data.datasets.synth.occlusion import (
    BIN,
    KeyIndex,
    azimuth_key,
    in_solids,
    in_spheres,
    shadowed,
)
from pointseg.data.datasets.synth.palette import CLASS_NAMES, FLOOR
from pointseg.data.datasets.synth.room import Layout, Room

__all__ = ["CLASS_NAMES", "SPLITS", "SyntheticRooms", "generate_room", "scene_seed"]


def _falloff(rng: np.random.Generator, eye: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Scanner density factor at primitive centres: falls with distance from ``eye`` (to 30 %
    far away) and drops to 20-70 % inside a few random patches (reflective or dark spots)."""
    n = int(rng.integers(2, 7))
    draws = list(
        zip(
            rng.integers(1 << 30, size=n),
            rng.uniform(0.4, 1.5, n),
            rng.uniform(0.2, 0.7, n),
            strict=True,
        )
    )

    def factor(mid: np.ndarray) -> np.ndarray:
        f = 0.3 + 0.7 * np.exp(-np.linalg.norm(mid - eye, axis=1) / 4.0)
        for k, rad, scale in draws:
            c = mid[k % len(mid)]
            f[((mid - c) ** 2).sum(1) < rad * rad] *= scale
        return f

    return factor


def generate_room(
    seed: int,
    *,
    density: float = 1600.0,
    noise: float = 0.01,
    color_noise: float = 0.025,
    room_size: tuple[float, float] = (4.0, 9.0),
    room_height: tuple[float, float] = (2.4, 3.3),
    l_shape_prob: float = 0.3,
    sensor: bool = True,
) -> dict[str, np.ndarray]:
    """Generate one furnished, scanned room, fully determined by ``seed``.

    Args:
        density: points per m^2 on a surface squarely facing a nearby scanner; visibility and
            distance thin it. The default gives roughly 60k-150k points per room.
        noise: std of the gaussian coordinate noise (metres).
        color_noise: std of the per-point colour noise.
        room_size: range of the room's width and depth (metres).
        room_height: range of the wall height (metres).
        l_shape_prob: chance that a corner is cut out, making the room L-shaped.
        sensor: simulate the scanner (distance falloff, density patches, occlusion holes,
            shadows behind big furniture). Hidden surfaces (floor under furniture, wall
            behind it, back faces) are thinned or removed either way.

    Returns:
        ``coord`` (N, 3) float32 metres (floor at z = 0, room within x, y >= 0), ``color``
        (N, 3) float32 in [0, 1], ``segment`` (N,) int64 index into :data:`CLASS_NAMES`,
        ``instance`` (N,) int64 object id (0 floor, 1 ceiling, then walls, then objects).
    """
    if not density > 0 or not noise >= 0 or not color_noise >= 0:
        raise ValueError(
            f"density must be > 0 and noise, color_noise >= 0; got density={density}, "
            f"noise={noise}, color_noise={color_noise}"
        )
    if not 2.0 <= room_size[0] <= room_size[1] or not 2.0 <= room_height[0] <= room_height[1]:
        raise ValueError(
            "room_size and room_height must be (low, high) ranges of at least 2 m, got "
            f"room_size={room_size}, room_height={room_height}"
        )
    rng = np.random.default_rng(seed)
    w, d = rng.uniform(*room_size, 2)
    cut = None
    if rng.random() < l_shape_prob and min(w, d) >= 4.5:
        cut = (w * rng.uniform(0.3, 0.5), d * rng.uniform(0.3, 0.5))
    room = Room(float(w), float(d), float(rng.uniform(*room_height)), cut)
    lay = Layout(rng, room)
    lay.structure()
    lay.openings_()
    lay.walls()
    lay.furnish()
    lay.clutter()

    target = np.array([room.width, room.depth]) * rng.uniform(0.25, 0.75, 2)
    eye = np.append(lay.plan.open_spot(target, 0.25), rng.uniform(1.2, 1.8))  # the scanner
    pts = lay.scene.sample(rng, density, eye, _falloff(rng, eye) if sensor else None)
    coord, meta, prim = pts.coord, pts.meta, pts.prim
    xs = KeyIndex(np.floor(coord[:, 0] / BIN))
    solids = lay.scene.solids
    drop = in_solids(coord, xs, lambda rows: meta[prim[rows], 4], solids, margin=0.02)
    az = KeyIndex(azimuth_key(coord, eye))
    if sensor:
        k = int(rng.integers(3, 11))  # occlusion holes centred on surfaces
        holes = coord[rng.integers(len(coord), size=k)]
        drop |= in_spheres(coord, xs, holes, rng.uniform(0.08, 0.4, k))
        for b in sorted(solids, key=lambda b: -b[3] * b[4] * b[5])[:5]:  # biggest cast shadows
            hit = shadowed(coord, az, eye, b)
            drop[hit[rng.random(len(hit)) < 0.7]] = True  # partial: other scan positions
    idx = az.order[~drop[az.order]]  # in the scanner's sweep order, not grouped by class
    c, m = coord[idx], meta[prim[idx]]
    label = m[:, 3].astype(np.int64)

    shade = m[:, 5]
    floor = label == FLOOR  # planks / tiles: one tone per strip
    strip = np.floor(c[floor, int(rng.integers(2))] / rng.uniform(0.1, 0.6))
    shade[floor] *= 1 + rng.uniform(0, 0.1) * np.modf(np.abs(np.sin(strip * 12.9898)) * 43758.5)[0]
    tint = rng.uniform(0.85, 1.1) * (1 + rng.normal(0, 0.03, 3))  # room light: level and hue
    color = m[:, :3] * (shade[:, None] * tint)
    color += color_noise * rng.standard_normal(color.shape, dtype=np.float32)
    c += noise * rng.standard_normal(c.shape, dtype=np.float32)
    for axis, size in ((0, room.width), (1, room.depth)):  # mirror: cut corner, layout
        if rng.random() < 0.5:
            c[:, axis] = size - c[:, axis]
    return {
        "coord": c.astype(np.float32),
        "color": np.clip(color, 0.0, 1.0).astype(np.float32),
        "segment": label,
        "instance": m[:, 4].astype(np.int64),
    }


class SyntheticRooms(GeneratedScenes):
    """``num_scenes`` procedural rooms of one split (``generate_room`` per scene seed)."""

    class_names = CLASS_NAMES
    generate = staticmethod(generate_room)
