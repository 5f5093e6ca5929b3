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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pointseg.io.las import load_class_map
from pointseg.prepare.common import PrepareError, SceneJob, run_jobs
from pointseg.prepare.las_blocks import (
    DONE,
    block_members,
    convert_tile,
    feature_options_of,
    read_done,
)
from pointseg.prepare.las_tiles import check_tiles, find_tiles, split_folder

__all__ = [
    "DONE",
    "OPTIONS",
    "SPLIT_MODES",
    "block_members",
    "check_tiles",
    "convert_tile",
    "feature_options_of",
    "find_tiles",
    "prepare",
]

SPLIT_MODES = ("tile", "folder", "x_median")
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
    intensity. All per-point features come from ``pointseg.io.las_features.las_features``; the exact
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
    folders = [split_folder(src, t) if split_by == "folder" else "" for t in tiles]
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
    counts["scenes"] = sum(len(read_done(j.output)["scenes"]) for j in jobs)
    counts["empty"] = len(empty)
    if empty:
        print(f"0-point tile(s) skipped: {', '.join(str(t) for t in empty)}")
    return counts


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
