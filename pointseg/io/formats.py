"""What every reader shares: format names by extension, detection by extension or first
bytes, the error types, the feature check and the re-centring threshold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pointseg.utils import FEATURE_WIDTHS

RECENTER_ABOVE = 1.0e4  # float32 spacing at 1e4 is ~1 mm: beyond it, subtract an origin

FORMATS: dict[str, str] = {
    ".ply": "ply", ".pcd": "pcd", ".xyz": "text", ".txt": "text", ".csv": "text",
    ".pts": "text", ".npy": "npy", ".npz": "npz", ".las": "las", ".laz": "las", ".bin": "kitti",
}  # fmt: skip


class PointFileError(ValueError):
    """A point-cloud file that cannot be used; the message names the file and the fix."""


class MissingFeatureError(PointFileError):
    """The file lacks a per-point feature the model needs."""


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    path = Path(path)
    if fmt:
        fmt = fmt.lower().lstrip(".")
        name = FORMATS.get("." + fmt, fmt)
        if name not in set(FORMATS.values()):
            raise PointFileError(
                f"{path}: unknown format={fmt!r}; use one of {sorted(set(FORMATS.values()))}"
            )
        return name
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise PointFileError(
            f"{path}: unknown extension {ext!r}; supported: {', '.join(sorted(FORMATS))}. "
            "Rename the file or pass format=<ply|pcd|text|npy|npz|las|kitti>"
        )
    return FORMATS[ext]


_MAGIC = {b"ply": "ply", b"LASF": "las", b"\x93NUMPY": "npy", b"PK\x03\x04": "npz"}


def sniff_format(path: str | Path) -> str | None:
    """The format a file's first bytes prove (PLY, LAS/LAZ, NPY, NPZ, PCD), else None."""
    with open(path, "rb") as f:
        head = f.read(64)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    if head.startswith((b"# .PCD", b"VERSION")):
        return "pcd"
    return None


def check_features(
    path: str | Path,
    sample: dict[str, Any],
    require: Sequence[str],
    *,
    feat_keys: Sequence[str] = (),
) -> None:
    """Raise ``MissingFeatureError`` naming the file, the feature and the fix."""
    for key in require:
        if key in sample:
            continue
        have = sorted(k for k in sample if k not in ("origin", "kept", "las_header"))
        rest = [k for k in feat_keys if k != key]
        width = sum(FEATURE_WIDTHS.get(k, 1) for k in rest)
        retrain = (
            f"retrain with data.feat_keys=[{','.join(rest)}] data.in_channels={width}"
            if rest
            else f"retrain with other data.feat_keys (without {key})"
        )
        raise MissingFeatureError(
            f"{path} has no '{key}' (it provides {have}) but the model takes {key} as input "
            f"(data.feat_keys={list(feat_keys) or [key]}). Supply a file with "
            f"{_HOW.get(key, key)}, or {retrain}"
        )


_HOW = {
    "color": "colours (PLY red/green/blue, LAS point format 2/3/5/7/8, or text/npy "
    "columns=x,y,z,r,g,b)",
    "strength": "intensity (PLY/PCD 'intensity', LAS, KITTI .bin, or columns=x,y,z,intensity)",
    "normal": "normals (nx, ny, nz)",
    "returns": "return numbers (LAS/LAZ)",
}
