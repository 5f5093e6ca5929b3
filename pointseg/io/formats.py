"""Format names by extension, detection by extension or first bytes, and the error types."""

from __future__ import annotations

from pathlib import Path

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
