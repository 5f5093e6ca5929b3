"""Point-cloud files in and out: PLY, PCD, XYZ/TXT/CSV, NPY/NPZ, LAS/LAZ and KITTI ``.bin``.

``formats`` holds format detection and the error types, ``read`` the readers, ``write`` the
writers; their public names are re-exported here.
"""

from pointseg.io.formats import (
    FORMATS,
    MissingFeatureError,
    PointFileError,
    detect_format,
    sniff_format,
)
from pointseg.io.read import RECENTER_ABOVE, Sample, check_features, read_points
from pointseg.io.write import (
    atomic_path,
    label_dtype,
    read_ply_classes,
    unlabelled,
    write_labeled_ply,
    write_las_classification,
    write_npy,
)

__all__ = [
    "FORMATS",
    "RECENTER_ABOVE",
    "MissingFeatureError",
    "PointFileError",
    "Sample",
    "atomic_path",
    "check_features",
    "detect_format",
    "label_dtype",
    "read_ply_classes",
    "read_points",
    "sniff_format",
    "unlabelled",
    "write_labeled_ply",
    "write_las_classification",
    "write_npy",
]
