"""Triangle meshes as point clouds: area-weighted vertex normals from the faces.

A mesh PLY (ScanNet's ``_vh_clean_2.ply``, a photogrammetry export) carries no per-vertex
normals; ``pointseg.io.read_points`` makes them here from its faces, the same way for
``pointseg-prepare scannet`` as for ``pointseg-predict`` on the raw mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pointseg.io.formats import PointFileError


def face_indices(path: Path, ply: Any, num_vertices: int) -> np.ndarray | None:
    """``(F, 3) int64`` triangles of a PLY's ``face`` element, or None without one."""
    if "face" not in ply:
        return None
    face = ply["face"].data
    name = next((n for n in ("vertex_indices", "vertex_index") if n in face.dtype.names), None)
    if name is None:
        raise PointFileError(f"{path}: its 'face' element has no vertex_indices list")
    faces = face[name]  # (F, 3), or (F,) of arrays from an ASCII file
    if faces.dtype == object:
        if len(faces) and any(len(f) != 3 for f in faces):
            raise PointFileError(f"{path}: only triangle meshes are read (a face is no triangle)")
        faces = np.stack(faces) if len(faces) else np.zeros((0, 3))
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) and (faces.min() < 0 or faces.max() >= num_vertices):
        raise PointFileError(f"{path}: a face refers to a vertex that does not exist")
    return faces


def vertex_normals(coord: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals ``(N, 3) f32``; (0, 0, 0) for a vertex in no face."""
    v = coord.astype(np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    face_normal = np.cross(b - a, c - a)  # (F, 3), length = 2 * area: the sum is area-weighted
    normal = np.zeros_like(v)
    for corner in range(3):
        for axis in range(3):
            normal[:, axis] += np.bincount(
                faces[:, corner], weights=face_normal[:, axis], minlength=len(v)
            )
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    return np.divide(normal, length, out=np.zeros_like(normal), where=length > 0).astype(np.float32)
