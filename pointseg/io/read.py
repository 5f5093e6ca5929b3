"""Readers: ``read_points``, ``check_features`` and one parser per format.

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

from pointseg import FEATURE_WIDTHS
from pointseg.io.formats import (
    FORMATS,
    MissingFeatureError,
    PointFileError,
    detect_format,
    sniff_format,
)

log = logging.getLogger("pointseg.io")  # the package's logger: log lines keep its name

Sample = dict[str, Any]
RECENTER_ABOVE = 1.0e4  # float32 spacing at 1e4 is ~1 mm: beyond it, subtract an origin
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
) -> Sample:
    """Read one file into a sample dict; ``require`` names features that must be present
    (checked before the points are read where the format allows it; ``feat_keys``, the model's
    whole list, makes the error's fix exact). ``las``: for LAS/LAZ files, the keyword options
    of ``pointseg.io.las.las_features`` (the ones a model was trained with, stored in its
    checkpoint); with them every LAS feature is computed exactly as ``pointseg-prepare las``
    computed it, without them just colour, intensity and returns are read. ``only``: keep
    just these keys (besides ``coord`` and ``origin``), which saves memory on big files.
    ``nonfinite``: ``"error"`` refuses points with NaN/Inf coordinates, ``"drop"`` leaves them
    out with a warning that counts them and adds ``kept (N,) bool`` (the file's rows that
    were kept) when any were."""
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
        sample = _read_las(
            path, require=require, chunk_size=chunk_size, las=las, feat_keys=feat_keys, only=only
        )
    else:
        try:
            sample = _READERS[fmt](path, columns)
        except PointFileError:
            raise
        except Exception as err:  # parsers raise their own types: name the file once
            raise PointFileError(
                f"cannot read {path} as {fmt}: {err}; the file is damaged or truncated "
                f"(re-export it), or not {fmt} (pass format=... if the extension is wrong)"
            ) from err
        sample = _finish(path, sample, nonfinite=nonfinite)
    check_features(path, sample, require, feat_keys=feat_keys)
    if only is not None:
        sample = {k: v for k, v in sample.items() if k in {"coord", "origin", "kept", *only}}
    return sample


def check_features(
    path: str | Path, sample: Sample, require: Sequence[str], *, feat_keys: Sequence[str] = ()
) -> None:
    """Raise ``MissingFeatureError`` naming the file, the feature and the fix."""
    for key in require:
        if key in sample:
            continue
        have = sorted(k for k in sample if k not in ("origin", "kept", "las_header"))
        rest = [k for k in feat_keys if k != key]
        width = sum(_FEAT_WIDTH.get(k, 1) for k in rest)
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


_FEAT_WIDTH = FEATURE_WIDTHS
_HOW = {
    "color": "colours (PLY red/green/blue, LAS point format 2/3/5/7/8, or text/npy "
    "columns=x,y,z,r,g,b)",
    "strength": "intensity (PLY/PCD 'intensity', LAS, KITTI .bin, or columns=x,y,z,intensity)",
    "normal": "normals (nx, ny, nz)",
    "returns": "return numbers (LAS/LAZ)",
}


def _finish(path: Path, raw: dict[str, np.ndarray], *, nonfinite: str = "error") -> Sample:
    """Typed, validated sample from float64 columns; coordinates re-centred if needed.
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


def _read_text(path: Path, columns: str | Sequence[str] | None) -> dict[str, np.ndarray]:
    with open(path) as f:
        first = ""
        for line in f:
            if line.strip() and not line.lstrip().startswith(("#", "//")):
                first = line
                break
    if not first:
        raise PointFileError(f"{path}: no data lines")
    delim = "," if "," in first else None
    tokens = [t.strip() for t in (first.split(",") if delim else first.split())]
    header = not all(_is_number(t) for t in tokens)
    try:
        table = np.loadtxt(path, delimiter=delim, comments=("#", "//"), ndmin=2,
                           skiprows=1 if header else 0, dtype=np.float64)  # fmt: skip
    except ValueError as err:
        raise PointFileError(
            f"{path}: not a numeric table ({err}); every row needs the same number of "
            "numeric columns (one optional header line of names)"
        ) from err
    if columns is None and header:
        names = [t.lower() for t in tokens]
        if not {"x", "y", "z"} <= set(names):
            raise PointFileError(f"{path}: header {tokens} has no x, y, z; pass columns=...")
        names = [n if n in _FIELDS else "_" for n in names]
    elif columns is None:
        names = _default_columns(path, table.shape[1], "the table")
    else:
        names = _parse_columns(path, columns, table.shape[1])
    return _from_table(path, table, names)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


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


def _read_las(
    path: Path,
    *,
    require: Sequence[str],
    chunk_size: int,
    las: Mapping[str, Any] | None,
    feat_keys: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> Sample:
    """Stream a LAS/LAZ file in chunks into small per-point arrays (never the whole record);
    the features come from ``pointseg.io.las``, the one home of every LAS feature."""
    import laspy

    from pointseg.io.las import LasTile, las_features, unit_scale

    try:
        reader = laspy.open(path)
    except Exception as err:
        raise PointFileError(
            f"cannot read {path}: {err}; the file is truncated (re-export it) or not a LAS/LAZ file"
        ) from err
    with reader:
        hdr = reader.header
        dims = set(hdr.point_format.dimension_names)
        has_rgb = {"red", "green", "blue"} <= dims
        if las is None:  # the features a generic model can take from any LAS file
            provides = {"coord", "strength", "returns", "classification"}
            check_features(path, dict.fromkeys(provides | ({"color"} if has_rgb else set())),
                           require, feat_keys=feat_keys)  # fmt: skip
        n = int(hdr.point_count)
        if n == 0:
            raise PointFileError(f"{path} holds no points (its header says 0); nothing to read")
        want = {"color", "strength", "returns", "classification"}
        if only is not None and las is None:
            want = {*only, *require}
        coord = np.empty((n, 3), np.float32)
        rgb = np.empty((n, 3), np.uint16) if has_rgb and "color" in want else None
        inten = np.empty(n, np.uint16) if "strength" in want or las is not None else None
        cls = np.empty(n, np.uint8) if "classification" in want else None
        returns = np.empty((n, 2), np.uint8) if "returns" in want or las is not None else None
        origin, i = None, 0
        try:
            for chunk in reader.chunk_iterator(chunk_size):
                j = i + len(chunk)
                if j > n:
                    raise PointFileError(f"{path}: more points than its header's {n}")
                xyz = np.stack([np.asarray(chunk.x), np.asarray(chunk.y), np.asarray(chunk.z)], 1)
                if origin is None:  # from the header's minimum, as pointseg-prepare las does
                    origin = las_origin(hdr.mins, hdr.maxs, xyz)
                coord[i:j] = xyz - origin  # float64 subtraction, then float32
                if rgb is not None:
                    rgb[i:j] = np.stack([chunk.red, chunk.green, chunk.blue], 1)
                if inten is not None:
                    inten[i:j] = chunk.intensity
                if cls is not None:
                    cls[i:j] = chunk.classification
                if returns is not None:
                    returns[i:j, 0] = chunk.return_number
                    returns[i:j, 1] = chunk.number_of_returns
                i = j
        except PointFileError:
            raise
        except Exception as err:
            raise PointFileError(
                f"cannot read {path} after {i} of {n} points: {err}; the file is truncated or "
                "damaged (re-export it)"
            ) from err
    if i != n or origin is None:
        raise PointFileError(
            f"{path} is truncated: its header announces {n} points but it holds {i}"
        )
    bad = ~np.isfinite(coord).all(1)
    if bad.any():
        raise PointFileError(f"{path}: {int(bad.sum())} point(s) have non-finite coordinates")
    out: Sample = {"coord": coord, "origin": origin, "las_header": _las_header(hdr)}
    if cls is not None:
        out["classification"] = cls
    if las is not None:  # the model's LAS features, made as the preparer made them
        tile = LasTile(
            path=path, xyz=coord, classification=cls if cls is not None else np.zeros(0, np.uint8),
            intensity=inten, returns=returns, rgb=rgb, header={"point_format": hdr.point_format.id},
        )  # fmt: skip
        try:
            arrays, _ = las_features(tile, **dict(las))
        except (TypeError, ValueError) as err:
            raise PointFileError(f"{path}: cannot compute the model's LAS features: {err}") from err
        out.update(arrays)
        return out
    if returns is not None:
        out["returns"] = returns.astype(np.float32)
    if rgb is not None and not rgb.any():  # RGB fields present but never filled in
        if "color" in require:
            try:
                check_features(path, {"coord": coord}, ["color"], feat_keys=feat_keys)
            except MissingFeatureError as err:
                raise MissingFeatureError(f"{err} (its RGB fields are all 0: no colour)") from None
        log.info("%s: RGB fields are all 0 (no colour recorded): colour left out", path)
        rgb = None
    if rgb is not None:
        out["color"] = (rgb / unit_scale(rgb)).astype(np.float32)
        del rgb
    if inten is not None:
        out["strength"] = (inten / unit_scale(inten)).astype(np.float32)[:, None]
    return out


def _las_header(hdr: Any) -> dict[str, Any]:
    """The header fields a scene's ``meta.json`` records (plain JSON)."""
    wkt = None
    for vlr in hdr.vlrs:  # a WKT VLR if present (GeoTIFF keys would need pyproj)
        if type(vlr).__name__ == "WktCoordinateSystemVlr":
            wkt = str(vlr.string).strip("\x00") or None
    return {
        "version": str(hdr.version),
        "point_format": int(hdr.point_format.id),
        "point_count": int(hdr.point_count),
        "scales": [float(s) for s in hdr.scales],
        "offsets": [float(o) for o in hdr.offsets],
        "crs_wkt": wkt,
    }


def las_origin(lo: Sequence[float], hi: Sequence[float], first: np.ndarray) -> np.ndarray:
    """(3,) float64 offset subtracted from a LAS tile's coordinates before the float32 cast:
    the floor of the header's minimum when the tile is georeferenced (the header's bounds
    can be stale, so the first points read must lie within 1e4 units of it), else 0."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if max(np.abs(lo).max(), np.abs(hi).max(), np.abs(first).max()) <= RECENTER_ABOVE:
        return np.zeros(3)
    origin = np.floor(lo)
    if np.abs(first - origin).max() > RECENTER_ABOVE:  # stale header: the data decide
        origin = np.floor(first.min(0))
    return origin


_READERS = {
    "ply": _read_ply,
    "pcd": _read_pcd,
    "text": _read_text,
    "npy": _read_npy,
    "npz": _read_npz,
    "kitti": _read_kitti,
}
