"""The on-disk scene format: one folder of ``.npy`` arrays per scene, memory-mappable.

    <root>/<split>/<scene>/coord.npy    (N, 3) float32, metres, re-centred if georeferenced
                           color.npy    (N, 3) float32 in [0, 1]          (if available)
                           normal.npy   (N, 3) float32                    (if available)
                           strength.npy (N, 1) float32 (intensity/remission, if available)
                           segment.npy  (N,)   int64, ignore = -1
                           instance.npy (N,)   int64, -1 where unknown
                           meta.json    free-form provenance (source file, offsets, ...)

A scene is written to a hidden temporary folder and renamed into place when complete, so a
folder that exists is always whole; an interrupted run leaves only ``.tmp-*`` folders,
which the next run removes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.utils import public_mode

KNOWN_KEYS = ("coord", "color", "normal", "strength", "segment", "instance")


def validate_scene(arrays: Mapping[str, np.ndarray], name: str = "scene") -> None:
    """Refuse scenes whose arrays disagree in length or hold non-finite coordinates."""
    if "coord" not in arrays:
        raise ValueError(f"{name}: no 'coord' array")
    n = len(arrays["coord"])
    if n == 0:
        raise ValueError(f"{name}: the scene has no points")
    for key, arr in arrays.items():
        if len(arr) != n:
            raise ValueError(f"{name}: '{key}' has {len(arr)} rows but 'coord' has {n}")
    if not np.isfinite(arrays["coord"]).all():
        raise ValueError(f"{name}: 'coord' holds NaN/Inf values")


def write_scene(
    folder: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
) -> Path:
    """Write a scene atomically: all arrays go to a temporary folder that is then renamed."""
    folder = Path(folder)
    validate_scene(arrays, str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-"))
    try:
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr))
        (tmp / "meta.json").write_text(json.dumps(dict(meta or {}), indent=2, default=str))
        public_mode(tmp, directory=True)
        if folder.exists():  # an explicit overwrite: replace the old scene whole
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def remove_partial(root: str | Path) -> int:
    """Delete ``.tmp-*`` folders left by an interrupted run; returns how many."""
    n = 0
    for tmp in Path(root).rglob(".tmp-*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
    return n


def read_scene(
    folder: str | Path, keys: Iterable[str] | None = None, *, mmap: bool = True
) -> dict[str, np.ndarray]:
    """Arrays of a scene folder (all ``.npy`` files, or ``keys``), memory-mapped by default."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"scene folder {folder} does not exist")
    names = list(keys) if keys is not None else sorted(p.stem for p in folder.glob("*.npy"))
    out = {}
    for key in names:
        path = folder / f"{key}.npy"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; re-run the dataset's prepare command for this scene"
            )
        out[key] = np.load(path, mmap_mode="r" if mmap else None)
    return out
