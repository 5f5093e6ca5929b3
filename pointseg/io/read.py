"""Readers: ``read_points`` and one parser per format.

``read_points`` returns a sample dict in the project's vocabulary: ``coord (N, 3) f32``,
``origin (3,) f64`` (world = coord + origin), and where the file has them ``color (N, 3) f32
in [0, 1]``, ``strength (N, 1) f32``, ``normal (N, 3) f32``, ``segment (N,) i64`` (a label
field), ``classification (N,) u8`` and ``returns (N, 2) f32`` (LAS). Coordinates larger than
float32 can hold to the millimetre (georeferenced tiles) are re-centred in float64 first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.io.formats import (
    FORMATS,
    RECENTER_ABOVE,
    PointFileError,
    check_features,
    detect_format,
    sniff_format,
)
from pointseg.io.parsers import PARSERS

log = logging.getLogger("pointseg.io")  # the package's logger: log lines keep its name

Sample = dict[str, Any]


def read_points(
    path: str | Path,
    *,
    format: str | None = None,
    columns: str | Sequence[str] | None = None,
    require: Sequence[str] = (),
    chunk_size: int = 2_000_000,
    las: Mapping[str, Any] | None = None,
    feat_keys: Sequence[str] = (),
    only: Sequence[str] | None = None,
    nonfinite: str = "error",
    max_bad_lines: int = 0,
) -> Sample:
    """Read one file into a sample dict; ``require`` names features that must be present
    (checked before the points are read where the format allows it; ``feat_keys``, the model's
    whole list, makes the error's fix exact). ``las``: for LAS/LAZ files, the keyword options
    of ``pointseg.io.las_features.las_features`` (the ones a model was trained with, stored in its
    checkpoint); with them every LAS feature is computed exactly as ``pointseg-prepare las``
    computed it, without them just colour, intensity and returns are read. ``only``: keep
    just these keys (besides ``coord`` and ``origin``), which saves memory on big files.
    ``nonfinite``: ``"error"`` refuses points with NaN/Inf coordinates, ``"drop"`` leaves them
    out with a warning that counts them and adds ``kept (N,) bool`` (the file's rows that
    were kept) when any were. ``max_bad_lines``: text files only, lines that are not a row of
    numbers skipped with a warning naming each (0: the first one raises, naming its line)."""
    if nonfinite not in ("error", "drop"):
        raise ValueError(f"nonfinite must be 'error' or 'drop', got {nonfinite!r}")
    path = Path(path)
    if not path.is_file():
        raise PointFileError(f"{path} does not exist or is not a file")
    fmt = detect_format(path, format)
    actual = sniff_format(path)
    if actual is not None and actual != fmt:
        ext = next(e for e, f in FORMATS.items() if f == actual)
        raise PointFileError(
            f"{path} is a {actual.upper()} file (by its first bytes), not {fmt.upper()} as "
            f"{'format=' + str(format) if format else 'its extension'} says; rename it to "
            f"{path.stem}{ext} or pass format={actual}"
        )
    if fmt == "las":
        from pointseg.io.las_file import read_las_points

        sample = read_las_points(
            path, require=require, chunk_size=chunk_size, las=las, feat_keys=feat_keys, only=only
        )
    else:
        text = {"max_bad_lines": int(max_bad_lines)} if fmt == "text" else {}
        try:
            sample = PARSERS[fmt](path, columns, **text)
        except PointFileError:
            raise
        except Exception as err:  # parsers raise their own types: name the file once
            raise PointFileError(
                f"cannot read {path} as {fmt}: {err}; the file is damaged or truncated "
                f"(re-export it), or not {fmt} (pass format=... if the extension is wrong)"
            ) from err
        sample = finish_sample(path, sample, nonfinite=nonfinite)
    check_features(path, sample, require, feat_keys=feat_keys)
    if only is not None:
        sample = {k: v for k, v in sample.items() if k in {"coord", "origin", "kept", *only}}
    return sample


def finish_sample(path: Path, raw: dict[str, np.ndarray], *, nonfinite: str = "error") -> Sample:
    """Typed, validated sample from a parser's raw columns (``path`` names the source in
    errors); coordinates re-centred if needed, colours scaled to [0, 1] by ``_unit_color``.
    ``nonfinite="drop"`` leaves out points with NaN/Inf coordinates (a warning counts them)
    and records which were kept in ``kept (N,) bool``; ``"error"`` refuses them."""
    if "coord" not in raw:
        raise PointFileError(f"{path}: no x, y, z coordinates found")
    xyz = np.asarray(raw["coord"], dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise PointFileError(f"{path}: expected (N, 3) coordinates, got {xyz.shape}")
    if len(xyz) == 0:
        raise PointFileError(f"{path} holds no points; nothing to read")
    for key, arr in raw.items():
        if len(arr) != len(xyz):
            raise PointFileError(f"{path}: '{key}' has {len(arr)} rows for {len(xyz)} points")
    bad = ~np.isfinite(xyz).all(1)
    kept = None
    if bad.any():
        nbad, first = int(bad.sum()), int(np.flatnonzero(bad)[0])
        if nbad == len(xyz):
            raise PointFileError(
                f"{path}: all {nbad} points have NaN/Inf coordinates; nothing to read (check "
                "the file, or format=/columns= if it is read with the wrong layout)"
            )
        if nonfinite != "drop":
            raise PointFileError(
                f"{path}: {nbad} of {len(xyz)} point(s) have NaN/Inf coordinates (first at row "
                f"{first}); remove them from the file"
            )
        log.warning("%s: %d of %d point(s) have NaN/Inf coordinates (first at row %d): left out",
                    path, nbad, len(xyz), first)  # fmt: skip
        kept = ~bad
        raw = {k: np.asarray(v)[kept] for k, v in raw.items()}
        xyz = xyz[kept]
    origin = _origin(xyz.min(0), xyz.max(0))
    out: Sample = {"coord": (xyz - origin).astype(np.float32), "origin": origin}
    if "color" in raw:
        out["color"] = _unit_color(path, np.asarray(raw["color"]))
    if "strength" in raw:
        out["strength"] = np.asarray(raw["strength"], dtype=np.float32).reshape(-1, 1)
    if "normal" in raw:
        out["normal"] = np.asarray(raw["normal"], dtype=np.float32)
    if "segment" in raw:
        seg = np.asarray(raw["segment"]).reshape(-1)
        if np.issubdtype(seg.dtype, np.floating) and not np.all(seg == np.round(seg)):
            raise PointFileError(f"{path}: the label column holds non-integer values")
        out["segment"] = seg.astype(np.int64)
    if kept is not None:
        out["kept"] = kept
    return out


def _origin(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    if max(np.abs(lo).max(), np.abs(hi).max()) <= RECENTER_ABOVE:
        return np.zeros(3)
    return np.floor(np.asarray(lo, dtype=np.float64))


def _unit_color(path: Path, c: np.ndarray) -> np.ndarray:
    """Colours to [0, 1]: integers by their range (8- or 16-bit), floats if already in
    [0, 1], 0-255 floats divided by 255; anything else is an error, never clamped."""
    if c.size == 0:
        return c.astype(np.float32).reshape(-1, 3)
    lo, hi = float(c.min()), float(c.max())
    if lo < 0:
        raise PointFileError(f"{path}: negative colour values (min {lo}); colours are >= 0")
    if np.issubdtype(c.dtype, np.floating) and hi <= 1.0:
        div = 1.0
    elif hi <= 255:
        div = 255.0
    elif hi <= 65535:
        div = 65535.0
    else:
        raise PointFileError(f"{path}: colour values up to {hi} fit neither 8 nor 16 bits")
    return (c / div).astype(np.float32)
