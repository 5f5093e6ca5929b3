"""One LAS tile into block scenes: the block grid (``block_members``), the groups each split
mode cuts a tile into, the scene folders and the tile's ``.done`` record.

Coordinates are re-centred in float64 on the block's corner before the float32 cast;
``meta.json`` holds that ``offset`` (world = coord + offset) and ``point_index.npy`` each
point's row in the source file, to write predictions back. A tile is finished when
``dst/.done/<tile_stem>/tile.json`` exists.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.data.scenes import write_scene
from pointseg.io import read_points
from pointseg.io.las import load_class_map
from pointseg.prepare.common import PrepareError, SceneJob
from pointseg.prepare.las_tiles import point_count
from pointseg.utils import public_mode

DONE = ".done"


def block_members(
    xy: np.ndarray, *, block_size: float, overlap: float = 0.0
) -> dict[tuple[int, int], np.ndarray]:
    """Block ``(i, j)`` -> sorted point rows, for ``xy (N, 2)`` >= 0 in tile-local units.

    Block ``(i, j)`` covers ``[i, i + 1) * block_size`` in x (likewise y) widened by
    ``overlap`` on each side; only blocks whose core holds a point are listed. Without
    overlap each point is in exactly one block. The last block of a row is closed: points on
    the tile's closing grid line (x = 50 of a tile spanning [0, 50], as survey tiles are cut)
    belong to it, not to a sliver block of a few edge points that would be a training sample
    of its own.
    """
    n = len(xy)
    if block_size <= 0:
        return {(0, 0): np.arange(n)} if n else {}
    last = np.maximum(np.ceil(xy.max(0) / block_size).astype(np.int64) - 1, 0)  # (2,)
    core = np.minimum(np.floor(xy / block_size).astype(np.int64), last)  # (N, 2)
    lo = np.minimum(np.floor((xy - overlap) / block_size).astype(np.int64), last)
    hi = np.minimum(np.floor((xy + overlap) / block_size).astype(np.int64), last)
    rows, keys = [], []
    span = int((hi - lo).max()) + 1 if n else 1
    for di in range(span):
        for dj in range(span):
            cand = lo + np.array([di, dj])
            ok = (cand <= hi).all(1)
            rows.append(np.flatnonzero(ok))
            keys.append(cand[ok])
    row, key = np.concatenate(rows), np.concatenate(keys)
    wanted = {tuple(k) for k in np.unique(core, axis=0).tolist()}
    order = np.lexsort((row, key[:, 1], key[:, 0]))
    row, key = row[order], key[order]
    cuts = np.flatnonzero((np.diff(key, axis=0) != 0).any(1)) + 1
    out = {}
    for rs, ks in zip(np.split(row, cuts), np.split(key, cuts), strict=True):
        if len(rs) and tuple(ks[0].tolist()) in wanted:
            out[tuple(ks[0].tolist())] = rs
    return out


def convert_tile(job: SceneJob) -> None:
    """Read one tile and write its block scenes, then its ``.done`` marker."""
    opts, path = job.options, job.inputs[0]
    dst, stem = Path(opts["dst"]), path.stem
    feature_options = feature_options_of(opts)  # las_features(tile, **feature_options)
    if point_count(path) == 0:  # prepare() skips these; a direct call records no scene
        write_done(job.output, {"source": str(path), "points": 0, "scenes": []})
        return
    try:
        # the reader pointseg-predict uses on a raw tile, with the same feature options, so
        # a model sees the same features on the tile as on its prepared scenes
        tile = read_points(path, format="las", las=feature_options)
        segment = load_class_map(opts["class_map"]).apply(tile["classification"], source=str(path))
    except ValueError as err:
        raise PrepareError(str(err) if str(path) in str(err) else f"{path}: {err}") from err
    features = {k: v for k, v in tile.items() if k not in _NOT_FEATURES}
    feature_info = {"keys": sorted(features)}
    if opts["overwrite"]:
        _remove_tile_scenes(dst, stem, opts["split_by"])
    coord, read_origin = tile["coord"], tile["origin"]  # world = coord + read_origin
    n = len(coord)

    bs, overlap = opts["block_size"], opts["overlap"]
    if bs > 0:  # a round origin on the block grid, so the blocks of neighbouring tiles line up
        lowest = coord.min(0).astype(np.float64) + read_origin
        origin = np.array([*(np.floor(lowest[:2] / bs) * bs), np.floor(lowest[2])])  # (3,) f64
    else:  # whole tiles keep the reader's coordinates bit for bit (as predict reads them)
        origin = read_origin
    local = coord.astype(np.float64) + (read_origin - origin)  # (N, 3) exact before the cast
    if opts["split_by"] == "tile":
        groups = [(stem, "block_{}_{}", np.arange(n), overlap)]
    elif opts["split_by"] == "folder" and opts["folder"] == "train":  # only these overlap
        groups = [("train", stem + "_block_{}_{}", np.arange(n), overlap)]
    elif opts["split_by"] == "folder":  # evaluation tiles whole: the scene is the raw tile
        bs, origin = 0.0, read_origin  # the reader's coordinates bit for bit, as predict's
        local = coord.astype(np.float64)
        groups = [(opts["folder"], stem, np.arange(n), 0.0)]
    else:
        median = float(np.median(local[:, 0]) + origin[0])
        west = local[:, 0] + origin[0] < median
        name = stem + "_block_{}_{}"
        groups = [
            ("train", name, np.flatnonzero(west), overlap),
            ("val", name, np.flatnonzero(~west), 0.0),
        ]
        feature_info["x_median"] = median

    base_meta = {
        "source": str(path),
        "tile": stem,
        "header": tile["las_header"],
        "class_names": opts["class_names"],
        "class_map": opts["class_map"],
        "block_size": bs,
        "features": feature_info,
        # how pointseg.io.read_points reads the raw tile into these features (see segmenter)
        "reader": {"las": feature_options},
        "feature_options": feature_options,
    }
    written: list[str] = []
    new: list[Path] = []  # the folders this call writes, removed again if it fails
    try:
        _write_blocks(dst, groups, local, bs, origin, segment, features, tile, base_meta,
                      overwrite=bool(opts["overwrite"]), written=written, new=new)  # fmt: skip
    except BaseException:
        for folder in new:  # no tile is left half-written
            shutil.rmtree(folder, ignore_errors=True)
        for parent in {f.parent for f in new} - {dst}:  # split_by=tile: dst/<tile>/
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        raise
    write_done(job.output, {"source": str(path), "points": n, "scenes": written})


def _write_blocks(
    dst: Path, groups: list, local: np.ndarray, bs: float, origin: np.ndarray,
    segment: np.ndarray, features: dict[str, np.ndarray], tile: dict[str, Any],
    base_meta: dict[str, Any], *, overwrite: bool, written: list[str], new: list[Path],
) -> None:  # fmt: skip
    """Write each group's blocks as scenes (appending to ``written`` and ``new``)."""
    for split, pattern, members, margin in groups:
        blocks = block_members(local[members, :2], block_size=bs, overlap=margin)
        for (i, j), rows in blocks.items():
            idx = members[rows]  # (n,) rows of the source file
            folder = dst / split / pattern.format(i, j)
            written.append(str(folder.relative_to(dst)))
            if folder.is_dir() and not overwrite:
                continue  # finished by an interrupted run with the same options
            new.append(folder)
            corner = np.array([i * bs, j * bs, 0.0])
            arrays = {
                "coord": (local[idx] - corner).astype(np.float32),  # (n, 3)
                "segment": segment[idx],  # (n,) int64
                "point_index": idx.astype(np.int64),  # (n,)
                **{k: v[idx] for k, v in features.items()},
            }
            codes, counts = np.unique(tile["classification"][idx], return_counts=True)
            meta = {
                **base_meta,
                "split": split,
                "block": [i, j],
                "overlap": margin,
                "offset": (origin + corner).tolist(),  # world = coord + offset
                "points": len(idx),
                "code_counts": {int(c): int(k) for c, k in zip(codes, counts, strict=True)},
            }
            write_scene(folder, arrays, meta)


def feature_options_of(opts: dict[str, Any]) -> dict[str, Any]:
    """The keyword options of ``las_features`` in a preparer's options, as plain JSON."""
    radii = opts["hag_radii"]
    return {
        "color": opts["color"],
        "color_scale": opts["color_scale"],
        "intensity_scale": opts["intensity_scale"],
        "hag_cell": float(opts["hag_cell"]),
        "hag_radii": None if radii is None else [float(r) for r in radii],
        "geometry_k": int(opts.get("geometry_k", 0)),
    }


# what the reader returns besides the per-point features a scene stores
_NOT_FEATURES = {"coord", "origin", "classification", "las_header", "kept"}


def _remove_tile_scenes(dst: Path, stem: str, split_by: str) -> None:
    """Before redoing a tile: its old scenes, which another block size may have named apart."""
    done = dst / DONE / stem
    if done.is_dir():
        for rel in read_done(done)["scenes"]:
            shutil.rmtree(dst / rel, ignore_errors=True)
    if split_by == "tile":
        shutil.rmtree(dst / stem, ignore_errors=True)
    else:  # scenes of an interrupted run, which left no record
        for folder in [*dst.glob(f"*/{stem}_block_*"), *dst.glob(f"*/{stem}")]:
            shutil.rmtree(folder, ignore_errors=True)


def write_done(folder: Path, record: dict[str, Any]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-"))
    (tmp / "tile.json").write_text(json.dumps(record, indent=2))
    public_mode(tmp, directory=True)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def read_done(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "tile.json").read_text())
