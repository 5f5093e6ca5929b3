"""Step time of ``spunet_small`` against voxel count, with a log-log fit and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import Context, Section, log, room_batch, save_figure, timed, train_step_fn


def loglog_fit(rows: list[dict[str, Any]]) -> tuple[float, float]:
    v = np.log([r["voxels"] for r in rows])
    t = np.log([r["step_s"] for r in rows])
    slope, intercept = np.polyfit(v, t, 1)
    return round(float(slope), 3), round(float(intercept), 3)


def step_time(n_rooms: int, vs: float) -> dict[str, Any]:
    from pointseg.models.sparse_unet import spunet_small

    feat, idx, _ = room_batch(n_rooms, vs)
    torch.manual_seed(0)
    net = spunet_small(4, 9)
    log(f"scaling: {n_rooms} rooms at {vs} m, {len(idx):,} voxels")
    fn = train_step_fn(net, feat, idx, n_rooms, 9)
    best, _ = timed(fn, 3 if len(idx) < 300_000 else 2)
    return {"rooms": n_rooms, "voxel_size": vs, "voxels": len(idx), "step_s": round(best, 4)}


def scaling(
    voxel_sizes: list[float], rooms: int, room_counts: list[int] = (), room_voxel: float = 0.05
) -> dict[str, Any]:
    """Two sweeps: the same ``rooms`` at finer and finer voxels (the density per voxel changes
    too), and more and more rooms at ``room_voxel`` (the same kind of scene, only bigger)."""
    rows = [step_time(rooms, vs) for vs in voxel_sizes]
    slope, intercept = loglog_fit(rows)
    out: dict[str, Any] = {"rooms": rooms, "rows": rows, "slope": slope, "intercept": intercept}
    if room_counts:
        by_rooms = [step_time(k, room_voxel) for k in room_counts]
        r_slope, r_intercept = loglog_fit(by_rooms)
        out["by_rooms"] = {"rows": by_rooms, "slope": r_slope, "intercept": r_intercept}
    return out


class Scaling(Section):
    name = "scaling"
    summary = "step time against voxel count (10 k to 1 M voxels), log-log fit and plot"

    def run(self, ctx: Context) -> dict[str, Any]:
        q = ctx.quick
        sizes = [0.4, 0.2, 0.1, 0.05] if q else [0.4, 0.2, 0.1, 0.07, 0.05, 0.035, 0.025]
        return scaling(sizes, 4 if q else 8, [1, 2, 4] if q else [1, 2, 4, 8, 16])

    def markdown(self, res: dict[str, Any]) -> list[str]:
        s = res
        lines = [
            "## Scaling: step time vs voxels (spunet_small)",
            "",
            "| voxel size | voxels | step |",
            "|---|---|---|",
            *[f"| {r['voxel_size']} m | {r['voxels']:,} | {r['step_s']} s |" for r in s["rows"]],
            "",
            f"log-log slope: **{s['slope']}** (1.0 = linear)",
            "",
        ]
        if "by_rooms" in s:
            r = s["by_rooms"]
            lines += [
                "| rooms at 5 cm | voxels | step |",
                "|---|---|---|",
                *[f"| {x['rooms']} | {x['voxels']:,} | {x['step_s']} s |" for x in r["rows"]],
                "",
                f"log-log slope, more rooms: **{r['slope']}**",
                "",
            ]
        return lines

    def plots(self, res: dict[str, Any], out: Path) -> list[str]:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        sweeps = [("finer voxels", res)]
        if "by_rooms" in res:
            sweeps.append(("more rooms at 5 cm", res["by_rooms"]))
        for (name, sweep), color in zip(sweeps, ("C0", "C1"), strict=False):
            v = np.array([r["voxels"] for r in sweep["rows"]])
            t = np.array([r["step_s"] for r in sweep["rows"]])
            s, c = sweep["slope"], sweep["intercept"]
            ax.loglog(v, t, "o-", color=color, label=f"{name} (slope {s:.2f})")
            ax.loglog(v, np.exp(c) * v**s, "--", color=color, alpha=0.5)
        v0 = np.array([r["voxels"] for r in res["rows"]])
        t0 = res["rows"][0]["step_s"]
        ax.loglog(v0, t0 * v0 / v0[0], ":", color="gray", label="linear")
        ax.set_xlabel("voxels per step")
        ax.set_ylabel("training step (s)")
        ax.set_title("Step time vs voxel count (spunet_small, CPU)")
        ax.legend()
        return [save_figure(fig, out, "scaling.png")]
