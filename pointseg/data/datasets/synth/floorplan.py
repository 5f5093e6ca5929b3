"""Floor occupancy grid of a synthetic room, for placing footprints without overlaps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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
