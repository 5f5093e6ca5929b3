"""``pointseg-prepare las src=<folder or file> dst=data/<name> [key=value ...]``.

Every ``.las``/``.laz`` file under ``src`` (recursively) is read whole, labelled through a
class map (``pointseg.io.las``) and cut into square blocks of ``block_size`` units in x/y:

    split_by=tile      dst/<tile_stem>/block_<i>_<j>/         (splits = tile stems)
    split_by=folder    dst/<folder>/<tile_stem>_block_<i>_<j>/  (src/<folder>/**/<tile>.las)
    split_by=x_median  dst/train/<tile_stem>_block_<i>_<j>/   points west of the tile's median x
                       dst/val/<tile_stem>_block_<i>_<j>/     the others

Without overlap every point lands in exactly one block. ``overlap`` widens blocks by that
margin on each side (training context; points then repeat across blocks). Under
``split_by=folder`` and ``x_median`` only ``train`` blocks overlap (and never across the
median), so every point of the other splits is scored once; under ``split_by=tile`` all do.

Coordinates are re-centred in float64 on the block's corner before the float32 cast;
``meta.json`` holds that ``offset`` (world = coord + offset) and ``point_index.npy`` each
point's row in the source file, to write predictions back.

A tile is finished when ``dst/.done/<tile_stem>/tile.json`` exists; a re-run skips finished
tiles and, inside an unfinished tile, blocks already written.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.data.scenes import write_scene
from pointseg.io import read_points
from pointseg.io.las import ClassMap, load_class_map
from pointseg.prepare.common import PrepareError, SceneJob, run_jobs
from pointseg.utils import public_mode

SPLIT_MODES = ("tile", "folder", "x_median")
DONE = ".done"
# key=value options of ``pointseg-prepare las`` and what they mean (its --help prints them with
# the defaults of ``prepare``; docs/datasets/las.md has the long form)
OPTIONS = {
    "split_by": "tile: dst/<tile>/block_<i>_<j>/ (splits are tile names); folder: the first "
    "folder below src is the split (src/train/*.laz, src/val/*.laz; evaluation tiles whole); "
    "x_median: each tile's west half to train/, east half to val/",
    "block_size": "block side in the files' horizontal units (metres or feet); 0 keeps a tile "
    "(or half tile) whole",
    "overlap": "widen training blocks by this margin on each side (points then repeat)",
    "class_map": "ASPRS codes -> classes: a preset (asprs, the default; ground_other), a "
    ".yaml/.json file or an inline mapping such as class_map='{ground: [2], other: [1]}'",
    "unknown": "codes the class map does not list: error (stop before writing anything, naming "
    "the tiles and codes), ignore (label -1) or other (the class named other); default: the "
    "map's own (error for asprs)",
    "color": "auto: write color when the tiles have non-zero RGB; true: require it; false: never",
    "color_scale": "RGB divisor to [0, 1]: auto (255 or 65535 from the tile's maximum) or a number",
    "intensity_scale": "intensity divisor: pNN (the tile's NN-th percentile, then clipped to "
    "[0, 2]), auto, or a number",
    "hag": "write hag (N, K): height above the lowest point within each radius of hag_radius",
    "hag_cell": "grid cell of the hag search, in file units",
    "hag_radius": "radii of the hag columns, a number or a comma list such as 2,5,15,30,60",
    "geometry_k": "write geom (N, 4) eigen features of the k nearest neighbours; 0: off",
}


def find_tiles(src: Path) -> list[Path]:
    """``src`` itself, or every LAS/LAZ file below it; stems must be unique (they name scenes)."""
    if src.is_file():
        tiles = [src]
    else:
        tiles = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".las", ".laz"))
    if not tiles:
        raise PrepareError(f"no .las/.laz files under {src}")
    seen: dict[str, Path] = {}
    for tile in tiles:
        if tile.stem in seen:
            raise PrepareError(
                f"{seen[tile.stem]} and {tile} have the same name '{tile.stem}', which names "
                "their scenes; rename one of them or prepare them into different dst folders"
            )
        seen[tile.stem] = tile
    return tiles


def prepare(
    src: Path,
    dst: Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    block_size: float = 50.0,
    overlap: float = 0.0,
    split_by: str = "tile",
    class_map: Any = None,
    unknown: str | None = None,
    color: bool | str = "auto",
    color_scale: str | float = "auto",
    intensity_scale: str | float = "p99",
    hag: bool = True,
    hag_cell: float = 1.0,
    hag_radius: float | str | Sequence[float] = (2.0, 5.0, 15.0, 30.0, 60.0),
    geometry_k: int = 16,
) -> dict[str, int]:
    """Convert the tiles of ``src`` into block scenes under ``dst``; returns tile counts.

    ``block_size=0`` keeps each tile (or half tile) whole. ``class_map`` is a preset
    (``asprs`` default, ``ground_other``), a ``.yaml``/``.json`` file or an inline mapping
    such as ``{ground: [2], other: [1]}``; ``unknown`` (ignore|other|error) overrides its
    policy for codes it does not list. ``hag`` writes ``hag.npy (N, K)``: the height above
    the lowest point within each of the K radii of ``hag_radius`` (a number or a comma list
    such as ``2,5,15,30,60``; found on a grid of ``hag_cell``), computed over the whole tile.
    ``geometry_k`` (0: off) writes ``geom.npy (N, 4)``, eigenvalue features of each point's
    k nearest neighbours; ``intensity_scale`` (``p99`` default, ``auto`` or a number) divides
    intensity. All per-point features come from ``pointseg.io.las.las_features``; the exact
    keyword dict passed to it is stored as ``feature_options`` in every scene's ``meta.json``.

    Under ``split_by=folder`` the tiles outside ``train/`` are written whole, one scene per
    tile named after it, so an evaluation scene is the raw tile; ``block_size`` cuts only the
    training tiles.
    """
    if block_size < 0 or overlap < 0 or (block_size > 0 and overlap >= block_size):
        raise PrepareError(
            f"need block_size >= 0 and 0 <= overlap < block_size, got block_size={block_size}, "
            f"overlap={overlap}"
        )
    if hag_cell <= 0:
        raise PrepareError(f"hag_cell must be > 0, got {hag_cell}")
    if split_by not in SPLIT_MODES:
        raise PrepareError(f"split_by={split_by!r}; use one of {SPLIT_MODES}")
    try:
        cmap = load_class_map(class_map, unknown=unknown)
    except (ValueError, FileNotFoundError) as err:
        raise PrepareError(str(err)) from err
    options = {
        "block_size": float(block_size),
        "overlap": float(overlap),
        "split_by": split_by,
        "class_map": cmap.to_dict(),
        "class_names": list(cmap.names),
        "color": color,
        "color_scale": color_scale,
        "intensity_scale": intensity_scale,
        "hag_cell": float(hag_cell),
        "hag_radii": _radii(hag_radius) if hag else None,
        "geometry_k": int(geometry_k),
    }
    tiles = find_tiles(src)
    folders = [_split_folder(src, t) if split_by == "folder" else "" for t in tiles]
    # every tile's header and codes before anything is written: a tile that cannot be
    # labelled stops the run with nothing half-prepared in dst, a 0-point tile is skipped
    todo = [t for t in tiles if overwrite or not (dst / DONE / t.stem).is_dir()]
    empty = check_tiles(todo, cmap)
    for tile in empty:
        print(f"skipping {tile}: it holds 0 points", file=sys.stderr)
    folders = [f for t, f in zip(tiles, folders, strict=True) if t not in empty]
    tiles = [t for t in tiles if t not in empty]
    existed = dst.exists()
    _check_options(dst, options, overwrite=overwrite)
    jobs = [
        SceneJob(
            name=t.stem,
            output=dst / DONE / t.stem,
            inputs=(t.resolve(),),
            options={
                **options,
                "dst": str(dst),
                "overwrite": overwrite,
                "folder": f,
                "workers": workers,
            },
        )
        for t, f in zip(tiles, folders, strict=True)
    ]
    try:
        counts = run_jobs(
            jobs, convert_tile, dst=dst, workers=workers, overwrite=overwrite, desc="LAS tiles"
        )
    except BaseException:
        if not existed:  # a failed first run leaves no dst behind (no tile got finished)
            _remove_if_unfinished(dst)
        raise
    counts["scenes"] = sum(len(_read_done(j.output)["scenes"]) for j in jobs)
    counts["empty"] = len(empty)
    if empty:
        print(f"0-point tile(s) skipped: {', '.join(str(t) for t in empty)}")
    return counts


def check_tiles(tiles: Sequence[Path], cmap: ClassMap) -> list[Path]:
    """Read every tile's header and, when the class map stops at unlisted codes, its codes;
    raise one ``PrepareError`` naming every tile that cannot be prepared. Returns the tiles
    with 0 points."""
    import laspy

    empty, unlisted = [], []
    for tile in tiles:
        if _point_count(tile) == 0:
            empty.append(tile)
            continue
        if cmap.unknown != "error":
            continue
        codes: dict[int, int] = {}
        try:
            # LAS 1.4 point formats 6-10 in LAZ decompress the classification layer alone
            only = laspy.DecompressionSelection.XY_RETURNS_CHANNEL
            only |= laspy.DecompressionSelection.CLASSIFICATION
            with laspy.open(tile, decompression_selection=only) as reader:
                for chunk in reader.chunk_iterator(2_000_000):
                    values, counts = np.unique(np.asarray(chunk.classification), return_counts=True)
                    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                        codes[v] = codes.get(v, 0) + c
        except Exception as err:  # laspy and lazrs raise their own types
            raise PrepareError(
                f"cannot read {tile}: {err}; the file is truncated or not a LAS/LAZ file "
                "(re-download or re-export it)"
            ) from err
        bad = {v: c for v, c in sorted(codes.items()) if v not in cmap.codes}
        if bad:
            listing = ", ".join(f"{v} ({c} points)" for v, c in bad.items())
            unlisted.append(f"{tile}: {listing}")
    if unlisted:
        raise PrepareError(
            f"{len(unlisted)} tile(s) hold codes the class map does not list, so nothing was "
            f"written: {'; '.join(unlisted)}. List them in the class map, or pass "
            "unknown=ignore (label -1) or unknown=other"
        )
    return empty


def _remove_if_unfinished(dst: Path) -> None:
    """Remove what a failed run wrote into a ``dst`` it created, unless a tile got finished."""
    done = dst / DONE
    if done.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in done.iterdir()):
        return
    shutil.rmtree(dst, ignore_errors=True)


def _radii(value: float | str | Sequence[float]) -> list[float]:
    items = value.split(",") if isinstance(value, str) else value
    items = items if isinstance(items, list | tuple) else [items]
    try:
        radii = [float(r) for r in items]
    except ValueError as err:
        raise PrepareError(f"hag_radius={value!r}: give a number or a comma list") from err
    if not radii or min(radii) < 0:
        raise PrepareError(f"hag_radius={value!r}: radii must be >= 0")
    return radii


def _split_folder(src: Path, tile: Path) -> str:
    parts = tile.relative_to(src).parts if src.is_dir() else ()
    if len(parts) < 2:
        raise PrepareError(
            f"split_by=folder takes the split from the first folder below src, but {tile} is "
            f"not in a sub-folder of {src}; arrange tiles as src/train/*.las, src/val/*.las"
        )
    return parts[0]


def _check_options(dst: Path, options: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse to mix blocks made with other options into one dataset (unless overwriting)."""
    path = dst / "prepare.json"
    text = json.dumps(options, indent=2, sort_keys=True)
    if path.is_file() and not overwrite and json.loads(path.read_text()) != json.loads(text):
        raise PrepareError(
            f"{dst} was prepared with other options (see {path}); pass --overwrite to redo "
            "every tile with the new ones, or choose another dst"
        )
    dst.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


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
    if _point_count(path) == 0:  # prepare() skips these; a direct call records no scene
        _write_done(job.output, {"source": str(path), "points": 0, "scenes": []})
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
    _write_done(job.output, {"source": str(path), "points": n, "scenes": written})


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


def _point_count(path: Path) -> int:
    import laspy

    try:
        with laspy.open(path) as reader:
            return int(reader.header.point_count)
    except Exception as err:  # laspy and lazrs raise their own types
        raise PrepareError(
            f"cannot read {path}: {err}; the file is truncated or not a LAS/LAZ file "
            "(re-download or re-export it)"
        ) from err


def _remove_tile_scenes(dst: Path, stem: str, split_by: str) -> None:
    """Before redoing a tile: its old scenes, which another block size may have named apart."""
    done = dst / DONE / stem
    if done.is_dir():
        for rel in _read_done(done)["scenes"]:
            shutil.rmtree(dst / rel, ignore_errors=True)
    if split_by == "tile":
        shutil.rmtree(dst / stem, ignore_errors=True)
    else:  # scenes of an interrupted run, which left no record
        for folder in [*dst.glob(f"*/{stem}_block_*"), *dst.glob(f"*/{stem}")]:
            shutil.rmtree(folder, ignore_errors=True)


def _write_done(folder: Path, record: dict[str, Any]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-"))
    (tmp / "tile.json").write_text(json.dumps(record, indent=2))
    public_mode(tmp, directory=True)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _read_done(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "tile.json").read_text())
