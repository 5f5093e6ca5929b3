"""Label a LAS/LAZ/COPC tile of any size in spatial chunks, in bounded memory.

Pass 1 reads the tile once for what the whole-tile reader decides from all of it: the
coordinate origin (``las_origin``), the float32 minimum (anchor of the voxel grid and of the
height-above-ground cells) and the colour/intensity scales. Pass 2 spills every point, with
its context, into the x/y chunks it belongs to (temporary files next to the outputs). Each
chunk is then read back, given its features by ``pointseg.io.las.las_features`` and labelled
by ``Segmenter.predict`` on the tile's voxel grid (``grid_origin``) and block grid. A chunk's
context margin covers every block that votes for its core voxels (block size + 2 x overlap)
plus the features' neighbourhood (the largest ``hag_radii``), so each core point gets exactly
the label a whole-tile block run gives it. Labels go to an on-disk ``.npy`` (memory-mapped);
pass 3 writes the classified LAZ copy chunk by chunk. Outputs appear atomically.

``bounds=[xmin, ymin, xmax, ymax]`` labels only the points in the box: the passes read the
box plus the context margin (a COPC query for COPC files), so the box's labels are those the
model gives the box with its surroundings; the outputs hold the box's points in read order.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.io import PointFileError, atomic_path, label_dtype
from pointseg.io.copc import Box, in_box, las_header
from pointseg.io.las_features import (
    INTENSITY_SCALE,
    LasTile,
    generic_features,
    intensity_divisor_from_counts,
    las_features,
    unit_scale,
)
from pointseg.io.las_file import las_origin, point_chunks, write_las_classification, xyz_of
from pointseg.segmenter import Segmenter

_SPILL = np.dtype([("idx", "<i8"), ("coord", "<f4", 3), ("inten", "<u2"), ("rgb", "<u2", 3),
                   ("ret", "u1", 2), ("cls", "u1")])  # fmt: skip


def feature_radius(reader: dict[str, Any]) -> float:
    """How far (file units) a point's features look: the largest hag radius, cell-rounded."""
    las = dict(reader.get("las") or {})
    radii = las.get("hag_radii", (5.0, 15.0, 30.0)) if "las" in reader else None
    if not radii:
        return 0.0
    cell = float(las.get("hag_cell", 1.0))
    return (math.ceil(max(radii) / cell) + 1) * cell


class _Grid:
    """The tile's voxel/block/chunk grid (voxel units from the float32 minimum ``lo``)."""

    def __init__(self, seg: Segmenter, *, lo: np.ndarray, chunk_m: float) -> None:
        opts, v = seg.options, seg.voxel_size
        self.lo, self.v = lo, v
        tile = max(1, round(opts.block_size / v))
        margin = round(opts.overlap / v)
        self.side = tile * max(1, round(chunk_m / opts.block_size))  # core side, voxels
        reach = max(1, math.ceil(margin / tile)) * tile + margin + 1  # voting blocks
        self.ctx = reach + math.ceil(feature_radius(seg.recipe.reader) / v)  # voxels
        self.ctx_m = self.ctx * v

    def cells(self, coord: np.ndarray) -> np.ndarray:
        """(n, 2) int64 x/y voxel cells, as ``voxelize`` computes them."""
        return np.floor((coord[:, :2].astype(np.float64) - self.lo[:2]) / self.v).astype(np.int64)


def _scan(path: Path, box: Box | None, chunk: int) -> dict[str, Any]:
    """Pass 1: origin, float32 min, maxima for the auto scales, point count."""
    hdr = las_header(path)
    has_rgb = {"red", "green", "blue"} <= set(hdr.point_format.dimension_names)
    origin, lo, n, rgb_max = None, None, 0, 0
    ihist = np.zeros(65536, np.int64)  # intensities of the whole tile (or box), for its scale
    for pts in point_chunks(path, box=box, chunk_size=chunk):
        xyz = xyz_of(pts)
        if origin is None:  # as the whole-tile reader: from the header's minimum
            origin = las_origin(hdr.mins, hdr.maxs, xyz)
        c = (xyz - origin).astype(np.float32).min(0).astype(np.float64)
        lo = c if lo is None else np.minimum(lo, c)
        ihist += np.bincount(np.asarray(pts.intensity), minlength=65536)
        if has_rgb:
            rgb_max = max(rgb_max, int(max(np.max(pts.red), np.max(pts.green), np.max(pts.blue))))
        n += len(pts)
    if origin is None:
        raise PointFileError(f"{path}: no points{' in bounds ' + str(list(box)) if box else ''}")
    return {"origin": origin, "lo": lo, "n": n, "ihist": ihist, "rgb_max": rgb_max,
            "has_rgb": has_rgb}  # fmt: skip


def _spill(path: Path, box: Box | None, core_box: Box | None, grid: _Grid, origin, tmp: Path,
           chunk: int) -> tuple[int, set[tuple[int, int]]]:  # fmt: skip
    """Pass 2: every point (with context) into the files of the chunks it belongs to."""
    n_out, cores = 0, set()
    span = 2 * math.ceil(grid.ctx / grid.side) + 1
    for pts in point_chunks(path, box=box, chunk_size=chunk):
        xyz = xyz_of(pts)
        rec = np.zeros(len(pts), _SPILL)
        rec["coord"] = xyz - origin  # float64 subtraction, then float32 (as the reader)
        inside = in_box(xyz[:, 0], xyz[:, 1], core_box)
        rec["idx"] = -1
        rec["idx"][inside] = n_out + np.arange(int(inside.sum()))
        n_out += int(inside.sum())
        rec["inten"] = pts.intensity
        if "red" in pts.point_format.dimension_names:
            rec["rgb"] = np.stack([pts.red, pts.green, pts.blue], 1)
        rec["ret"] = np.stack([pts.return_number, pts.number_of_returns], 1)
        rec["cls"] = pts.classification
        cell = grid.cells(rec["coord"])
        cores |= set(map(tuple, np.unique(cell[inside] // grid.side, axis=0).tolist()))
        first = (cell - grid.ctx) // grid.side  # (n, 2) lowest chunk that holds the point
        last = (cell + grid.ctx) // grid.side
        for da in range(span):
            for db in range(span):
                ab = first + [da, db]
                ok = (ab <= last).all(1)
                if not ok.any():
                    continue
                keys, inv = np.unique(ab[ok], axis=0, return_inverse=True)
                sel = rec[ok]
                for k, (a, b) in enumerate(keys.tolist()):
                    with open(tmp / f"{a}_{b}.bin", "ab") as f:
                        f.write(sel[inv.reshape(-1) == k].tobytes())
    return n_out, cores


def _chunk_sample(rec: np.ndarray, seg: Segmenter, scan: dict[str, Any], path: Path) -> dict:
    """The chunk's sample: coordinates and the model's features, made as the reader makes
    them from a whole tile (scales and the hag grid anchor fixed by the whole tile)."""
    reader = seg.recipe.reader
    coord = np.ascontiguousarray(rec["coord"])
    rgb = rec["rgb"] if scan["has_rgb"] else None
    colour = scan["has_rgb"] and scan["rgb_max"] > 0
    out: dict[str, Any] = {"coord": coord, "origin": scan["origin"]}
    if "las" in reader:
        opts = dict(reader["las"] or {})
        if opts.get("color", "auto") == "auto":
            opts["color"] = colour
        opts["color_scale"] = unit_scale(
            np.array([scan["rgb_max"]]), opts.get("color_scale", "auto")
        )
        # the tile's divisor, not each chunk's (a percentile of the chunk would differ)
        opts["intensity_scale"] = intensity_divisor_from_counts(
            scan["ihist"], opts.get("intensity_scale", INTENSITY_SCALE)
        )
        # the height-above-ground cells of the whole tile, anchored at its minimum
        opts["hag_anchor"] = scan["lo"][:2].astype(np.float32)
        tile = LasTile(path=path, xyz=coord.astype(np.float32), classification=rec["cls"],
                       intensity=rec["inten"], returns=rec["ret"], rgb=rgb,
                       header={"point_format": -1})  # fmt: skip
        try:
            arrays, _ = las_features(tile, **opts)
        except (TypeError, ValueError) as err:
            raise PointFileError(f"{path}: cannot compute the model's LAS features: {err}") from err
        out.update(arrays)
    else:
        out.update(  # as the whole-tile reader: the tile's field ranges, not the chunk's
            generic_features(
                intensity=rec["inten"],
                returns=rec["ret"],
                rgb=rgb if colour else None,
                intensity_div=intensity_divisor_from_counts(scan["ihist"], "auto"),
                color_div=unit_scale(np.array([scan["rgb_max"]])),
            )  # fmt: skip
        )
    missing = [k for k in seg.file_features if k not in out]
    if missing:
        raise PointFileError(f"{path} lacks the model's feature(s) {missing}; label other tiles")
    return out


def stream_file(
    path: Path, plan: dict[str, Path], seg: Segmenter, *, codes: np.ndarray, chunk_m: float,
    bounds: Box | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Label ``path`` chunk by chunk; writes ``plan['labels']`` and ``plan['las']``."""
    if seg.recipe.transforms:
        raise ValueError(
            "this model's recipe transforms the whole scan before voxelizing "
            f"({[t['_target_'] for t in seg.recipe.transforms]}): it cannot be streamed; "
            "set stream.min_points=null and leave bounds unset"
        )
    if seg.options.block_size is None:
        raise ValueError("streaming needs block inference: set inference.block_size")
    t0, chunk = time.perf_counter(), int(seg.options.chunk_size)
    margin = _Grid(seg, lo=np.zeros(3), chunk_m=chunk_m).ctx_m
    ctx_box = None if bounds is None else (bounds[0] - margin, bounds[1] - margin,
                                           bounds[2] + margin, bounds[3] + margin)  # fmt: skip
    scan = _scan(path, ctx_box, chunk)
    grid = _Grid(seg, lo=scan["lo"], chunk_m=chunk_m)
    k = seg.num_classes
    hist = np.zeros(k, np.int64)
    plan["labels"].parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=plan["labels"].parent, prefix=f".{path.stem}.stream."))
    try:
        n, cores = _spill(path, ctx_box, bounds, grid, scan["origin"], tmp, chunk)
        if n == 0:
            raise PointFileError(f"{path}: no points in bounds {list(bounds or [])}")
        with atomic_path(plan["labels"]) as lab_tmp:
            labels = np.lib.format.open_memmap(lab_tmp, "w+", label_dtype(k), (n,))
            done = 0
            for a, b in sorted(cores):
                rec = np.fromfile(tmp / f"{a}_{b}.bin", _SPILL)
                pred = seg.predict(_chunk_sample(rec, seg, scan, path), grid_origin=scan["lo"])
                cell = grid.cells(rec["coord"]) // grid.side
                core = (rec["idx"] >= 0) & (cell[:, 0] == a) & (cell[:, 1] == b)
                labels[rec["idx"][core]] = pred.labels[core]
                hist += np.bincount(pred.labels[core], minlength=k)
                done += int(core.sum())
            if done != n:
                raise RuntimeError(f"{path}: {done} of {n} points labelled (chunk plan bug)")
            labels.flush()
            if "las" in plan:  # pass 3: the box's points (all without one), classified
                write_las_classification(path, plan["las"], labels, lut=codes, box=bounds,
                                         query=ctx_box, chunk_size=chunk)  # fmt: skip
            del labels
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dt = time.perf_counter() - t0
    print(f"{path.name}: {n:,} points streamed in {len(cores)} chunk(s), {dt:.1f} s: "
          f"{n / dt:,.0f} points/s")  # fmt: skip
    return {"input": str(path), "points": n, "blocks": len(cores), "seconds": dt,
            "points_per_s": n / dt, "outputs": {k: str(v) for k, v in plan.items()},
            "class_counts": dict(zip(seg.class_names, hist.tolist(), strict=True)),
            "streamed_chunks": len(cores), "bounds": None if bounds is None else list(bounds),
            "nonfinite_points": 0}  # fmt: skip
