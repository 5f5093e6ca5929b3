"""A classical ground rule on a LAS tile split at its median x, to compare with a network.

    python scripts/las_split_benchmark.py ../shared/data/4_6_crop.las

Rule: a point is ground when its height above the lowest point within ``radius`` (found on
a grid of ``cell``) is below ``threshold``. The three parameters are tuned on the west half
(x < median x, the training half of ``split_by=x_median``) and the rule is then scored on
the east half, point by point, with the same two classes as ``class_map=ground_other``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from pointseg.io import read_points
from pointseg.io.hag import height_above_local_min
from pointseg.io.las import load_class_map


def miou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present, ignoring targets of -1."""
    keep = target >= 0
    p, t = pred[keep], target[keep]
    ious = []
    for c in range(num_classes):
        union = np.sum((p == c) | (t == c))
        if union:
            ious.append(np.sum((p == c) & (t == c)) / union)
    return float(np.mean(ious))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("tile", type=Path)
    ap.add_argument("--cells", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    ap.add_argument("--radii", type=float, nargs="+", default=[5.0, 10.0, 15.0, 20.0, 30.0])
    args = ap.parse_args(argv)

    tile = read_points(args.tile, format="las")  # coord: (N, 3) f32 relative to an origin
    xyz = tile["coord"]
    cmap = load_class_map("ground_other")
    ground, other = cmap.names.index("ground"), cmap.names.index("other")
    target = cmap.apply(tile["classification"], source=str(args.tile))  # (N,)
    west = xyz[:, 0] < np.median(xyz[:, 0])
    east = ~west
    thresholds = np.round(np.arange(0.1, 6.01, 0.1), 2)

    results = []  # (cell, radius, threshold, whole, west, east)
    for cell, radius in itertools.product(args.cells, args.radii):
        hag = height_above_local_min(xyz, cell=cell, radii=[radius])[:, 0]
        for thr in thresholds:
            pred = np.where(hag < thr, ground, other)
            scores = [miou(pred[m], target[m], 2) for m in (slice(None), west, east)]
            results.append((cell, radius, float(thr), *scores))
    arr = np.array(results)
    tuned = arr[np.argmax(arr[:, 4])]
    best_whole = arr[np.argmax(arr[:, 3])]
    print(f"{args.tile.name}: {len(target)} points, west {west.sum()}, east {east.sum()}")
    print(
        f"tuned on the west half: cell={tuned[0]:g} radius={tuned[1]:g} threshold={tuned[2]:g}"
        f" -> west mIoU {tuned[4]:.4f}, east (test) mIoU {tuned[5]:.4f}"
    )
    print(
        f"best on the whole tile (tuned on it, for reference): cell={best_whole[0]:g} "
        f"radius={best_whole[1]:g} threshold={best_whole[2]:g} -> whole mIoU {best_whole[3]:.4f}"
        f", east mIoU {best_whole[5]:.4f}"
    )


if __name__ == "__main__":
    main()
