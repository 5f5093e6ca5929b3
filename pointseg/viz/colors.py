"""What a view of a labelled scan shows, shared by the window, the renders, the report and
predict's coloured PLY: the class palette, the errors view's colours and legend, the camera
that frames a scan, and which points are drawn.
"""

from __future__ import annotations

import colorsys
import logging
from typing import Any

import numpy as np

log = logging.getLogger("pointseg.viz")

BASE_COLORS = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], dtype=np.uint8)  # fmt: skip
IGNORE_RGB = np.array([60, 60, 60], np.uint8)  # unlabelled ground-truth points
# the errors view: black right, magenta wrong, far (>= 100 in RGB) from every colour of the
# fixed class palette and IGNORE_RGB, so no point of it reads as a class; unscored points faint
RIGHT_RGB, WRONG_RGB = np.array([0, 0, 0], np.uint8), np.array([255, 0, 255], np.uint8)
NOT_SCORED_RGB = np.array([225, 225, 225], np.uint8)  # ground truth ignored there
ERROR_LEGEND = (("right", RIGHT_RGB), ("wrong", WRONG_RGB), ("not scored", NOT_SCORED_RGB))
MODE_NAMES = {"pred": "prediction", "gt": "ground truth", "errors": "errors (magenta)",
              "color": "scan colours"}  # fmt: skip


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 class colours: 20 fixed ones, then evenly spread hues."""
    if num_classes <= len(BASE_COLORS):
        return BASE_COLORS[:num_classes].copy()
    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.65, 0.9) for i in range(num_classes - 20)]
    return np.concatenate([BASE_COLORS, (np.array(extra) * 255).round().astype(np.uint8)])


def label_colors(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours of labels; negative (ignored) labels get ``IGNORE_RGB``."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and labels.max() >= len(colors):
        raise ValueError(f"label {labels.max()} but only {len(colors)} classes are known")
    out = colors[np.clip(labels, 0, None)]
    out[labels < 0] = IGNORE_RGB
    return out


def error_colors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Black where the prediction is right, magenta where it is wrong, faint grey where the
    truth is ignored (not scored)."""
    gt = np.asarray(gt).astype(np.int64)
    out = np.tile(RIGHT_RGB, (len(pred), 1))
    out[(gt >= 0) & (np.asarray(pred).astype(np.int64) != gt)] = WRONG_RGB
    out[gt < 0] = NOT_SCORED_RGB
    return out


def auto_clip_top(coord: np.ndarray) -> float:
    """0.15 for what looks like an indoor scan (a dense horizontal layer, the ceiling, at the top
    of a 1.5-8 m z-range), else 0: the fraction of the z-range ``clip_top=auto`` cuts."""
    z = np.asarray(coord, np.float64)[:, 2]
    if not len(z):
        return 0.0
    lo, hi = float(z.min()), float(z.max())
    if not 1.5 <= hi - lo <= 8.0:  # rooms and storeys; airborne tiles and streets are taller
        return 0.0
    top = float(np.mean(z >= hi - 0.05 * (hi - lo)))
    return 0.15 if top >= 0.08 else 0.0


def select_points(
    coord: np.ndarray, *, clip_top: float | str = "auto", max_points: int = 2_000_000
) -> tuple[np.ndarray, float]:
    """Indices of the points to draw (top of the z-range cut, then a seeded subsample of at
    most ``max_points``) and the clip fraction used (``clip_top='auto'``: ``auto_clip_top``)."""
    if clip_top == "auto":
        clip = auto_clip_top(coord)
        if clip:
            log.info("clip_top=auto: the top %.0f%% of the z-range (a ceiling) is hidden; "
                     "clip_top=0 shows it", clip * 100)  # fmt: skip
    else:
        clip = float(clip_top)
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"clip_top must be 'auto' or a fraction in [0, 1), got {clip_top}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    keep = np.ones(len(coord), bool)
    if clip > 0:  # e.g. drop ceilings to see into rooms
        z = coord[:, 2]
        keep &= z <= z.max() - clip * (z.max() - z.min())
    idx = np.flatnonzero(keep)
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(0).choice(idx, max_points, replace=False))
    return idx, clip


def camera(coord: np.ndarray, view: str, aspect: float) -> dict[str, Any]:
    """The camera that frames ``coord`` (``view``: oblique or top) for an image of ``aspect``
    (width / height), as the window and the renders both use it."""
    lo, hi = coord.min(0).astype(np.float64), coord.max(0).astype(np.float64)
    centre, extent = (lo + hi) / 2, np.maximum(hi - lo, 1e-6)
    if view == "top":
        half_w = max(extent[0] / 2, extent[1] / 2 * aspect) * 1.04
        height = extent[2] + extent.max() + 1.0  # eye above the top, looking straight down
        return {"centre": centre, "eye": centre + [0, 0, height], "up": [0, 1, 0],
                "ortho": (half_w, half_w / aspect), "near": 0.01, "far": 2 * height}  # fmt: skip
    if view != "oblique":
        raise ValueError(f"view must be 'oblique' or 'top', got {view!r}")
    fov = 45.0
    radius = np.linalg.norm(extent) / 2
    direction = np.array([-0.45, -0.6, 1.3]) / np.linalg.norm([-0.45, -0.6, 1.3])  # ~60 deg up
    dist = radius / np.sin(np.radians(fov / 2) * min(1.0, aspect)) * 1.02
    return {"centre": centre, "eye": centre + direction * dist, "up": [0, 0, 1], "fov": fov,
            "near": max(dist - radius, 1e-3) * 0.5, "far": (dist + radius) * 1.5}  # fmt: skip
