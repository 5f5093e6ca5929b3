"""The LAS/LAZ/COPC reader and writer: whole tiles, streamed chunks and COPC boxes all read
and write through here.

- :func:`point_chunks` yields a file's points in chunks, optionally only those in an x/y box
  (a COPC file's box by a node query, any other file in file order, filtered). The points
  come in the same order on every pass, so a point's running index names it across passes.
- :func:`code_counts` counts a file's classification codes, reading that field alone.
- :func:`read_las_points` reads a whole tile into the sample vocabulary; ``read_points``
  calls it for ``.las``/``.laz`` files, and ``pointseg-prepare las`` reads through
  ``read_points``, so a model sees the same coordinates and features on a raw tile as on the
  scenes prepared from it. The features come from ``pointseg.io.las_features``.
- :func:`write_las_classification` writes a classified copy: every field kept, the
  classification replaced, optionally only a box's points; a ``.copc.laz`` copy of a COPC
  file keeps its octree (``pointseg.io.copc_write``).

Coordinates are read in float64 world units and re-centred on :func:`las_origin` in float64
before the float32 cast: float32 keeps ~7 digits, georeferenced coordinates have 6-7 before
the decimal point.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.io.copc import Box, copc_points, header_wkt, in_box, is_copc, plain_header
from pointseg.io.formats import (
    RECENTER_ABOVE,
    MissingFeatureError,
    PointFileError,
    check_features,
)
from pointseg.utils import atomic_path

Sample = dict[str, Any]

log = logging.getLogger("pointseg.io")


def point_chunks(
    path: str | Path, *, box: Box | None, chunk_size: int, query: Box | None = None
) -> Iterator[Any]:
    """laspy ``ScaleAwarePointRecord`` chunks of the points in ``box`` (all without one).

    ``query`` (a box holding ``box``) is what a COPC file is asked for: the box's points come
    in the order a read of ``query`` gives them, so labels made on a read of ``query`` (a box
    with its context) line up with a read that keeps ``box`` alone."""
    path = Path(path)
    query = box if query is None else query
    try:
        if query is not None and is_copc(path):
            points = copc_points(path, query)
            if box is not query:
                points.array = points.array[in_box(np.asarray(points.x), np.asarray(points.y), box)]
            for i in range(0, len(points), chunk_size):
                yield points[i : i + chunk_size]
            return
        with _open(path) as reader:
            for chunk in reader.chunk_iterator(chunk_size):
                if box is not None:
                    keep = in_box(np.asarray(chunk.x), np.asarray(chunk.y), box)
                    if not keep.any():
                        continue
                    chunk = chunk[keep]
                yield chunk
    except PointFileError:
        raise
    except Exception as err:
        raise PointFileError(
            f"cannot read {path}: {err}; the file is truncated or damaged (re-export it)"
        ) from err


def code_counts(path: str | Path, *, chunk_size: int = 2_000_000) -> dict[int, int]:
    """How many points of ``path`` hold each classification code; a LAZ file of point format
    6-10 decompresses the classification layer alone (and x/y, which laspy always reads)."""
    import laspy

    only = laspy.DecompressionSelection.XY_RETURNS_CHANNEL
    only |= laspy.DecompressionSelection.CLASSIFICATION
    counts = np.zeros(256, np.int64)
    try:
        with _open(Path(path), decompression_selection=only) as reader:
            for chunk in reader.chunk_iterator(chunk_size):
                counts += np.bincount(np.asarray(chunk.classification), minlength=256)
    except PointFileError:
        raise
    except Exception as err:  # laspy and lazrs raise their own types
        raise PointFileError(
            f"cannot read {path}: {err}; the file is truncated or damaged (re-export it)"
        ) from err
    return {int(c): int(counts[c]) for c in np.flatnonzero(counts)}


def _open(path: Path, **kwargs: Any) -> Any:
    import laspy

    try:
        return laspy.open(path, **kwargs)
    except Exception as err:
        raise PointFileError(
            f"cannot read {path}: {err}; the file is truncated (re-export it) or not a LAS/LAZ file"
        ) from err


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


def xyz_of(points: Any) -> np.ndarray:
    """(n, 3) float64 world coordinates of a laspy point record."""
    return np.stack([np.asarray(points.x), np.asarray(points.y), np.asarray(points.z)], 1)


def read_las_points(
    path: Path,
    *,
    require: Sequence[str],
    chunk_size: int,
    las: Mapping[str, Any] | None,
    feat_keys: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> Sample:
    """A whole LAS/LAZ tile, read in chunks into small per-point arrays (never the whole
    record). ``las``: the LAS recipe's options of ``las_features`` (None: the generic
    features of any LAS file, ``pointseg.io.las_features.generic_features``)."""
    from pointseg.io.las_features import LasTile, generic_features, las_features, unit_scale

    with _open(path) as reader:
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
    for chunk in point_chunks(path, box=None, chunk_size=chunk_size):
        j = i + len(chunk)
        if j > n:
            raise PointFileError(f"{path}: more points than its header's {n}")
        xyz = xyz_of(chunk)
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
    if rgb is not None and not rgb.any():  # RGB fields present but never filled in
        if "color" in require:
            try:
                check_features(path, {"coord": coord}, ["color"], feat_keys=feat_keys)
            except MissingFeatureError as err:
                raise MissingFeatureError(f"{err} (its RGB fields are all 0: no colour)") from None
        log.info("%s: RGB fields are all 0 (no colour recorded): colour left out", path)
        rgb = None
    out.update(
        generic_features(
            intensity=inten,
            returns=returns,
            rgb=rgb,
            intensity_div=unit_scale(inten) if inten is not None else 1.0,
            color_div=unit_scale(rgb) if rgb is not None else 1.0,
        )  # fmt: skip
    )
    return out


def _las_header(hdr: Any) -> dict[str, Any]:
    """The header fields a scene's ``meta.json`` records (plain JSON)."""
    wkt = header_wkt(hdr).strip("\x00") or None  # a WKT (E)VLR (GeoTIFF keys would need pyproj)
    return {
        "version": str(hdr.version),
        "point_format": int(hdr.point_format.id),
        "point_count": int(hdr.point_count),
        "scales": [float(s) for s in hdr.scales],
        "offsets": [float(o) for o in hdr.offsets],
        "crs_wkt": wkt,
    }


def max_class_code(point_format: int) -> int:
    """The largest classification code LAS point format ``point_format`` holds: formats 0-5
    keep 5 bits (0-31), formats 6-10 a byte."""
    return 31 if point_format < 6 else 255


def write_las_classification(
    src: str | Path,
    dst: str | Path,
    labels: np.ndarray,
    *,
    lut: np.ndarray | None = None,
    box: Box | None = None,
    query: Box | None = None,
    chunk_size: int = 2_000_000,
) -> Path:
    """Copy LAS/LAZ/COPC ``src`` to ``dst`` (LAZ if ``dst`` ends in .laz) chunk by chunk with
    ``classification`` set to ``labels (N,)`` (``lut[labels]`` when ``lut`` is given), in the
    order :func:`point_chunks` reads them; every other field is kept. With ``box`` only the
    box's points are written (``query``: the box the labels were read with, see
    :func:`point_chunks`). A ``.copc.laz`` ``dst`` of a whole COPC ``src`` keeps its octree
    (``pointseg.io.copc_write``, needs copclib); any other copy of a COPC file is plain
    LAS/LAZ, without the COPC records. The copy appears whole or not at all."""
    import laspy

    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise PointFileError(f"refusing to overwrite the input {src}; choose another output")
    if dst.name.lower().endswith(".copc.laz"):
        if box is not None:
            raise ValueError(
                f"{dst}: a COPC copy holds the whole of {src}; write a box's points to a "
                ".laz name instead"
            )
        from pointseg.io.copc_write import write_copc_classification

        return write_copc_classification(src, dst, labels, lut=lut)
    with _open(src) as reader:
        hdr = reader.header
    limit = max_class_code(hdr.point_format.id)
    codes = np.asarray(labels if lut is None else lut)
    top = int(codes.max()) if codes.size else 0  # the largest code the copy may hold
    if top > limit:
        raise ValueError(
            f"class code {top} does not fit LAS point format {hdr.point_format.id} "
            f"of {src} (max {limit}); map classes to codes <= {limit} with asprs_map=..."
        )
    if box is None and len(labels) != hdr.point_count:
        raise ValueError(f"{len(labels)} labels for {hdr.point_count} points of {src}")
    i = 0
    with atomic_path(dst) as tmp:
        compress = dst.suffix.lower() == ".laz"
        with laspy.open(tmp, mode="w", header=plain_header(hdr), do_compress=compress) as w:
            for pts in point_chunks(src, box=box, chunk_size=chunk_size, query=query):
                part = np.asarray(labels[i : i + len(pts)])
                if len(part) != len(pts):
                    raise ValueError(f"{len(labels)} labels for more points of {src}")
                pts.classification = part if lut is None else lut[part]
                i += len(pts)
                w.write_points(pts)
        if i != len(labels):
            raise ValueError(f"{len(labels)} labels for the {i} points written of {src}")
    return dst
