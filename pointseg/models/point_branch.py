"""What a caller needs to know of a network's point branch, without importing the network
(and spconv): the width of its extra inputs and whether a network has one."""

from __future__ import annotations

from typing import Any

POINT_EXTRA = 3  # the point branch's extra input columns: offset inside the voxel (x, y, z)


def has_point_branch(net: Any) -> bool:
    """Whether ``net`` labels points itself (``point_channels > 0``), not only voxels."""
    return int(getattr(net, "point_channels", 0) or 0) > 0
