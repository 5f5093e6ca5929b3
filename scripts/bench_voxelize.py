"""Voxelizer throughput: ``pointseg.data.voxelize`` against a plain numpy baseline.

The baseline is the textbook approach (``np.unique(grid, axis=0)`` plus ``np.add.at``
means), measured in the same run so the figure is a ratio, not a machine-specific time.

    python scripts/bench_voxelize.py --points 10000000 --voxel-size 0.05
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pointseg.data.voxelize import voxelize


def baseline(coord: np.ndarray, feat: np.ndarray, voxel_size: float) -> int:
    grid = np.floor((coord - coord.min(0)) / voxel_size).astype(np.int64)
    uniq, inverse, counts = np.unique(grid, axis=0, return_inverse=True, return_counts=True)
    means = np.zeros((len(uniq), feat.shape[1]))
    np.add.at(means, inverse.reshape(-1), feat)
    means /= counts[:, None]
    return len(uniq)


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--voxel-size", type=float, default=0.05)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--baseline-points",
        type=int,
        default=2_000_000,
        help="the baseline is slow; it runs on this many points",
    )
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    # a 20 m x 20 m x 3 m scene: many points share voxels, like a dense indoor scan
    coord = rng.uniform([0, 0, 0], [20, 20, 3], (args.points, 3)).astype(np.float32)
    feat = rng.uniform(0, 1, (args.points, 3)).astype(np.float32)
    nb = min(args.baseline_points, args.points)

    ours_full = timed(lambda: voxelize(coord, feat, voxel_size=args.voxel_size), args.repeat)
    ours_b = timed(lambda: voxelize(coord[:nb], feat[:nb], voxel_size=args.voxel_size), args.repeat)
    base_b = timed(lambda: baseline(coord[:nb], feat[:nb], args.voxel_size), 1)
    out = {
        "points": args.points,
        "voxelize_s": round(ours_full, 3),
        "voxelize_mpts_per_s": round(args.points / ours_full / 1e6, 2),
        "baseline_points": nb,
        "speedup_vs_numpy_unique": round(base_b / ours_b, 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
