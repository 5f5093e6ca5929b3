"""Per-point features of an airborne LAS/LAZ tile: the one place they are made.

``pointseg-prepare las`` makes a scene's features here, and a raw tile labelled later (whole,
streamed in chunks or a COPC box) gets its features from the same function with the options
the model's recipe stores, so a model sees the same numbers on both. Coordinates are float64
world units or float32 after an origin was subtracted in float64 (``pointseg.io.las_file``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.io.hag import height_above_local_min


@dataclass(frozen=True)
class LasTile:
    path: Path
    xyz: np.ndarray  # (N, 3) float64, world units
    classification: np.ndarray  # (N,) uint8, ASPRS codes
    intensity: np.ndarray  # (N,) uint16
    returns: np.ndarray  # (N, 2) uint8: return number, number of returns
    rgb: np.ndarray | None  # (N, 3) uint16, None if the point format has no colour
    header: dict[str, Any]  # version, point format, scales, offsets, CRS WKT if any


def unit_scale(values: np.ndarray, scale: str | float = "auto") -> float:
    """Divisor mapping 16-bit LAS values to [0, 1]: ``auto`` picks 255 when the tile's maximum
    is <= 255 (8-bit values stored in 16-bit fields, common for RGB) and 65535 otherwise."""
    if scale == "auto":
        return 255.0 if values.size == 0 or int(values.max()) <= 255 else 65535.0
    value = float(scale)
    if not value > 0:
        raise ValueError(
            f"a colour/intensity scale must be 'auto' or a positive number, got {scale!r}"
        )
    return value


INTENSITY_SCALE = "p99"  # las_features' default divisor of the intensities


def intensity_divisor(intensity: np.ndarray, scale: str | float = INTENSITY_SCALE) -> float:
    """Divisor of a tile's 16-bit intensities: ``pNN`` takes the tile's NN-th percentile (robust
    to the scanner's and the survey's gain, and to a few saturated returns), ``auto`` the
    field's nominal range (255 or 65535, see :func:`unit_scale`), a number itself."""
    if isinstance(scale, str) and re.fullmatch(r"p\d+(\.\d+)?", scale):
        q = float(scale[1:])
        if not 0 < q <= 100:
            raise ValueError(f"intensity_scale={scale!r}: the percentile must be in (0, 100]")
        value = float(np.percentile(intensity, q)) if intensity.size else 0.0
        return value if value > 0 else 1.0  # an all-zero field (no intensity recorded)
    return unit_scale(intensity, scale)


def intensity_divisor_from_counts(
    counts: np.ndarray, scale: str | float = INTENSITY_SCALE
) -> float:
    """:func:`intensity_divisor` of a tile known only by its histogram ``counts[v]`` (how many
    points have intensity ``v``), as a streamed tile is: the same float, bit for bit
    (``np.percentile``'s linear interpolation between the two order statistics)."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if not (isinstance(scale, str) and re.fullmatch(r"p\d+(\.\d+)?", scale)):
        top = int(np.flatnonzero(counts).max()) if n else 0
        return unit_scale(np.array([top]), scale)
    q = float(scale[1:])
    if not 0 < q <= 100:
        raise ValueError(f"intensity_scale={scale!r}: the percentile must be in (0, 100]")
    if n == 0:
        return 1.0
    cum = np.cumsum(counts)
    # numpy: virtual index (n - 1) q / 100 between the order statistics v[lo] and v[lo + 1]
    pos = np.float64(q) / 100 * (n - 1)
    lo = int(np.floor(pos))
    t = pos - lo
    a = float(np.searchsorted(cum, lo, side="right"))  # value of order statistic lo
    b = float(np.searchsorted(cum, min(lo + 1, n - 1), side="right"))
    value = float(np.percentile(np.array([a, b]), 100 * t)) if a != b else a
    return value if value > 0 else 1.0


def local_geometry(xyz: np.ndarray, *, k: int = 16, chunk: int = 200_000) -> np.ndarray:
    """``(N, 4)`` float32 eigenvalue features of each point's ``k`` nearest neighbours (itself
    included): linearity ``(l1 - l2) / l1``, planarity ``(l2 - l3) / l1``, scattering
    ``l3 / l1`` and ``|n_z|``, the vertical part of the normal (smallest eigenvector): roofs
    and ground are planar with ``|n_z|`` near 1, facades planar with ``|n_z|`` near 0, trees
    scattered. Scale-free, so they do not depend on the tile's units or density."""
    from scipy.spatial import cKDTree

    n = len(xyz)
    out = np.zeros((n, 4), dtype=np.float32)
    if n < 3 or k < 3:
        return out
    k = min(k, n)
    pts = xyz - xyz.min(0)  # float64, local: exact neighbours on georeferenced coordinates
    tree = cKDTree(pts)
    for lo in range(0, n, chunk):
        _, idx = tree.query(pts[lo : lo + chunk], k=k, workers=-1)  # (c, k)
        nb = pts[idx]  # (c, k, 3)
        nb = nb - nb.mean(1, keepdims=True)
        cov = np.einsum("cki,ckj->cij", nb, nb) / k  # (c, 3, 3)
        val, vec = np.linalg.eigh(cov)  # ascending eigenvalues
        val = np.clip(val, 0.0, None)
        l1 = np.maximum(val[:, 2], 1e-12)
        out[lo : lo + chunk, 0] = (val[:, 2] - val[:, 1]) / l1
        out[lo : lo + chunk, 1] = (val[:, 1] - val[:, 0]) / l1
        out[lo : lo + chunk, 2] = val[:, 0] / l1
        out[lo : lo + chunk, 3] = np.abs(vec[:, 2, 0])
    return out


def las_features(
    tile: LasTile,
    *,
    color: bool | str = "auto",
    color_scale: str | float = "auto",
    intensity_scale: str | float = INTENSITY_SCALE,
    hag_cell: float = 1.0,
    hag_radii: Sequence[float] | None = (2.0, 5.0, 15.0, 30.0, 60.0),
    geometry_k: int = 16,
    hag_anchor: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-point arrays of a tile in the scene vocabulary (no coordinates, no labels) and a
    dict describing how they were made (for ``meta.json``).

    Every per-point LAS feature is made here, from the tile alone, so a prepared scene and a
    raw tile labelled later with the same keyword options get identical features:

    - ``strength (N, 1)``: intensity divided by the tile's 99th percentile (``p99``; ``auto``
      divides by the field's nominal range instead), clipped to [0, 2];
    - ``returns (N, 2)``: return number and number of returns;
    - ``hag (N, len(hag_radii))``: heights above the lowest point within each radius;
    - ``geom (N, 4)``: linearity, planarity, scattering, |normal z| of the ``geometry_k``
      nearest neighbours (``geometry_k=0`` leaves it out);
    - ``color (N, 3)`` in [0, 1] when the tile has colour (``color=auto``).
    """
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    if color not in ("auto", True, False):
        raise ValueError(f"color must be auto, true or false, got {color!r}")
    if color is not False:
        if tile.rgb is None:
            if color is True:
                raise ValueError(
                    f"{tile.path}: color=true but point format {tile.header['point_format']} "
                    "has no RGB; use color=auto or false"
                )
        elif color is True or tile.rgb.any():
            div = unit_scale(tile.rgb, color_scale)
            arrays["color"] = (tile.rgb / div).astype(np.float32)  # (N, 3) in [0, 1]
            info["color_scale"] = div
        else:
            info["color_note"] = "RGB fields are all 0 (no colour recorded): color not written"
    div = intensity_divisor(tile.intensity, intensity_scale)
    strength = np.clip(tile.intensity / div, 0.0, 2.0)
    arrays["strength"] = strength.astype(np.float32)[:, None]  # (N, 1)
    info["intensity_scale"] = div
    arrays["returns"] = tile.returns.astype(np.float32)  # (N, 2)
    if hag_radii:
        arrays["hag"] = height_above_local_min(
            tile.xyz, cell=hag_cell, radii=hag_radii, anchor=hag_anchor
        )
        info["hag"] = {"cell": hag_cell, "radii": list(hag_radii)}
    if geometry_k:
        if int(geometry_k) < 3:
            raise ValueError(f"geometry_k must be 0 (off) or >= 3, got {geometry_k}")
        arrays["geom"] = local_geometry(tile.xyz, k=int(geometry_k))
        info["geom"] = {"k": int(geometry_k), "columns": GEOM_COLUMNS}
    return arrays, info


GEOM_COLUMNS = ["linearity", "planarity", "scattering", "normal_z"]


def generic_features(
    *,
    intensity: np.ndarray | None,
    returns: np.ndarray | None,
    rgb: np.ndarray | None,
    intensity_div: float,
    color_div: float,
) -> dict[str, np.ndarray]:
    """The features any model can take from any LAS file (a model trained without the LAS
    recipe, e.g. on PLY scans): ``strength (N, 1)`` and ``color (N, 3)`` divided by the
    tile's field range (:func:`unit_scale`), ``returns (N, 2)`` as they are. Each is left
    out where its field is ``None``."""
    out: dict[str, np.ndarray] = {}
    if intensity is not None:
        out["strength"] = (intensity / intensity_div).astype(np.float32)[:, None]
    if returns is not None:
        out["returns"] = returns.astype(np.float32)
    if rgb is not None:
        out["color"] = (rgb / color_div).astype(np.float32)
    return out
