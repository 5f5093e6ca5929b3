"""The LAS/LAZ reader: a tile streamed in chunks into the sample vocabulary.

``pointseg.io.read_points`` calls it for ``.las``/``.laz`` files, and ``pointseg-prepare las``
reads its tiles through ``read_points`` too, so a model sees the same coordinates and
features on a raw tile as on the scenes prepared from it. The features themselves come
from ``pointseg.io.las.las_features`` with the options stored in the model's recipe.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.io.formats import (
    RECENTER_ABOVE,
    MissingFeatureError,
    PointFileError,
    check_features,
)

Sample = dict[str, Any]

log = logging.getLogger("pointseg.io")


def read_las_points(
    path: Path,
    *,
    require: Sequence[str],
    chunk_size: int,
    las: Mapping[str, Any] | None,
    feat_keys: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> Sample:
    """Stream a LAS/LAZ file in chunks into small per-point arrays (never the whole record);
    the features come from ``pointseg.io.las``, the one home of every LAS feature."""
    import laspy

    from pointseg.io.las import LasTile, las_features, unit_scale

    try:
        reader = laspy.open(path)
    except Exception as err:
        raise PointFileError(
            f"cannot read {path}: {err}; the file is truncated (re-export it) or not a LAS/LAZ file"
        ) from err
    with reader:
        hdr = reader.header
        dims = set(hdr.point_format.dimension_names)
        has_rgb = {"red", "green", "blue"} <= dims
        if las is None:  # the features a generic model can take from any LAS file
            provides = {"coord", "strength", "returns", "classification"}
            check_features(path, dict.fromkeys(provides | ({"color"} if has_rgb else set())),
                           require, feat_keys=feat_keys)  # fmt: skip
        n = int(hdr.point_count)
        if n == 0:
            raise PointFileError(f"{path} holds no points (its header says 0); nothing to read")
        want = {"color", "strength", "returns", "classification"}
        if only is not None and las is None:
            want = {*only, *require}
        coord = np.empty((n, 3), np.float32)
        rgb = np.empty((n, 3), np.uint16) if has_rgb and "color" in want else None
        inten = np.empty(n, np.uint16) if "strength" in want or las is not None else None
        cls = np.empty(n, np.uint8) if "classification" in want else None
        returns = np.empty((n, 2), np.uint8) if "returns" in want or las is not None else None
        origin, i = None, 0
        try:
            for chunk in reader.chunk_iterator(chunk_size):
                j = i + len(chunk)
                if j > n:
                    raise PointFileError(f"{path}: more points than its header's {n}")
                xyz = np.stack([np.asarray(chunk.x), np.asarray(chunk.y), np.asarray(chunk.z)], 1)
                if origin is None:  # from the header's minimum, as pointseg-prepare las does
                    origin = las_origin(hdr.mins, hdr.maxs, xyz)
                coord[i:j] = xyz - origin  # float64 subtraction, then float32
                if rgb is not None:
                    rgb[i:j] = np.stack([chunk.red, chunk.green, chunk.blue], 1)
                if inten is not None:
                    inten[i:j] = chunk.intensity
                if cls is not None:
                    cls[i:j] = chunk.classification
                if returns is not None:
                    returns[i:j, 0] = chunk.return_number
                    returns[i:j, 1] = chunk.number_of_returns
                i = j
        except PointFileError:
            raise
        except Exception as err:
            raise PointFileError(
                f"cannot read {path} after {i} of {n} points: {err}; the file is truncated or "
                "damaged (re-export it)"
            ) from err
    if i != n or origin is None:
        raise PointFileError(
            f"{path} is truncated: its header announces {n} points but it holds {i}"
        )
    bad = ~np.isfinite(coord).all(1)
    if bad.any():
        raise PointFileError(f"{path}: {int(bad.sum())} point(s) have non-finite coordinates")
    out: Sample = {"coord": coord, "origin": origin, "las_header": _las_header(hdr)}
    if cls is not None:
        out["classification"] = cls
    if las is not None:  # the model's LAS features, made as the preparer made them
        tile = LasTile(
            path=path, xyz=coord, classification=cls if cls is not None else np.zeros(0, np.uint8),
            intensity=inten, returns=returns, rgb=rgb, header={"point_format": hdr.point_format.id},
        )  # fmt: skip
        try:
            arrays, _ = las_features(tile, **dict(las))
        except (TypeError, ValueError) as err:
            raise PointFileError(f"{path}: cannot compute the model's LAS features: {err}") from err
        out.update(arrays)
        return out
    if returns is not None:
        out["returns"] = returns.astype(np.float32)
    if rgb is not None and not rgb.any():  # RGB fields present but never filled in
        if "color" in require:
            try:
                check_features(path, {"coord": coord}, ["color"], feat_keys=feat_keys)
            except MissingFeatureError as err:
                raise MissingFeatureError(f"{err} (its RGB fields are all 0: no colour)") from None
        log.info("%s: RGB fields are all 0 (no colour recorded): colour left out", path)
        rgb = None
    if rgb is not None:
        out["color"] = (rgb / unit_scale(rgb)).astype(np.float32)
        del rgb
    if inten is not None:
        out["strength"] = (inten / unit_scale(inten)).astype(np.float32)[:, None]
    return out


def _las_header(hdr: Any) -> dict[str, Any]:
    """The header fields a scene's ``meta.json`` records (plain JSON)."""
    from pointseg.io.copc_write import header_wkt

    wkt = header_wkt(hdr).strip("\x00") or None  # a WKT (E)VLR (GeoTIFF keys would need pyproj)
    return {
        "version": str(hdr.version),
        "point_format": int(hdr.point_format.id),
        "point_count": int(hdr.point_count),
        "scales": [float(s) for s in hdr.scales],
        "offsets": [float(o) for o in hdr.offsets],
        "crs_wkt": wkt,
    }


def las_origin(lo: Sequence[float], hi: Sequence[float], first: np.ndarray) -> np.ndarray:
    """(3,) float64 offset subtracted from a LAS tile's coordinates before the float32 cast:
    the floor of the header's minimum when the tile is georeferenced (the header's bounds
    can be stale, so the first points read must lie within 1e4 units of it), else 0."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if max(np.abs(lo).max(), np.abs(hi).max(), np.abs(first).max()) <= RECENTER_ABOVE:
        return np.zeros(3)
    origin = np.floor(lo)
    if np.abs(first - origin).max() > RECENTER_ABOVE:  # stale header: the data decide
        origin = np.floor(first.min(0))
    return origin
