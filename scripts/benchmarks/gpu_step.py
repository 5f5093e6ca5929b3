"""The GPU training step the ``gpu`` section times, and what it measures around it: phases,
peak memory, host costs, a profile and AMP's agreement with fp32."""

from __future__ import annotations

import contextlib
import cProfile
import gc
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pointseg.utils import atomic_write_text

# mode -> (autocast dtype or None, spconv TF32 kernels for fp32 GEMMs). spconv 2.3.8 has no bf16
# conv kernels: under bf16 autocast its convs run in fp16 and only BN, Linear and the loss in bf16.
GPU_MODES = {
    "fp32": (None, False),
    "tf32": (None, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
}
ALLOCATOR_METHODS = ("empty", "zeros", "full_int", "full_float")


class GPUStep:
    """One training step of ``net`` the way Lightning runs it on CUDA: autocast forward, fp32
    loss, GradScaler with fp16, SGD step. ``__call__`` returns the synchronised wall time and the
    GPU times of forward (rulebooks included), backward and optimizer step from CUDA events."""

    def __init__(self, net: nn.Module, mode: str) -> None:
        self.net, self.dtype = net.train(), GPU_MODES[mode][0]
        self.opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype is torch.float16)
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        self.mode = mode

    def __call__(self, feat: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor) -> list[float]:
        ev, dtype = self.events, self.dtype
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ev[0].record()
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = self.net(feat, idx, 1)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        ev[1].record()
        self.scaler.scale(loss).backward()
        ev[2].record()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        ev[3].record()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.mode}: the loss is {loss.item()}")
        return [wall, *(ev[k].elapsed_time(ev[k + 1]) / 1e3 for k in range(3))]


def random_labels(scenes: list[tuple[torch.Tensor, torch.Tensor]], classes: int):
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randint(0, classes, (len(i),), device="cuda", generator=gen) for _, i in scenes]


@contextlib.contextmanager
def spconv_tf32(on: bool):
    import spconv.constants as spconv_constants

    previous, spconv_constants.SPCONV_ALLOW_TF32 = spconv_constants.SPCONV_ALLOW_TF32, on
    try:
        yield
    finally:
        spconv_constants.SPCONV_ALLOW_TF32 = previous


def train_steps(net: nn.Module, scenes, mode: str, steps: int) -> dict[str, Any]:
    """``steps`` timed training steps cycling through ``scenes``, after one warm-up pass over
    them and two more steps; medians of wall time and phases, and the peak GPU memory."""
    step = GPUStep(net, mode)
    labels = random_labels(scenes, net.head.out_features)
    rows = []
    torch.cuda.reset_peak_memory_stats()
    warmup = len(scenes) + 2
    with spconv_tf32(GPU_MODES[mode][1]):
        for n in range(warmup + steps):
            k = n % len(scenes)
            times = step(*scenes[k], labels[k])
            if n >= warmup:
                rows.append(times)
    med = np.median(np.array(rows), axis=0)
    voxels = np.mean([len(i) for _, i in scenes])
    return {
        "step_ms": round(1e3 * float(med[0]), 2),
        "forward_ms": round(1e3 * float(med[1]), 2),
        "backward_ms": round(1e3 * float(med[2]), 2),
        "optimizer_ms": round(1e3 * float(med[3]), 2),
        "best_step_ms": round(1e3 * min(r[0] for r in rows), 2),
        "voxels_per_s": round(voxels / float(med[0])),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "steps": steps,
    }


def unseen_scene_steps(net: nn.Module, scenes, mode: str) -> dict[str, Any]:
    """One step on each of ``scenes``, rooms the network has not seen: every voxel count is new,
    as in a real epoch (spconv tunes its kernels per problem shape)."""
    step = GPUStep(net, mode)
    labels = random_labels(scenes, net.head.out_features)
    walls = [step(*scene, lab)[0] for scene, lab in zip(scenes, labels, strict=True)]
    return {
        "step_ms": round(1e3 * float(np.median(walls)), 2),
        "all_ms": [round(1e3 * w, 1) for w in walls],
    }


def profile_step(net: nn.Module, scenes, mode: str, out: Path) -> dict[str, Any]:
    """torch.profiler over one step per scene: the GPU's busy time against the wall time (a big
    gap means the step waits on the CPU: Python, launches, rulebook synchronisations). The
    kernel table goes to ``gpu_profile.txt``."""
    from torch.profiler import ProfilerActivity, profile

    step = GPUStep(net, mode)
    labels = random_labels(scenes, net.head.out_features)
    step(*scenes[0], labels[0])
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        walls = [step(*scene, lab)[0] for scene, lab in zip(scenes, labels, strict=True)]
    # kernels only: the autograd rows of the table also carry the time of the kernels they ran
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e3 / len(scenes)  # us -> ms
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30)
    atomic_write_text(out / "gpu_profile.txt", table + "\n")
    return {
        "mode": mode,
        "wall_ms": round(1e3 * float(np.mean(walls)), 2),
        "gpu_busy_ms": round(busy, 2),
        "table": "gpu_profile.txt",
        **host_costs(step, scenes, labels),
    }


def allocator_stats(prof: cProfile.Profile) -> tuple[int, float]:
    """Calls and seconds (own time plus callees) in the Python methods of spconv's
    ``TorchAllocator``, which its C++ calls for every buffer, read from a cProfile run."""
    calls, seconds = 0, 0.0
    for (filename, _, func), (_, ncalls, _, cumtime, _) in pstats.Stats(prof).stats.items():
        if Path(filename).name == "cppcore.py" and func in ALLOCATOR_METHODS:
            calls, seconds = calls + ncalls, seconds + cumtime
    return calls, seconds


def host_costs(step: GPUStep, scenes, labels) -> dict[str, Any]:
    """Host time per step in Python's garbage collector (``gc.callbacks``) over one step per
    scene, then in spconv's allocator callbacks over the same steps under cProfile (which
    counts Python calls made from C++ too; its own overhead inflates those milliseconds a
    little)."""
    spent = {"gc_s": 0.0, "gc_runs": 0, "gc_t0": 0.0}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            spent["gc_t0"] = time.perf_counter()
        else:
            spent["gc_s"] += time.perf_counter() - spent["gc_t0"]
            spent["gc_runs"] += 1

    pairs = list(zip(scenes, labels, strict=True))
    gc.callbacks.append(on_gc)
    try:
        walls = [step(*scene, lab)[0] for scene, lab in pairs]
    finally:
        gc.callbacks.remove(on_gc)
    prof = cProfile.Profile()
    prof.enable()
    try:
        for scene, lab in pairs:
            step(*scene, lab)
    finally:
        prof.disable()
    calls, seconds = allocator_stats(prof)
    k = len(scenes)
    return {
        "unprofiled_wall_ms": round(1e3 * float(np.mean(walls)), 2),
        "allocator_calls_per_step": round(calls / k),
        "allocator_ms_per_step": round(1e3 * seconds / k, 2),
        "gc_runs_per_step": round(spent["gc_runs"] / k, 1),
        "gc_ms_per_step": round(1e3 * spent["gc_s"] / k, 2),
    }


def amp_agreement(net: nn.Module, feat: torch.Tensor, idx: torch.Tensor) -> dict[str, Any]:
    """fp16 and bf16 logits against fp32 logits of the same weights (eval mode)."""
    net.eval()
    out: dict[str, Any] = {}
    with torch.no_grad():
        ref = net(feat, idx, 1).float()
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            try:
                with torch.autocast("cuda", dtype=dtype):
                    got = net(feat, idx, 1).float()
            except Exception as err:  # noqa: BLE001 - reported, not hidden
                out[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
                continue
            same = (got.argmax(1) == ref.argmax(1)).float().mean()
            out[name] = {
                "relative_error": round(float((got - ref).norm() / ref.norm()), 5),
                "argmax_agreement": round(float(same), 5),
            }
    net.train()
    return out
