"""Writers: ``write_npy``, ``write_labeled_ply``, their label dtypes, and ``read_ply_classes``
(the class names ``write_labeled_ply`` stores). The classified LAS/LAZ/COPC copy is written by
``pointseg.io.las_file.write_las_classification``.

The writers go through a temporary file in the target folder (``atomic_path``) and a
rename, so a crash never leaves a half file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pointseg.utils import atomic_path


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)  # a file object: np.save would append ".npy" to a path
    return path


def label_dtype(num_classes: int) -> np.dtype:
    """Smallest unsigned integer type for labels 0..num_classes-1 (its maximum left free)."""
    return np.dtype(
        np.uint8 if num_classes < 256 else np.uint16 if num_classes < 65536 else np.int32
    )


def unlabelled(dtype: np.dtype) -> int:
    """The label written for points that got none (NaN/Inf coordinates): the dtype's
    largest value, which ``label_dtype`` keeps free of classes."""
    return int(np.iinfo(dtype).max)


_PLY_TYPES = {"u1": "uchar", "<u2": "ushort", "<i4": "int", "<f4": "float", "<f8": "double"}


def write_labeled_ply(
    path: str | Path,
    coord: np.ndarray,
    labels: np.ndarray,
    *,
    origin: np.ndarray | None = None,
    colors: np.ndarray,
    class_names: Sequence[str],
    chunk_size: int = 2_000_000,
) -> Path:
    """Binary PLY: x, y, z (double when ``origin`` is non-zero), red/green/blue uint8 class
    colours ``colors (K, 3) u8`` and ``label``; class names go into a header comment."""
    import json

    path = Path(path)
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)
    cdt = "<f8" if np.any(origin) else "<f4"
    ldt = label_dtype(len(class_names)).newbyteorder("<").str.replace("|", "")
    dtype = np.dtype([("x", cdt), ("y", cdt), ("z", cdt), ("red", "u1"), ("green", "u1"),
                      ("blue", "u1"), ("label", ldt)])  # fmt: skip
    props = "".join(
        f"property {_PLY_TYPES[dtype[n].str.replace('|', '')]} {n}\n" for n in dtype.names
    )
    head = (
        "ply\nformat binary_little_endian 1.0\ncomment written by pointseg\n"
        f"comment pointseg_classes {json.dumps(list(class_names))}\n"
        f"element vertex {len(coord)}\n{props}end_header\n"
    )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(head.encode("ascii"))
        for i in range(0, len(coord), chunk_size):
            c, lab = coord[i : i + chunk_size], labels[i : i + chunk_size]
            rec = np.empty(len(c), dtype=dtype)
            for a, n in enumerate("xyz"):
                rec[n] = c[:, a].astype(np.float64) + origin[a] if cdt == "<f8" else c[:, a]
            rgb = colors[lab]
            rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
            rec["label"] = lab
            f.write(rec.tobytes())
    return path


def read_ply_classes(path: str | Path) -> list[str] | None:
    """Class names stored by ``write_labeled_ply`` in the header, or None."""
    import json

    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("ascii", "replace").strip()
            if line.startswith("comment pointseg_classes "):
                return json.loads(line.split(" ", 2)[2])
            if line == "end_header":
                return None
    return None
