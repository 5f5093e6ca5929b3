"""Furniture of the synthetic rooms: tables, chairs, sofas, cabinets and bookshelves, beds.

Sizes are drawn here; colours come from ``paint(role)``, which the caller ties to a class
palette, so geometry and colour tendencies stay independent.
"""

from __future__ import annotations

import numpy as np

from pointseg.data.datasets.synth.shapes import Model, Paint


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
