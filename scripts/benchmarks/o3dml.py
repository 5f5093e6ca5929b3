"""The reference plan (``model=o3dml_plan``): pointseg's sparse backend against spconv's CPU
path as shipped, on the same network and rooms, in interleaved rounds."""

from __future__ import annotations

from typing import Any

import torch

from .core import Context, Section, log, median_ratio, room_batch, timed, train_step_fn


def backends_step(room_size: tuple[float, float], repeat: int) -> dict[str, Any]:
    from pointseg.models.o3dml_plan import O3DMLPlanUNet
    from pointseg.sparse import use_backend

    feat, idx, points = room_batch(4, 0.05, room_size=room_size, channels=3)
    torch.manual_seed(0)
    net = O3DMLPlanUNet(3, 5)
    step = train_step_fn(net, feat, idx, 4, 5)
    log(f"o3dml_plan: {points:,} points, {len(idx):,} voxels")
    backends = {"pointseg": "pointseg", "spconv_shipped": "spconv"}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for backend in backends.values():
        with use_backend(backend):
            step()  # warm-up
    for _ in range(repeat):  # interleaved, so both see the same machine load
        for name, backend in backends.items():
            with use_backend(backend):
                times[name].append(timed(step, 1, warmup=0)[0])
    ours, plain = min(times["pointseg"]), min(times["spconv_shipped"])
    return {
        "points": points,
        "voxels": len(idx),
        "parameters": net.num_parameters(),
        "pointseg_step_s": round(ours, 3),
        "spconv_shipped_step_s": round(plain, 3),
        "speedup_vs_spconv_shipped": round(plain / ours, 2),
        "median_round_speedup": round(median_ratio(times["pointseg"], times["spconv_shipped"]), 2),
        "all_times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "target_step_s": 1.0,
    }


class O3DML(Section):
    name = "o3dml"
    summary = (
        'training step of model=o3dml_plan on 4 synthetic rooms at 5 cm: the "pointseg" sparse '
        'backend against the "spconv" backend (spconv\'s CPU path as shipped)'
    )

    def run(self, ctx: Context) -> dict[str, Any]:
        return backends_step((2.8, 5.6), 3 if ctx.quick else 8)

    def markdown(self, res: dict[str, Any]) -> list[str]:
        o = res
        return [
            "## Training step: reference plan (model=o3dml_plan, 4 rooms at 5 cm)",
            "",
            "| points | voxels | pointseg (best) | spconv as shipped (best) | ratio of bests | "
            "median ratio per round | target |",
            "|---|---|---|---|---|---|---|",
            f"| {o['points']:,} | {o['voxels']:,} | {o['pointseg_step_s']} s | "
            f"{o['spconv_shipped_step_s']} s | {o['speedup_vs_spconv_shipped']}x | "
            f"{o['median_round_speedup']}x | <= {o['target_step_s']} s |",
            "",
        ]
