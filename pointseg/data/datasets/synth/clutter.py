"""Small objects of the synthetic rooms: pictures, lamps, books, monitors, plants, boxes.

As for furniture, sizes are drawn here and colours come from ``paint(role)``.
"""

from __future__ import annotations

import numpy as np

from pointseg.data.datasets.synth.shapes import Model, Paint


def item(rng: np.random.Generator, paint: Paint, where: str, clearance: float = 2.0) -> Model:
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
