"""Airborne LiDAR tiles (LAS/LAZ): reading, ASPRS class maps and per-point features.

Shared by ``pointseg-prepare las`` and anything that labels LAS tiles, so both read the
same way. Coordinates come out in float64 world units (laspy scales the stored integers);
callers subtract an origin in float64 before casting to float32, because float32 keeps
only ~7 digits and georeferenced coordinates have 6-7 before the decimal point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pointseg.io.hag import height_above_local_min

Unknown = Literal["ignore", "other", "error"]
UNKNOWN_POLICIES = ("ignore", "other", "error")

# ASPRS LAS 1.4 standard codes -> class (see docs/datasets/las.md for the reasons);
# "ignore" codes get label -1: they say nothing about what the point is, or mark noise.
ASPRS: dict[str, Any] = {
    "classes": {
        "ground": [2, 8, 11, 20],  # ground, model key-point, road surface, ignored ground
        "low_vegetation": [3],
        "medium_vegetation": [4],
        "high_vegetation": [5],
        "building": [6],
        "water": [9],
        "other": [10, 13, 14, 15, 16, 17, 19],  # rail, wires, towers, bridge deck, overhead
    },
    "ignore": [0, 1, 7, 12, 18, 21, 22],  # unclassified, noise, overlap, snow, temporal
    "unknown": "error",
}
# the same standard codes folded into two classes; "unclassified" (1) counts as other
GROUND_OTHER: dict[str, Any] = {
    "classes": {
        "ground": [2, 8, 11, 20],
        "other": [1, 3, 4, 5, 6, 9, 10, 13, 14, 15, 16, 17, 19],
    },
    "ignore": [0, 7, 12, 18, 21, 22],
    "unknown": "error",
}
PRESETS: dict[str, dict[str, Any]] = {"asprs": ASPRS, "ground_other": GROUND_OTHER}


@dataclass(frozen=True)
class ClassMap:
    """ASPRS code -> class index (``-1`` = ignore), with a policy for unlisted codes."""

    names: tuple[str, ...]
    codes: dict[int, int]  # code -> class index or -1
    unknown: Unknown = "error"

    def apply(self, classification: np.ndarray, *, source: str = "input") -> np.ndarray:
        """``segment (N,) int64`` for ``classification (N,)`` codes of file ``source``."""
        lut = np.full(256, -2, dtype=np.int64)  # -2 marks codes the map does not list
        for code, label in self.codes.items():
            lut[code] = label
        segment = lut[np.asarray(classification, dtype=np.int64)]
        unlisted = segment == -2
        if unlisted.any():
            found, counts = np.unique(np.asarray(classification)[unlisted], return_counts=True)
            if self.unknown == "error":
                listing = ", ".join(f"{c} ({n} points)" for c, n in zip(found, counts, strict=True))
                raise ValueError(
                    f"{source}: classification code(s) {listing} are not in the class map; "
                    "list them in the class map, or pass unknown=ignore (label -1) or "
                    "unknown=other (needs a class named 'other')"
                )
            segment[unlisted] = -1 if self.unknown == "ignore" else self.names.index("other")
        return segment

    def to_dict(self) -> dict[str, Any]:
        """The map in its file form, codes in the order they were listed."""
        classes = {
            n: [c for c, i in self.codes.items() if i == k] for k, n in enumerate(self.names)
        }
        ignore = [c for c, i in self.codes.items() if i == -1]
        return {"classes": classes, "ignore": ignore, "unknown": self.unknown}


def load_class_map(
    spec: str | Path | Mapping[str, Any] | None, *, unknown: str | None = None
) -> ClassMap:
    """Class map from a preset name (``asprs``, ``ground_other``), a ``.yaml``/``.json`` file,
    an inline YAML/JSON mapping, or a dict.

    The full form is ``{classes: {name: [codes]}, ignore: [codes], unknown: ignore|other|error}``;
    a plain ``{name: [codes]}`` mapping is read as ``classes``. Class order is index order.
    ``unknown`` (if given) overrides the map's policy for codes it does not list.
    """
    what = "class map"
    if spec is None:
        spec = "asprs"
    if isinstance(spec, Path) or (isinstance(spec, str) and spec in PRESETS):
        data: Any = PRESETS[spec] if isinstance(spec, str) else _load_file(spec)
        what = f"class map {spec}"
    elif isinstance(spec, str):
        path = Path(spec)
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            data, what = _load_file(path), f"class map {path}"
        else:
            import yaml

            try:
                data = yaml.safe_load(spec)
            except yaml.YAMLError as err:
                raise ValueError(
                    f"class_map={spec!r} is not a preset, a file or a mapping: {err}"
                ) from err
            if not isinstance(data, Mapping):
                raise ValueError(
                    f"class_map={spec!r} is neither a preset ({', '.join(PRESETS)}), a .yaml/.json "
                    "file, nor a mapping like '{ground: [2], other: [1]}'"
                )
    else:
        data = spec
    return _parse(data, what=what, unknown=unknown)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"class map file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def _parse(data: Any, *, what: str, unknown: str | None) -> ClassMap:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: expected a mapping, got {type(data).__name__}")
    classes = (
        data["classes"]
        if "classes" in data
        else {k: v for k, v in data.items() if k not in ("ignore", "unknown")}
    )
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(f"{what}: 'classes' must map class names to lists of ASPRS codes")
    policy = str(unknown if unknown is not None else data.get("unknown", "error"))
    if policy not in UNKNOWN_POLICIES:
        raise ValueError(f"{what}: unknown={policy!r}; use one of {UNKNOWN_POLICIES}")
    names = tuple(str(n) for n in classes)
    if policy == "other" and "other" not in names:
        raise ValueError(f"{what}: unknown=other needs a class named 'other' (classes: {names})")
    codes: dict[int, int] = {}
    groups = [(n, i, v) for i, (n, v) in enumerate(zip(names, classes.values(), strict=True))]
    for name, label, listed in [*groups, ("ignore", -1, data.get("ignore") or [])]:
        listed = [listed] if isinstance(listed, int) else listed
        if not isinstance(listed, Sequence) or isinstance(listed, str):
            raise ValueError(f"{what}: '{name}' must list ASPRS codes, got {listed!r}")
        for code in listed:
            if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
                raise ValueError(f"{what}: '{name}' lists {code!r}; codes are integers 0..255")
            if code in codes:
                raise ValueError(f"{what}: code {code} is listed twice ('{name}' and another)")
            codes[code] = label
    return ClassMap(names=names, codes=codes, unknown=policy)  # type: ignore[arg-type]


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


def intensity_divisor(intensity: np.ndarray, scale: str | float = "p99") -> float:
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


def intensity_divisor_from_counts(counts: np.ndarray, scale: str | float = "p99") -> float:
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
    intensity_scale: str | float = "p99",
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
