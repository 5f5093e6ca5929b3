"""The tiles of a ``pointseg-prepare las`` run: finding them under ``src``, the split folder
each one sits in, and reading every header (and, when the class map stops at unlisted codes,
every classification code) before anything is written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pointseg.io import PointFileError
from pointseg.io.las import ClassMap
from pointseg.io.las_file import code_counts
from pointseg.prepare.common import PrepareError


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


def split_folder(src: Path, tile: Path) -> str:
    parts = tile.relative_to(src).parts if src.is_dir() else ()
    if len(parts) < 2:
        raise PrepareError(
            f"split_by=folder takes the split from the first folder below src, but {tile} is "
            f"not in a sub-folder of {src}; arrange tiles as src/train/*.las, src/val/*.las"
        )
    return parts[0]


def check_tiles(tiles: Sequence[Path], cmap: ClassMap) -> list[Path]:
    """Read every tile's header and, when the class map stops at unlisted codes, its codes;
    raise one ``PrepareError`` naming every tile that cannot be prepared. Returns the tiles
    with 0 points."""
    empty, unlisted = [], []
    for tile in tiles:
        if point_count(tile) == 0:
            empty.append(tile)
            continue
        if cmap.unknown != "error":
            continue
        try:
            codes = code_counts(tile)  # the classification field alone where LAZ allows it
        except PointFileError as err:
            raise PrepareError(f"{err} (or it is not a LAS/LAZ file)") from err
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


def point_count(path: Path) -> int:
    import laspy

    try:
        with laspy.open(path) as reader:
            return int(reader.header.point_count)
    except Exception as err:  # laspy and lazrs raise their own types
        raise PrepareError(
            f"cannot read {path}: {err}; the file is truncated or not a LAS/LAZ file "
            "(re-download or re-export it)"
        ) from err
