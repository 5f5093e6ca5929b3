"""x/y boxes, COPC files and LAS headers: the pieces ``pointseg.io.las_file`` reads and
writes LAS/LAZ/COPC files with.

A COPC file (``.copc.laz``: a LAZ 1.4 file whose points are stored by octree node) is told by
its VLRs (:func:`is_copc`); a box of it is read by a node query (:func:`copc_points`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.io.formats import PointFileError

Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (world units, inclusive)


def check_box(bounds: Sequence[float] | None, *, where: str = "bounds") -> Box | None:
    if bounds is None:
        return None
    b = [float(v) for v in bounds]
    if len(b) != 4 or not (b[0] < b[2] and b[1] < b[3]):
        raise ValueError(
            f"{where}={list(bounds)}: give [xmin, ymin, xmax, ymax] with xmin < xmax, ymin < ymax"
        )
    return b[0], b[1], b[2], b[3]


def is_copc(path: str | Path) -> bool:
    """True for a COPC file (its first VLR is the COPC info VLR)."""
    import laspy

    try:
        with laspy.open(path) as reader:
            return any(type(v).__name__ == "CopcInfoVlr" for v in reader.header.vlrs)
    except Exception as err:
        raise PointFileError(
            f"cannot read {path}: {err}; the file is truncated (re-export it) or not LAS/LAZ"
        ) from err


def in_box(x: np.ndarray, y: np.ndarray, box: Box | None) -> np.ndarray:
    if box is None:
        return np.ones(len(x), bool)
    return (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])


def las_header(path: str | Path) -> Any:
    import laspy

    with laspy.open(path) as reader:
        return reader.header


def copc_points(path: str | Path, box: Box) -> Any:
    """The points of COPC file ``path`` in ``box``, through ``laspy.CopcReader.query``: only the
    octree nodes that touch the box are decompressed, and the points outside it dropped."""
    import laspy

    with laspy.CopcReader.open(path) as reader:
        lo, hi = reader.header.mins, reader.header.maxs
        bounds = laspy.copc.Bounds(
            mins=np.array([box[0], box[1], lo[2] - 1.0]),
            maxs=np.array([box[2], box[3], hi[2] + 1.0]),
        )
        points = reader.query(bounds)
    points.array = points.array[in_box(np.asarray(points.x), np.asarray(points.y), box)]
    return points


def plain_header(header: Any) -> Any:
    """A copy of ``header`` for a plain LAS/LAZ output: without the COPC VLRs (the copy is not
    ordered by octree node, so it must not claim to be COPC)."""
    import copy

    out = copy.deepcopy(header)
    copc = lambda v: type(v).__name__.startswith("Copc") or v.user_id == "copc"  # noqa: E731
    out.vlrs = [v for v in out.vlrs if not copc(v)]
    if out.evlrs is not None:
        out.evlrs = [v for v in out.evlrs if not copc(v)]
    return out


def header_wkt(header: Any) -> str:
    """The WKT of a laspy header's ``WktCoordinateSystemVlr`` (VLR or EVLR), or ''."""
    for vlr in [*header.vlrs, *(header.evlrs or [])]:
        if type(vlr).__name__ == "WktCoordinateSystemVlr":
            return str(vlr.string).rstrip("\x00")
    return ""
