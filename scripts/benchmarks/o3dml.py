"""The reference plan (``model=o3dml_plan``): pointseg's sparse backend against spconv's CPU
path as shipped, on the same network and rooms, in interleaved rounds.

Three variants of one network: ``pointseg`` (its backend and its thread-invariant
``BatchNorm1d``, the default), ``pointseg_torch_bn`` (its backend with torch's batch norm,
whose sums depend on the thread count) and ``spconv_shipped`` (spconv's CPU path and torch's
batch norm). MKL's strict reproducible mode (``MKL_CBWR``) is process-wide and applies to all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .core import Context, Section, log, median_ratio, room_batch, timed, train_step_fn


@contextlib.contextmanager
def torch_batch_norm(net: nn.Module, on: bool) -> Iterator[None]:
    """Runs ``net``'s pointseg ``BatchNorm1d`` layers as torch's ``nn.BatchNorm1d`` (same state)."""
    from pointseg.models.blocks import BatchNorm1d

    layers = [m for m in net.modules() if isinstance(m, BatchNorm1d)] if on else []
    for m in layers:
        m.__class__ = nn.BatchNorm1d
    try:
        yield
    finally:
        for m in layers:
            m.__class__ = BatchNorm1d


def backends_step(room_size: tuple[float, float], repeat: int) -> dict[str, Any]:
    from pointseg.models.o3dml_plan import O3DMLPlanUNet
    from pointseg.sparse import use_backend

    feat, idx, points = room_batch(4, 0.05, room_size=room_size, channels=3)
    torch.manual_seed(0)
    net = O3DMLPlanUNet(3, 5)
    step = train_step_fn(net, feat, idx, 4, 5)
    log(f"o3dml_plan: {points:,} points, {len(idx):,} voxels")
    # name: (backend, torch's batch norm)
    variants = {
        "pointseg": ("pointseg", False),
        "pointseg_torch_bn": ("pointseg", True),
        "spconv_shipped": ("spconv", True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for backend, torch_bn in variants.values():
        with use_backend(backend), torch_batch_norm(net, torch_bn):
            step()  # warm-up
    for _ in range(repeat):  # interleaved, so all see the same machine load
        for name, (backend, torch_bn) in variants.items():
            with use_backend(backend), torch_batch_norm(net, torch_bn):
                times[name].append(timed(step, 1, warmup=0)[0])
    ours, plain = min(times["pointseg"]), min(times["spconv_shipped"])
    variant = min(times["pointseg_torch_bn"])
    return {
        "points": points,
        "voxels": len(idx),
        "parameters": net.num_parameters(),
        "pointseg_step_s": round(ours, 3),
        "spconv_shipped_step_s": round(plain, 3),
        "speedup_vs_spconv_shipped": round(plain / ours, 2),
        "median_round_speedup": round(median_ratio(times["pointseg"], times["spconv_shipped"]), 2),
        "pointseg_torch_bn_step_s": round(variant, 3),
        "torch_bn_speedup_vs_spconv_shipped": round(plain / variant, 2),
        "torch_bn_median_round_speedup": round(
            median_ratio(times["pointseg_torch_bn"], times["spconv_shipped"]), 2
        ),
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
            f"{o['points']:,} points, {o['voxels']:,} voxels; spconv as shipped (best): "
            f"{o['spconv_shipped_step_s']} s; target <= {o['target_step_s']} s.",
            "",
            "| pointseg variant | step (best) | ratio of bests | median ratio per round |",
            "|---|---|---|---|",
            f"| thread-invariant (its BatchNorm1d; the default) | {o['pointseg_step_s']} s | "
            f"{o['speedup_vs_spconv_shipped']}x | {o['median_round_speedup']}x |",
            f"| torch's batch norm (not thread-invariant) | {o['pointseg_torch_bn_step_s']} s | "
            f"{o['torch_bn_speedup_vs_spconv_shipped']}x | "
            f"{o['torch_bn_median_round_speedup']}x |",
            "",
        ]
