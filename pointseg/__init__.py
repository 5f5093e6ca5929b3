"""pointseg: semantic segmentation of 3D point clouds with sparse U-Nets."""

__version__ = "0.1.0"
