"""Point-cloud files in and out: PLY, PCD, XYZ/TXT/CSV, NPY/NPZ, LAS/LAZ and KITTI ``.bin``.

``formats`` holds format detection, the error types and the feature check, ``read`` the
readers, ``write`` the writers, ``las_file`` the one LAS/LAZ/COPC reader and writer; their
public names are re-exported here.
"""

from pointseg.io.formats import (
    FORMATS,
    RECENTER_ABOVE,
    MissingFeatureError,
    PointFileError,
    check_features,
    detect_format,
    sniff_format,
)
from pointseg.io.las_file import write_las_classification
from pointseg.io.read import Sample, read_points
from pointseg.io.write import (
    atomic_path,
    label_dtype,
    read_ply_classes,
    unlabelled,
    write_labeled_ply,
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
