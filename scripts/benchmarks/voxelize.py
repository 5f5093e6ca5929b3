"""Voxelizer throughput (with the inverse map and mean features) against numpy, spconv's
PointToVoxel and Open3D's voxel_down_sample, in interleaved rounds."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointseg.data.voxelize import voxelize

from .core import Context, Section, log, median_ratio, save_figure, timed

PEERS = ("numpy", "spconv", "open3d")


def numpy_voxelize(coord: np.ndarray, feat: np.ndarray, vs: float) -> int:
    """The textbook numpy voxelizer: ravelled key, np.unique with inverse, bincount means."""
    grid = np.floor((coord - coord.min(0)) / vs).astype(np.int64)
    dims = grid.max(0) + 1
    key = (grid[:, 0] * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    means = np.stack(
        [np.bincount(inverse, feat[:, j], len(counts)) for j in range(feat.shape[1])], 1
    )
    return len(means / counts[:, None])


def spconv_voxelize(coord: np.ndarray, feat: np.ndarray, vs: float, max_pts: int) -> int:
    """spconv's PointToVoxel with the point-to-voxel id, means from its voxel buffers."""
    from spconv.pytorch.utils import PointToVoxel

    pts = torch.from_numpy(np.concatenate([coord, feat], 1))
    lo, hi = coord.min(0), coord.max(0) + vs
    gen = PointToVoxel(
        vsize_xyz=[vs] * 3,
        coors_range_xyz=[*lo.tolist(), *hi.tolist()],
        num_point_features=pts.shape[1],
        max_num_voxels=len(pts),
        max_num_points_per_voxel=max_pts,
    )
    voxels, _, num, _ = gen.generate_voxel_with_id(pts, empty_mean=False)
    means = voxels[:, :, 3:].sum(1) / num[:, None]
    return len(means)


def open3d_voxelize(coord: np.ndarray, feat: np.ndarray, vs: float) -> int | None:
    try:
        import open3d as o3d
    except ImportError:
        return None
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord.astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(feat.astype(np.float64))
    return len(pcd.voxel_down_sample(vs).points)  # means only: no inverse map


def voxelize_row(n: int, vs: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    # a 20 m x 20 m x 3 m block, 3 features (colour): ~1 point per voxel at 10 M points
    coord = rng.uniform([0, 0, 0], [20, 20, 3], (n, 3)).astype(np.float32)
    feat = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    ref = voxelize(coord, feat, voxel_size=vs)
    max_pts = int(ref.counts.max())  # spconv keeps every point only with this many slots
    rounds = 5
    row: dict[str, Any] = {"points": n, "voxels": len(ref.counts)}
    runs = {
        "pointseg": lambda: voxelize(coord, feat, voxel_size=vs),
        "numpy": lambda: numpy_voxelize(coord, feat, vs),
        "spconv": lambda: spconv_voxelize(coord, feat, vs, max_pts),
        "open3d": lambda: open3d_voxelize(coord, feat, vs),
    }
    if open3d_voxelize(coord[:1000], feat[:1000], vs) is None:
        del runs["open3d"]
    times: dict[str, list[float]] = {name: [] for name in runs}
    log(f"voxelize {n:,} points: {', '.join(runs)}, {rounds} interleaved rounds")
    for r in range(rounds):  # interleaved, so every method sees the same machine load
        for name, fn in runs.items():
            if name == "open3d" and r >= 2:  # 20-40x slower than the others: two runs
                continue
            warm = 1 if r == 0 and name != "open3d" else 0
            times[name].append(timed(fn, 1, warmup=warm)[0])
    for name, ts in times.items():
        row[f"{name}_s"] = round(min(ts), 4)
        row[f"{name}_mpts"] = round(n / min(ts) / 1e6, 2)
    peers = [k for k in PEERS if f"{k}_mpts" in row]
    fastest = max(peers, key=lambda k: row[f"{k}_mpts"])
    row["speedup_vs_fastest_peer"] = round(row["pointseg_mpts"] / row[f"{fastest}_mpts"], 2)
    rounds_run = len(times[fastest])
    row["median_round_speedup"] = round(
        median_ratio(times["pointseg"][:rounds_run], times[fastest]), 2
    )
    row["all_times_s"] = {k: [round(t, 4) for t in v] for k, v in times.items()}
    return row


class Voxelize(Section):
    name = "voxelize"
    summary = (
        "voxelizer throughput (Mpts/s, with the inverse map and mean features) against numpy "
        "(ravelled key + np.unique), spconv's PointToVoxel and Open3D's voxel_down_sample"
    )

    def __init__(self, voxel_size: float = 0.05) -> None:
        self.voxel_size = voxel_size

    def run(self, ctx: Context) -> dict[str, Any]:
        rows = []
        for n in [1_000_000, 2_000_000] if ctx.quick else [1_000_000, 10_000_000]:
            rows.append(voxelize_row(n, self.voxel_size))
            gc.collect()
        return {"voxel_size": self.voxel_size, "rows": rows}

    def markdown(self, res: dict[str, Any]) -> list[str]:
        lines = [
            "## Voxelizer (Mpts/s, inverse map + mean features)",
            "",
            "| points | voxels | pointseg | spconv PointToVoxel | numpy unique | Open3D | "
            "pointseg / fastest peer | median per-round ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['points']:,} | {r['voxels']:,} | {r['pointseg_mpts']} | "
                f"{r.get('spconv_mpts', '-')} | {r.get('numpy_mpts', '-')} | "
                f"{r.get('open3d_mpts', '-')} | {r['speedup_vs_fastest_peer']}x | "
                f"{r.get('median_round_speedup', '-')}x |"
            )
        return [*lines, ""]

    def plots(self, res: dict[str, Any], out: Path) -> list[str]:
        import matplotlib.pyplot as plt

        rows = res["rows"]
        names = [k for k in ("pointseg", "spconv", "numpy", "open3d") if f"{k}_mpts" in rows[0]]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            xs = np.arange(len(names)) + i * width
            ax.bar(xs, [r[f"{k}_mpts"] for k in names], width, label=f"{r['points'] / 1e6:g} M pts")
        ax.set_xticks(np.arange(len(names)) + width * (len(rows) - 1) / 2, names)
        ax.set_ylabel("Mpoints / s (higher is better)")
        ax.set_title("Voxelizer throughput (inverse map + mean features)")
        ax.legend()
        return [save_figure(fig, out, "voxelize.png")]
