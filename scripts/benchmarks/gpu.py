"""spunet34c training steps on CUDA in fp32, TF32, AMP fp16 and bf16 autocast (skipped without
a GPU): ScanNet-sized rooms at 2 cm, and rooms near the size of spconv's published figures."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .core import Context, Section, log, room_batch
from .gpu_step import (
    GPU_MODES,
    GPUStep,
    amp_agreement,
    profile_step,
    random_labels,
    train_steps,
    unseen_scene_steps,
)

CLASSES = 20  # ScanNet's benchmark classes
PLANS = {
    "scannet_2cm": dict(room_size=(7.0, 7.0), density=3000.0),
    "spconv_ref_120k": dict(room_size=(7.0, 7.0), density=1600.0),
}


def cuda_rooms(plan: dict[str, Any], seeds) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list]:
    scenes, points = [], []
    for seed in seeds:
        f, i, p = room_batch(1, 0.02, seed=seed, channels=4, **plan)
        scenes.append((f.cuda(), i.cuda()))
        points.append(p)
    return scenes, points


def fresh_net() -> torch.nn.Module:
    from pointseg.models.sparse_unet import spunet34c

    torch.manual_seed(0)
    return spunet34c(4, CLASSES).cuda()


def plan_row(name: str, plan: dict[str, Any], steps: int, modes: list[str], out) -> dict:
    # four different rooms of the same plan, so spconv's per-shape kernel tuning and the
    # rulebooks are exercised the way a real epoch does, not cached for one shape
    scenes, points = cuda_rooms(plan, range(4))
    net = fresh_net()
    row: dict[str, Any] = {
        "points": int(np.mean(points)),
        "voxels": [len(i) for _, i in scenes],
        "parameters": net.num_parameters(),
        "amp_agreement": amp_agreement(net, *scenes[0]),
    }
    for mode in modes:
        log(f"gpu: {name} ({np.mean(row['voxels']):,.0f} voxels), {mode}")
        net = fresh_net()
        try:
            row[mode] = train_steps(net, scenes, mode, steps)
        except Exception as err:  # noqa: BLE001 - a mode spconv lacks is reported, not fatal
            row[mode] = {"error": f"{type(err).__name__}: {err}"[:300]}
        del net
        torch.cuda.empty_cache()
    fp32 = row.get("fp32", {}).get("step_ms")
    for mode in modes:
        ms = row[mode].get("step_ms")
        if fp32 and ms:
            row[mode]["speedup_vs_fp32"] = round(fp32 / ms, 2)
    if name == "scannet_2cm" and "fp16" in modes:
        net = fresh_net()
        fresh, _ = cuda_rooms(plan, (4, 5, 6))
        log("gpu: fp16 on rooms not seen before, then profiled")
        GPUStep(net, "fp16")(*scenes[0], random_labels(scenes[:1], CLASSES)[0])  # CUDA warm-up
        row["fp16_unseen_rooms"] = unseen_scene_steps(net, fresh, "fp16")
        row["fp16_profile"] = profile_step(net, scenes, "fp16", out)
        del net
        torch.cuda.empty_cache()
    return row


class GPU(Section):
    name = "gpu"
    summary = (
        "(CUDA only; skipped without a GPU) spunet34c training step on ScanNet-sized rooms at "
        "2 cm in fp32, TF32, AMP fp16 and bf16, split into forward, backward and optimizer "
        "step, with peak GPU memory, AMP against fp32 logits and a profiled step"
    )

    def __init__(self, modes: list[str] | None = None) -> None:
        self.modes = modes or list(GPU_MODES)

    def run(self, ctx: Context) -> dict[str, Any]:
        if not torch.cuda.is_available():
            log("gpu: no CUDA device, section skipped")
            return {"skipped": "no CUDA device"}
        props = torch.cuda.get_device_properties(0)
        steps = 10 if ctx.quick else 30
        return {
            "device": props.name,
            "gpu_mem_gb": round(props.total_memory / 1e9, 1),
            "cuda": torch.version.cuda,
            "target_step_ms": 60.0,
            "scenes": {n: plan_row(n, p, steps, self.modes, ctx.out) for n, p in PLANS.items()},
        }

    def markdown(self, res: dict[str, Any]) -> list[str]:
        if "skipped" in res:
            return ["## GPU (spunet34c)", "", f"skipped: {res['skipped']}", ""]
        lines = [
            f"## GPU training step (spunet34c, {res['device']}, CUDA {res['cuda']})",
            "",
            "Median of the timed steps over four different rooms; forward includes the "
            f"rulebooks. Target: a full step <= {res['target_step_ms']:g} ms with AMP.",
            "",
        ]
        for name, row in res["scenes"].items():
            lines += scene_markdown(name, row)
        return lines


def scene_markdown(name: str, row: dict[str, Any]) -> list[str]:
    lines = [
        f"### {name}: {row['points']:,} points, {np.mean(row['voxels']):,.0f} voxels at 2 cm",
        "",
        "| mode | step | forward | backward | optimizer | voxels/s | peak GPU memory | vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in GPU_MODES:
        r = row.get(mode)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {mode} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {mode} | {r['step_ms']} ms | {r['forward_ms']} ms | {r['backward_ms']} ms | "
            f"{r['optimizer_ms']} ms | {r['voxels_per_s']:,} | {r['peak_gpu_mem_gb']} GB | "
            f"{r.get('speedup_vs_fp32', '-')}x |"
        )
    agree = ", ".join(
        f"{k}: relative error {v['relative_error']}, argmax agreement {v['argmax_agreement']}"
        if "error" not in v
        else f"{k}: {v['error']}"
        for k, v in row["amp_agreement"].items()
    )
    lines += ["", f"AMP logits against fp32 (same weights): {agree}", ""]
    if "fp16_unseen_rooms" in row:
        u, prof = row["fp16_unseen_rooms"], row["fp16_profile"]
        lines += [
            f"fp16 on rooms not seen before (new voxel counts, as in an epoch): median step "
            f"{u['step_ms']} ms ({', '.join(map(str, u['all_ms']))} ms).",
            "",
            f"Profiled fp16 step: {prof['wall_ms']} ms wall, GPU busy {prof['gpu_busy_ms']} ms "
            f"(kernel table: {prof['table']}). Unprofiled: {prof['unprofiled_wall_ms']} ms, "
            f"of which Python's garbage collector {prof['gc_ms_per_step']} ms "
            f"({prof['gc_runs_per_step']} runs); under cProfile, spconv's allocator callbacks "
            f"{prof['allocator_ms_per_step']} ms ({prof['allocator_calls_per_step']} calls).",
            "",
        ]
    return lines
