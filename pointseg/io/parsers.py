"""One parser per point-file format (text, NPY, NPZ, KITTI ``.bin``, PLY, PCD): each returns
the file's raw columns in the sample vocabulary, which ``pointseg.io.read_points`` then
checks, re-centres and scales the same way for every format (LAS: ``las_file``). Text tables
are read by ``pointseg.io.text.read_table``, which ``pointseg-prepare s3dis`` uses too."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.io.formats import PointFileError
from pointseg.io.text import read_table

log = logging.getLogger("pointseg.io")  # the package's logger: log lines keep its name

# names a column / PLY property may have -> (sample key, channel)
_FIELDS: dict[str, tuple[str, int]] = {
    "x": ("coord", 0), "y": ("coord", 1), "z": ("coord", 2),
    "r": ("color", 0), "g": ("color", 1), "b": ("color", 2),
    "red": ("color", 0), "green": ("color", 1), "blue": ("color", 2),
    "diffuse_red": ("color", 0), "diffuse_green": ("color", 1), "diffuse_blue": ("color", 2),
    "nx": ("normal", 0), "ny": ("normal", 1), "nz": ("normal", 2),
    "normal_x": ("normal", 0), "normal_y": ("normal", 1), "normal_z": ("normal", 2),
    "i": ("strength", 0), "intensity": ("strength", 0), "scalar_intensity": ("strength", 0),
    "reflectance": ("strength", 0), "remission": ("strength", 0), "strength": ("strength", 0),
    "label": ("segment", 0), "labels": ("segment", 0), "class": ("segment", 0),
    "segment": ("segment", 0), "scalar_label": ("segment", 0), "semantic": ("segment", 0),
    "scalar_classification": ("segment", 0), "classification": ("segment", 0),
}  # fmt: skip
_WIDTH = {"coord": 3, "color": 3, "normal": 3, "strength": 1, "segment": 1}
_DEFAULT_COLUMNS = {3: "x,y,z", 4: "x,y,z,intensity", 6: "x,y,z,r,g,b"}


def _parse_columns(path: Path, columns: str | Sequence[str], width: int) -> list[str]:
    names = [
        c.strip().lower() for c in (columns.split(",") if isinstance(columns, str) else columns)
    ]
    if len(names) != width:
        raise PointFileError(
            f"{path}: columns={','.join(names)} names {len(names)} columns but the data has "
            f"{width}; name every column (use _ for one to skip)"
        )
    for n in names:
        if n not in _FIELDS and n not in ("_", "skip"):
            raise PointFileError(
                f"{path}: unknown column name {n!r}; use x,y,z, r,g,b, nx,ny,nz, intensity, "
                "label or _ (skip)"
            )
    if not {"x", "y", "z"} <= set(names):
        raise PointFileError(f"{path}: columns={','.join(names)} must include x, y and z")
    return names


def _from_table(path: Path, table: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Column table + names -> raw sample arrays (keys with all their channels only)."""
    raw: dict[str, np.ndarray] = {}
    found: dict[str, dict[int, np.ndarray]] = {}
    for col, name in enumerate(names):
        if name in _FIELDS:
            key, ch = _FIELDS[name]
            found.setdefault(key, {})[ch] = table[:, col]
    for key, chans in found.items():
        if len(chans) != _WIDTH[key]:
            raise PointFileError(f"{path}: '{key}' needs {_WIDTH[key]} columns, got {len(chans)}")
        raw[key] = np.stack([chans[i] for i in range(_WIDTH[key])], 1)
    return raw


def _default_columns(path: Path, width: int, what: str) -> list[str]:
    if width not in _DEFAULT_COLUMNS:
        raise PointFileError(
            f"{path}: {what} has {width} columns; say what they are with "
            "columns=x,y,z,... (e.g. columns=x,y,z,intensity,r,g,b; _ skips a column)"
        )
    log.info("%s: %d columns read as %s (columns=... overrides)", path, width,
             _DEFAULT_COLUMNS[width])  # fmt: skip
    return _DEFAULT_COLUMNS[width].split(",")


def _read_text(
    path: Path, columns: str | Sequence[str] | None, *, max_bad_lines: int = 0
) -> dict[str, np.ndarray]:
    """A text table (``pointseg.io.text``): columns named by ``columns``, else by a header
    line of names, else by the column count (3: x,y,z; 4: +intensity; 6: +r,g,b)."""
    table = read_table(path, max_bad_lines=max_bad_lines)
    if table.header is None and len(table.values) == 0:
        raise PointFileError(f"{path}: no data lines")
    values = table.values
    if columns is None and table.header is not None:
        names = [t.lower() for t in table.header]
        if not {"x", "y", "z"} <= set(names):
            raise PointFileError(f"{path}: header {table.header} has no x, y, z; pass columns=...")
        names = [n if n in _FIELDS else "_" for n in names]
    elif columns is None:
        names = _default_columns(path, values.shape[1], "the table")
    else:
        names = _parse_columns(path, columns, values.shape[1])
    return _from_table(path, values, names)


def _read_npy(path: Path, columns: str | Sequence[str] | None) -> dict[str, np.ndarray]:
    arr = np.load(path, allow_pickle=False)
    if arr.dtype.names:  # a structured array: fields by name
        table = np.stack([arr[n].astype(np.float64) for n in arr.dtype.names], 1)
        names = [n.lower() if n.lower() in _FIELDS else "_" for n in arr.dtype.names]
        return _from_table(path, table, names)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise PointFileError(f"{path}: expected an (N, 3+) array of points, got {arr.shape}")
    names = (
        _parse_columns(path, columns, arr.shape[1])
        if columns is not None
        else _default_columns(path, arr.shape[1], "the array")
    )
    return _from_table(path, arr, names)


_NPZ_KEYS = {
    "coord": ("coord", "xyz", "points", "pos"),
    "color": ("color", "rgb", "colors"),
    "strength": ("strength", "intensity"),
    "normal": ("normal", "normals"),
    "segment": ("segment", "label", "labels"),
}


def _read_npz(path: Path, columns: str | Sequence[str] | None) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        raw = {}
        for key, names in _NPZ_KEYS.items():
            hit = next((n for n in names if n in z.files), None)
            if hit is not None:
                raw[key] = z[hit]
        if "coord" not in raw:
            raise PointFileError(
                f"{path}: no coordinates; store them as 'coord' (N, 3) (found {z.files})"
            )
    return raw


def _read_kitti(path: Path, columns: str | Sequence[str] | None) -> dict[str, np.ndarray]:
    size = path.stat().st_size
    if size == 0:
        raise PointFileError(f"{path} is empty (0 bytes, no points); nothing to read")
    if size % 16:
        raise PointFileError(
            f"{path}: {size} bytes is not a whole number of KITTI points (4 float32 = 16 bytes "
            "each); the file is truncated (re-export it) or not a KITTI .bin scan"
        )
    scan = np.fromfile(path, dtype="<f4").reshape(-1, 4)
    return {"coord": scan[:, :3], "strength": scan[:, 3:4]}


def _read_ply(path: Path, columns: str | Sequence[str] | None) -> dict[str, np.ndarray]:
    """Vertices of a PLY; a triangle mesh without normal fields gets area-weighted vertex
    normals from its faces (``pointseg.io.mesh``)."""
    from plyfile import PlyData

    from pointseg.io.mesh import face_indices, vertex_normals

    try:  # a fixed list length lets plyfile memory-map triangle faces instead of looping
        ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
    except Exception:  # not triangles, or another face layout: the general parser
        ply = PlyData.read(str(path))
    if "vertex" not in ply:
        raise PointFileError(f"{path}: no 'vertex' element (found {[e.name for e in ply]})")
    v = ply["vertex"].data
    raw = _typed_fields(path, v, list(v.dtype.names))
    faces = face_indices(path, ply, len(v)) if "normal" not in raw else None
    if faces is not None and len(faces) and "coord" in raw:
        raw["normal"] = vertex_normals(raw["coord"], faces)
    return raw


def _typed_fields(path: Path, rec: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Fields of a record array by name, keeping integer colour dtypes (for their range)."""
    raw: dict[str, np.ndarray] = {}
    groups: dict[str, dict[int, str]] = {}
    for n in names:
        if n.lower() in _FIELDS:
            key, ch = _FIELDS[n.lower()]
            groups.setdefault(key, {})[ch] = n
    for key, chans in groups.items():
        if len(chans) == _WIDTH[key]:
            raw[key] = np.stack([np.asarray(rec[chans[i]]) for i in range(_WIDTH[key])], 1)
    return raw


_PCD_TYPES = {"F": "f", "U": "u", "I": "i"}


def _read_pcd(path: Path, columns: str | Sequence[str] | None) -> dict[str, np.ndarray]:
    """ASCII and binary PCD parsed here; binary_compressed (LZF) handed to Open3D."""
    header: dict[str, list[str]] = {}
    with open(path, "rb") as f:
        while "DATA" not in header:
            line = f.readline()
            if not line:
                raise PointFileError(f"{path}: the PCD header ends without a DATA line")
            text = line.decode("ascii", "replace").strip()
            if text and not text.startswith("#"):
                key, *vals = text.split()
                header[key.upper()] = vals
        offset = f.tell()
    try:
        names = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = [_PCD_TYPES[t.upper()] for t in header["TYPE"]]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
        n = int(header["POINTS"][0])
    except (KeyError, ValueError, IndexError) as err:
        raise PointFileError(f"{path}: incomplete PCD header ({err})") from err
    mode = header["DATA"][0].lower()
    uniq = [f"{nm}_{i}" if names.count(nm) > 1 else nm for i, nm in enumerate(names)]
    dtype = np.dtype(
        [(nm, f"<{t}{s}", (c,) if c > 1 else ()) for nm, t, s, c in
         zip(uniq, types, sizes, counts, strict=True)]
    )  # fmt: skip
    if mode == "binary":
        rec = np.fromfile(path, dtype=dtype, count=-1, offset=offset)
    elif mode == "ascii":
        flat = np.loadtxt(path, skiprows=_header_lines(path), ndmin=2, dtype=np.float64)
        rec = np.empty(len(flat), dtype=dtype)
        col = 0
        for nm, t, c in zip(uniq, types, counts, strict=True):
            vals = flat[:, col : col + c].reshape(rec[nm].shape)
            rec[nm] = vals if nm not in ("rgb", "rgba") or t != "f" else vals.astype(np.float32)
            col += c
    elif mode == "binary_compressed":
        return _read_pcd_open3d(path)
    else:
        raise PointFileError(f"{path}: unknown PCD DATA mode {mode!r}")
    if len(rec) != n:
        raise PointFileError(
            f"{path}: the header announces {n} points but the file holds {len(rec)}; "
            "the file is truncated: re-export it"
        )
    raw = _typed_fields(path, rec, uniq)
    packed = next((nm for nm in ("rgb", "rgba") if nm in uniq), None)
    if packed is not None:  # PCL packs 8-bit r, g, b into one 32-bit float or int
        v = np.ascontiguousarray(rec[packed]).view(np.uint32)
        raw["color"] = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], 1).astype(np.uint8)
    return raw


def _header_lines(path: Path) -> int:
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if line.upper().startswith(b"DATA"):
                return i + 1
    return 0


def _read_pcd_open3d(path: Path) -> dict[str, np.ndarray]:
    import open3d as o3d

    pcd = o3d.t.io.read_point_cloud(str(path))
    attrs = {k: pcd.point[k].numpy() for k in pcd.point}
    if "positions" not in attrs or len(attrs["positions"]) == 0:
        raise PointFileError(f"{path}: Open3D read no points from this compressed PCD")
    raw = {"coord": attrs["positions"]}
    for src, dst in (("colors", "color"), ("normals", "normal"), ("intensity", "strength"),
                     ("label", "segment")):  # fmt: skip
        if src in attrs:
            raw[dst] = attrs[src]
    return raw


PARSERS = {
    "ply": _read_ply,
    "pcd": _read_pcd,
    "text": _read_text,
    "npy": _read_npy,
    "npz": _read_npz,
    "kitti": _read_kitti,
}
