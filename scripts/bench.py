"""pointseg benchmark suite: every figure is a ratio against a baseline measured in the same run.

    python scripts/bench.py            # full: 1 M / 10 M points, 50 M-point scan, up to 1 M voxels
    python scripts/bench.py --quick    # smaller sizes, a few minutes on 2 CPU cores
    python scripts/bench.py --only voxelize,scaling

Sections (``--only`` picks some):
  voxelize   voxelizer throughput (Mpts/s, with the inverse map and mean features) against numpy
             (ravelled key + np.unique), spconv's PointToVoxel and Open3D's voxel_down_sample
  dense      training step (forward + backward + optimizer step) of the sparse U-Net against the
             same network built from dense torch.nn.Conv3d on the same scene, in voxels/s
  o3dml      training step of model=o3dml_plan on 4 synthetic rooms at 5 cm: the "pointseg"
             sparse backend against the "spconv" backend (spconv's CPU path as shipped)
  threads    spunet_small training step and eval forward at 1 thread and at the default thread
             count, alone and next to one busy process, each in a fresh process
  inference  pointseg-predict end to end (read -> voxelize -> network -> write) on a generated
             LAZ scan, in points/s, with the peak RSS of the process
  scaling    step time against voxel count (10 k to 1 M voxels), log-log fit and plot
  gpu        (CUDA only; skipped without a GPU) spunet34c training step on ScanNet-sized rooms
             at 2 cm (~186 k voxels) in fp32, TF32, AMP fp16 and bf16 autocast, split into
             forward, backward and optimizer step, with peak GPU memory, AMP against fp32
             logits, steps on unseen rooms and a profiled step (benchmarks/gpu_profile.txt);
             also at ~105 k voxels, near the size of spconv's published figures

Writes a markdown table to stdout and ``benchmarks/results.md``, the figures to
``benchmarks/results.json`` and plots to ``benchmarks/*.png``; each file is written to a
temporary name first and then renamed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pointseg  # noqa: E402, F401  first: its OpenMP wait policy must precede torch's import

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pointseg.data.datasets.synthetic import SyntheticRooms  # noqa: E402
from pointseg.data.voxelize import voxelize  # noqa: E402
from pointseg.threads import WAIT_SETTINGS  # noqa: E402
from pointseg.utils import atomic_write_text, reuse_freed_memory, write_json  # noqa: E402

SECTIONS = ("voxelize", "dense", "o3dml", "threads", "inference", "scaling", "gpu")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Best (minimum) wall time of ``repeat`` calls after ``warmup`` calls, and all times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


# ---------------------------------------------------------------- a. voxelizer


def _numpy_voxelize(coord: np.ndarray, feat: np.ndarray, vs: float) -> int:
    """The textbook numpy voxelizer: ravelled key, np.unique with inverse, bincount means."""
    grid = np.floor((coord - coord.min(0)) / vs).astype(np.int64)
    dims = grid.max(0) + 1
    key = (grid[:, 0] * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    means = np.stack(
        [np.bincount(inverse, feat[:, j], len(counts)) for j in range(feat.shape[1])], 1
    )
    return len(means / counts[:, None])


def _spconv_voxelize(coord: np.ndarray, feat: np.ndarray, vs: float, max_pts: int) -> int:
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


def _open3d_voxelize(coord: np.ndarray, feat: np.ndarray, vs: float) -> int | None:
    try:
        import open3d as o3d
    except ImportError:
        return None
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord.astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(feat.astype(np.float64))
    return len(pcd.voxel_down_sample(vs).points)  # means only: no inverse map


def _voxelize_row(n: int, vs: float) -> dict[str, Any]:
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
        "numpy": lambda: _numpy_voxelize(coord, feat, vs),
        "spconv": lambda: _spconv_voxelize(coord, feat, vs, max_pts),
        "open3d": lambda: _open3d_voxelize(coord, feat, vs),
    }
    if _open3d_voxelize(coord[:1000], feat[:1000], vs) is None:
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
    peers = [k for k in ("numpy", "spconv", "open3d") if f"{k}_mpts" in row]
    fastest = max(peers, key=lambda k: row[f"{k}_mpts"])
    row["speedup_vs_fastest_peer"] = round(row["pointseg_mpts"] / row[f"{fastest}_mpts"], 2)
    # per-round ratios against the same peer: each pair ran back to back
    ratios = sorted(b / a for a, b in zip(times["pointseg"], times[fastest], strict=False))
    row["median_round_speedup"] = round(ratios[len(ratios) // 2], 2)
    row["all_times_s"] = {k: [round(t, 4) for t in v] for k, v in times.items()}
    return row


def bench_voxelize(sizes: list[int], vs: float = 0.05) -> dict[str, Any]:
    rows = []
    for n in sizes:
        rows.append(_voxelize_row(n, vs))
        gc.collect()
    return {"voxel_size": vs, "rows": rows}


# ---------------------------------------------------------------- shared scene helpers


def room_batch(
    rooms: int,
    voxel_size: float,
    *,
    room_size=(4.0, 9.0),
    seed: int = 0,
    channels: int = 4,
    density: float = 1600.0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``rooms`` synthetic rooms voxelized at ``voxel_size``: (feat, indices, points)."""
    ds = SyntheticRooms(
        "train", num_scenes=rooms, seed=seed, room_size=tuple(room_size), density=density
    )
    feats, idx, points = [], [], 0
    for b in range(rooms):
        s = ds[b]
        points += len(s["coord"])
        f = np.concatenate([s["color"], s["coord"][:, 2:3] - s["coord"][:, 2].min()], 1)
        v = voxelize(s["coord"], f[:, :channels].astype(np.float32), voxel_size=voxel_size)
        i = np.zeros((len(v.grid_coord), 4), dtype=np.int32)
        i[:, 0], i[:, 1:] = b, v.grid_coord
        feats.append(torch.from_numpy(np.ascontiguousarray(v.features)))
        idx.append(torch.from_numpy(i))
    return torch.cat(feats), torch.cat(idx), points


def train_step_fn(net: nn.Module, feat: torch.Tensor, idx: torch.Tensor, batch: int, classes: int):
    """One SGD training step of ``net`` on random labels (the cost does not depend on them)."""
    labels = torch.randint(0, classes, (len(idx),), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    net.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(feat, idx, batch), labels)
        loss.backward()
        opt.step()

    return step


# ---------------------------------------------------------------- b. sparse vs dense


class _DenseBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout)
        self.c2, self.b2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout)
        self.proj = None
        if cin != cout:
            self.proj = nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.proj is None else self.proj(x)
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + idt)


class DenseUNet(nn.Module):
    """The sparse U-Net's plan (stem, strided convs, residual blocks, transposed convs, skips)
    built from dense ``nn.Conv3d`` over the whole grid."""

    def __init__(self, sparse_net: nn.Module) -> None:
        super().__init__()
        n = sparse_net.num_stages
        stem_c = sparse_net.stem.conv.out_channels
        k = sparse_net.stem.conv.kernel_size[0]
        self.stem = nn.Sequential(
            nn.Conv3d(sparse_net.in_channels, stem_c, k, padding=k // 2, bias=False),
            nn.BatchNorm3d(stem_c),
            nn.ReLU(),
        )
        width, self.enc, self.ups, self.dec = [stem_c], nn.ModuleList(), nn.ModuleList(), []
        for i, stage in enumerate(sparse_net.encoders):
            w = stage[0].conv.out_channels
            blocks = [_DenseBlock(w, w) for _ in stage[1]]
            self.enc.append(
                nn.Sequential(
                    nn.Conv3d(width[i], w, 2, stride=2, bias=False),
                    nn.BatchNorm3d(w),
                    nn.ReLU(),
                    *blocks,
                )
            )
            width.append(w)
        prev, decs = width[n], []
        for j, (up, dec) in enumerate(zip(sparse_net.ups, sparse_net.decoders, strict=True)):
            out = up.conv.out_channels
            self.ups.append(
                nn.Sequential(
                    nn.ConvTranspose3d(prev, out, 2, stride=2, bias=False),
                    nn.BatchNorm3d(out),
                    nn.ReLU(),
                )
            )
            level = n - j - 1
            decs.append(
                nn.Sequential(
                    _DenseBlock(out + width[level], out),
                    *[_DenseBlock(out, out) for _ in range(len(dec) - 1)],
                )
            )
            prev = out
        self.dec = nn.ModuleList(decs)
        self.head = nn.Conv3d(prev, sparse_net.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for enc in self.enc:
            skips.append(x)
            x = enc(x)
        for up, dec in zip(self.ups, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


def bench_dense(voxel_size: float, rooms: int) -> dict[str, Any]:
    from pointseg.models.sparse_unet import spunet_small

    feat, idx, points = room_batch(rooms, voxel_size, room_size=(4.0, 6.0))
    torch.manual_seed(0)
    net = spunet_small(4, 9)
    log(f"dense vs sparse: {len(idx):,} voxels at {voxel_size} m")
    sparse_s, _ = timed(train_step_fn(net, feat, idx, rooms, 9), 3)
    # the same voxels on a dense grid (batch x C x X x Y x Z), each axis a multiple of 2^levels
    align = 2**net.num_stages
    ext = ((idx[:, 1:].amax(0) // align + 1) * align).tolist()
    cells = rooms * ext[0] * ext[1] * ext[2]
    dense_net = DenseUNet(net)
    x = torch.zeros((rooms, 4, *ext))
    b, gx, gy, gz = idx.long().unbind(1)
    x[b, :, gx, gy, gz] = feat
    labels = torch.randint(0, 9, (len(idx),), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(dense_net.parameters(), lr=1e-3, momentum=0.9)

    def dense_step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = dense_net(x)  # (B, K, X, Y, Z)
        loss = nn.functional.cross_entropy(logits[b, :, gx, gy, gz], labels)
        loss.backward()
        opt.step()

    log(f"dense step: grid {ext} x {rooms} = {cells:,} cells")
    dense_s, _ = timed(dense_step, 2)
    return {
        "voxel_size": voxel_size,
        "rooms": rooms,
        "points": points,
        "voxels": len(idx),
        "dense_cells": cells,
        "occupancy": round(len(idx) / cells, 4),
        "sparse_step_s": round(sparse_s, 3),
        "dense_step_s": round(dense_s, 3),
        "sparse_voxels_per_s": round(len(idx) / sparse_s),
        "dense_voxels_per_s": round(len(idx) / dense_s),
        "speedup": round(dense_s / sparse_s, 1),
    }


# ---------------------------------------------------------------- o3dml reference plan


def bench_o3dml(room_size: tuple[float, float], repeat: int) -> dict[str, Any]:
    from pointseg.models.o3dml_plan import O3DMLPlanUNet
    from pointseg.sparse import use_backend

    feat, idx, points = room_batch(4, 0.05, room_size=room_size, channels=3)
    torch.manual_seed(0)
    net = O3DMLPlanUNet(3, 5)
    step = train_step_fn(net, feat, idx, 4, 5)
    log(f"o3dml_plan: {points:,} points, {len(idx):,} voxels")
    times: dict[str, list[float]] = {"pointseg": [], "spconv_shipped": []}
    for backend in ("pointseg", "spconv"):
        with use_backend(backend):
            step()  # warm-up
    for _ in range(repeat):  # interleaved, so both see the same machine load
        for name in times:
            with use_backend("spconv" if name == "spconv_shipped" else "pointseg"):
                times[name].append(timed(step, 1, warmup=0)[0])
    ours, plain = min(times["pointseg"]), min(times["spconv_shipped"])
    # per-round ratios: each pair ran back to back, so their median resists load changes
    rounds = sorted(b / a for a, b in zip(times["pointseg"], times["spconv_shipped"], strict=True))
    return {
        "points": points,
        "voxels": len(idx),
        "parameters": net.num_parameters(),
        "pointseg_step_s": round(ours, 3),
        "spconv_shipped_step_s": round(plain, 3),
        "speedup_vs_spconv_shipped": round(plain / ours, 2),
        "median_round_speedup": round(rounds[len(rounds) // 2], 2),
        "all_times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "target_step_s": 1.0,
    }


# ---------------------------------------------------------------- threads under contention

# A worker process: pointseg is imported before torch, as in the console scripts, so its
# OpenMP wait policy applies; it prints the median seconds of a training step or an eval-mode
# forward of spunet_small on 2 rooms at 5 cm.
_THREAD_WORKER = """
import sys, statistics, time
import pointseg, torch
from pointseg.threads import set_threads
set_threads(int(sys.argv[2]) or None)
sys.path.insert(0, sys.argv[4])
from bench import room_batch, train_step_fn
from pointseg.models.sparse_unet import spunet_small
feat, idx, _ = room_batch(2, 0.05)
torch.manual_seed(0)
net = spunet_small(4, 9)
if sys.argv[1] == "step":
    fn = train_step_fn(net, feat, idx, 2, 9)
else:
    net.eval()
    def fn():
        with torch.inference_mode():
            net(feat, idx, 2)
fn()
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
print(statistics.median(times), len(idx))
"""


def _thread_run(kind: str, threads: int, repeat: int) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS}
    argv = [sys.executable, "-c", _THREAD_WORKER, kind, str(threads), str(repeat)]
    out = subprocess.run([*argv, str(ROOT / "scripts")], env=env, check=True,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    return float(out[0]), int(out[1])


def bench_threads(rounds: int, repeat: int) -> dict[str, Any]:
    """Training step and eval forward at 1 thread and at pointseg's default (0: the CPUs
    available), alone and next to one busy process (``python -c "while True: pass"``), each
    in a fresh process; rounds interleave every configuration."""
    from pointseg.threads import available_cpus

    times: dict[str, list[float]] = {}
    voxels = 0
    for _ in range(rounds):
        for busy in (False, True):
            competitor = (
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            )
            try:
                for kind in ("step", "predict"):
                    for threads in (1, 0):
                        t, voxels = _thread_run(kind, threads, repeat)
                        times.setdefault(f"{kind}/{threads or 'default'}/{busy:d}", []).append(t)
                        log(f"threads: {kind} threads={threads or 'default'} busy={busy}: {t:.3f}s")
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    med = {k: round(float(np.median(v)), 3) for k, v in times.items()}
    ratios = {}
    for kind in ("step", "predict"):
        for th in ("1", "default"):
            ratios[f"{kind}/{th}: busy / alone"] = round(
                med[f"{kind}/{th}/1"] / med[f"{kind}/{th}/0"], 2
            )
        for busy in ("0", "1"):
            ratios[f"{kind}/busy={busy}: default / 1 thread"] = round(
                med[f"{kind}/default/{busy}"] / med[f"{kind}/1/{busy}"], 2
            )
    return {"default_threads": available_cpus(), "voxels": voxels, "median_s": med,
            "ratios": ratios, "all_times_s": times}  # fmt: skip


# ---------------------------------------------------------------- c. inference end to end


def bench_inference(points: int, workdir: Path, ckpt: Path | None = None) -> dict[str, Any]:
    """``ckpt``: a trained checkpoint (e.g. from ``make train``); by default an untrained
    network of the default preset, which costs the same per point."""
    if ckpt is None:
        import hydra
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        from pointseg.utils import CONF_DIR

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train")
        module = hydra.utils.instantiate(cfg.model)
        ckpt = workdir / "bench.ckpt"
        torch.save(
            {
                "state_dict": module.state_dict(),
                "pointseg_config": {
                    k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model")
                },
            },
            ckpt,
        )
    laz = workdir / "scan.laz"
    log(f"inference: writing a {points:,}-point LAZ")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/make_big_laz.py"), str(laz), "--points", str(points)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    log("inference: pointseg-predict")
    out = workdir / "pred"
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pointseg.predict",
            f"ckpt_path={ckpt}",
            f"input={laz}",
            f"output={out}",
            "progress=false",
            f"hydra.run.dir={workdir / 'run'}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = (
        json.loads((out / "predict.json").read_text()) if (out / "predict.json").is_file() else {}
    )
    return {
        "points": points,
        "checkpoint": str(ckpt) if ckpt.parent != workdir else "untrained default preset",
        "wall_s": round(wall, 1),
        "points_per_s": round(points / wall),
        "peak_rss_gb": round(peak_kb / 1024**2, 2),
        "peak_rss_note": "max RSS of the benchmark's child processes (the LAZ writer included)",
        # pointseg-predict's own figure: read -> write per file, without interpreter start-up
        "predict_points_per_s": round(summary["points"] / summary["seconds"]),
    }


# ---------------------------------------------------------------- d. scaling


def _fit(rows: list[dict[str, Any]]) -> tuple[float, float]:
    v = np.log([r["voxels"] for r in rows])
    t = np.log([r["step_s"] for r in rows])
    slope, intercept = np.polyfit(v, t, 1)
    return round(float(slope), 3), round(float(intercept), 3)


def bench_scaling(
    voxel_sizes: list[float], rooms: int, room_counts: list[int] = (), room_voxel: float = 0.05
) -> dict[str, Any]:
    """Step time of ``spunet_small`` against voxel count, two ways: the same ``rooms`` at finer
    and finer voxels (the density per voxel changes too), and more and more rooms at 5 cm (the
    same kind of scene, only bigger)."""
    from pointseg.models.sparse_unet import spunet_small

    def step_time(n_rooms: int, vs: float) -> dict[str, Any]:
        feat, idx, _ = room_batch(n_rooms, vs)
        torch.manual_seed(0)
        net = spunet_small(4, 9)
        log(f"scaling: {n_rooms} rooms at {vs} m, {len(idx):,} voxels")
        fn = train_step_fn(net, feat, idx, n_rooms, 9)
        best, _ = timed(fn, 3 if len(idx) < 300_000 else 2)
        return {"rooms": n_rooms, "voxel_size": vs, "voxels": len(idx), "step_s": round(best, 4)}

    rows = [step_time(rooms, vs) for vs in voxel_sizes]
    slope, intercept = _fit(rows)
    out: dict[str, Any] = {"rooms": rooms, "rows": rows, "slope": slope, "intercept": intercept}
    if room_counts:
        by_rooms = [step_time(k, room_voxel) for k in room_counts]
        r_slope, r_intercept = _fit(by_rooms)
        out["by_rooms"] = {"rows": by_rooms, "slope": r_slope, "intercept": r_intercept}
    return out


# ---------------------------------------------------------------- e. GPU: fp32 against AMP

# mode -> (autocast dtype or None, spconv TF32 kernels for fp32 GEMMs). spconv 2.3.8 has no bf16
# conv kernels: under bf16 autocast its convs run in fp16 and only BN, Linear and the loss in bf16.
GPU_MODES = {
    "fp32": (None, False),
    "tf32": (None, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
}


class _GPUStep:
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


def _labels(scenes: list[tuple[torch.Tensor, torch.Tensor]], classes: int) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randint(0, classes, (len(i),), device="cuda", generator=gen) for _, i in scenes]


@contextlib.contextmanager
def _spconv_tf32(on: bool):
    import spconv.constants as spconv_constants

    previous, spconv_constants.SPCONV_ALLOW_TF32 = spconv_constants.SPCONV_ALLOW_TF32, on
    try:
        yield
    finally:
        spconv_constants.SPCONV_ALLOW_TF32 = previous


def _gpu_train_steps(
    net: nn.Module, scenes: list[tuple[torch.Tensor, torch.Tensor]], mode: str, steps: int
) -> dict[str, Any]:
    """``steps`` timed training steps cycling through ``scenes``, after one warm-up pass over
    them and two more steps; medians of wall time and phases, and the peak GPU memory."""
    step = _GPUStep(net, mode)
    labels = _labels(scenes, net.head.out_features)
    rows = []
    torch.cuda.reset_peak_memory_stats()
    warmup = len(scenes) + 2
    with _spconv_tf32(GPU_MODES[mode][1]):
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


def _unseen_scene_steps(net: nn.Module, scenes, mode: str) -> dict[str, Any]:
    """One step on each of ``scenes``, rooms the network has not seen: every voxel count is new,
    as in a real epoch (spconv tunes its kernels per problem shape)."""
    step = _GPUStep(net, mode)
    labels = _labels(scenes, net.head.out_features)
    walls = [step(*scene, lab)[0] for scene, lab in zip(scenes, labels, strict=True)]
    return {
        "step_ms": round(1e3 * float(np.median(walls)), 2),
        "all_ms": [round(1e3 * w, 1) for w in walls],
    }


def _gpu_profile(net: nn.Module, scenes, mode: str, out: Path) -> dict[str, Any]:
    """torch.profiler over one step per scene: the GPU's busy time against the wall time (a big
    gap means the step waits on the CPU: Python, launches, rulebook synchronisations). The
    kernel table goes to ``gpu_profile.txt``."""
    from torch.profiler import ProfilerActivity, profile

    step = _GPUStep(net, mode)
    labels = _labels(scenes, net.head.out_features)
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
        **_host_costs(step, scenes, labels),
    }


def _host_costs(step: _GPUStep, scenes, labels) -> dict[str, Any]:
    """Host time per step inside spconv's allocator callbacks (its C++ asks Python for every
    buffer) and in Python's garbage collector, over one unprofiled step per scene."""
    import gc

    from spconv.pytorch import cppcore

    spent = {"alloc_s": 0.0, "alloc_calls": 0, "gc_s": 0.0, "gc_runs": 0, "gc_t0": 0.0}
    names = [
        n
        for n in ("empty", "zeros", "full_int", "full_float")
        if hasattr(cppcore.TorchAllocator, n)
    ]
    originals = {n: getattr(cppcore.TorchAllocator, n) for n in names}

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["alloc_s"] += time.perf_counter() - t0
                spent["alloc_calls"] += 1

        return wrapper

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            spent["gc_t0"] = time.perf_counter()
        else:
            spent["gc_s"] += time.perf_counter() - spent["gc_t0"]
            spent["gc_runs"] += 1

    gc.callbacks.append(on_gc)
    for n, fn in originals.items():
        setattr(cppcore.TorchAllocator, n, timed(fn))
    try:
        walls = [step(*scene, lab)[0] for scene, lab in zip(scenes, labels, strict=True)]
    finally:
        for n, fn in originals.items():
            setattr(cppcore.TorchAllocator, n, fn)
        gc.callbacks.remove(on_gc)
    k = len(scenes)
    return {
        "unprofiled_wall_ms": round(1e3 * float(np.mean(walls)), 2),
        "allocator_calls_per_step": round(spent["alloc_calls"] / k),
        "allocator_ms_per_step": round(1e3 * spent["alloc_s"] / k, 2),
        "gc_runs_per_step": round(spent["gc_runs"] / k, 1),
        "gc_ms_per_step": round(1e3 * spent["gc_s"] / k, 2),
    }


def _amp_agreement(net: nn.Module, feat: torch.Tensor, idx: torch.Tensor) -> dict[str, Any]:
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


def bench_gpu(steps: int, out: Path, modes: list[str] | None = None) -> dict[str, Any]:
    """spunet34c training steps on CUDA at a ScanNet-sized room at 2 cm (one 7 x 7 m room, 3000
    points/m^2: about 210 k voxels), and at about 120 k voxels (the same room at 1600 points/m^2),
    the size of spconv's published A100 figures (13 ms forward + 12 ms backward, fp16, no BN)."""
    if not torch.cuda.is_available():
        log("gpu: no CUDA device, section skipped")
        return {"skipped": "no CUDA device"}
    from pointseg.models.sparse_unet import spunet34c

    modes = modes or list(GPU_MODES)
    classes = 20  # ScanNet's benchmark classes
    props = torch.cuda.get_device_properties(0)
    res: dict[str, Any] = {
        "device": props.name,
        "gpu_mem_gb": round(props.total_memory / 1e9, 1),
        "cuda": torch.version.cuda,
        "target_step_ms": 60.0,
        "scenes": {},
    }
    plans = {
        "scannet_2cm": dict(room_size=(7.0, 7.0), density=3000.0),
        "spconv_ref_120k": dict(room_size=(7.0, 7.0), density=1600.0),
    }
    for name, plan in plans.items():
        # four different rooms of the same plan, so spconv's per-shape kernel tuning and the
        # rulebooks are exercised the way a real epoch does, not cached for one shape
        scenes, points = [], []
        for seed in range(4):
            f, i, p = room_batch(1, 0.02, seed=seed, channels=4, **plan)
            scenes.append((f.cuda(), i.cuda()))
            points.append(p)
        torch.manual_seed(0)
        net = spunet34c(4, classes).cuda()
        row: dict[str, Any] = {
            "points": int(np.mean(points)),
            "voxels": [len(i) for _, i in scenes],
            "parameters": net.num_parameters(),
            "amp_agreement": _amp_agreement(net, *scenes[0]),
        }
        for mode in modes:
            log(f"gpu: {name} ({np.mean(row['voxels']):,.0f} voxels), {mode}")
            torch.manual_seed(0)
            net = spunet34c(4, classes).cuda()
            try:
                row[mode] = _gpu_train_steps(net, scenes, mode, steps)
            except Exception as err:  # noqa: BLE001 - a mode spconv lacks is reported, not fatal
                row[mode] = {"error": f"{type(err).__name__}: {err}"[:300]}
            del net
            torch.cuda.empty_cache()
        fp32 = row.get("fp32", {}).get("step_ms")
        for mode in modes:
            ms = row[mode].get("step_ms")
            if fp32 and ms:
                row[mode]["speedup_vs_fp32"] = round(fp32 / ms, 2)
        res["scenes"][name] = row
        if name == "scannet_2cm" and "fp16" in modes:
            torch.manual_seed(0)
            net = spunet34c(4, classes).cuda()
            fresh = [room_batch(1, 0.02, seed=seed, channels=4, **plan)[:2] for seed in (4, 5, 6)]
            fresh = [(f.cuda(), i.cuda()) for f, i in fresh]
            log("gpu: fp16 on rooms not seen before, then profiled")
            _GPUStep(net, "fp16")(*scenes[0], _labels(scenes[:1], classes)[0])  # CUDA warm-up
            row["fp16_unseen_rooms"] = _unseen_scene_steps(net, fresh, "fp16")
            row["fp16_profile"] = _gpu_profile(net, scenes, "fp16", out)
            del net
            torch.cuda.empty_cache()
    return res


# ---------------------------------------------------------------- report


def _plots(res: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, out / name)
        written.append(name)

    if "voxelize" in res:
        rows = res["voxelize"]["rows"]
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
        save(fig, "voxelize.png")
    if "scaling" in res:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        sweeps = [("finer voxels", res["scaling"])]
        if "by_rooms" in res["scaling"]:
            sweeps.append(("more rooms at 5 cm", res["scaling"]["by_rooms"]))
        for (name, sweep), color in zip(sweeps, ("C0", "C1"), strict=False):
            v = np.array([r["voxels"] for r in sweep["rows"]])
            t = np.array([r["step_s"] for r in sweep["rows"]])
            s, c = sweep["slope"], sweep["intercept"]
            ax.loglog(v, t, "o-", color=color, label=f"{name} (slope {s:.2f})")
            ax.loglog(v, np.exp(c) * v**s, "--", color=color, alpha=0.5)
        v0 = np.array([r["voxels"] for r in res["scaling"]["rows"]])
        t0 = res["scaling"]["rows"][0]["step_s"]
        ax.loglog(v0, t0 * v0 / v0[0], ":", color="gray", label="linear")
        ax.set_xlabel("voxels per step")
        ax.set_ylabel("training step (s)")
        ax.set_title("Step time vs voxel count (spunet_small, CPU)")
        ax.legend()
        save(fig, "scaling.png")
    return written


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# pointseg benchmarks",
        "",
        f"{m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}), torch "
        f"{m['torch']}, spconv {m['spconv']}, Python {m['python']}; "
        f"{'quick' if res['quick'] else 'full'} run, {res['date']}; freed memory "
        f"{'reused' if m.get('reuse_freed_memory') else 'returned to the system'}.",
        "",
    ]
    if "voxelize" in res:
        lines += [
            "## Voxelizer (Mpts/s, inverse map + mean features)",
            "",
            "| points | voxels | pointseg | spconv PointToVoxel | numpy unique | Open3D | "
            "pointseg / fastest peer | median per-round ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["voxelize"]["rows"]:
            lines.append(
                f"| {r['points']:,} | {r['voxels']:,} | {r['pointseg_mpts']} | "
                f"{r.get('spconv_mpts', '-')} | {r.get('numpy_mpts', '-')} | "
                f"{r.get('open3d_mpts', '-')} | {r['speedup_vs_fastest_peer']}x | "
                f"{r.get('median_round_speedup', '-')}x |"
            )
        lines.append("")
    if "dense" in res:
        d = res["dense"]
        lines += [
            "## Training step: sparse vs dense (spunet_small plan)",
            "",
            "| voxels | dense cells | sparse step | dense step | sparse voxels/s | "
            "dense voxels/s | speed-up |",
            "|---|---|---|---|---|---|---|",
            f"| {d['voxels']:,} | {d['dense_cells']:,} | {d['sparse_step_s']} s | "
            f"{d['dense_step_s']} s | {d['sparse_voxels_per_s']:,} | {d['dense_voxels_per_s']:,}"
            f" | {d['speedup']}x |",
            "",
        ]
    if "o3dml" in res:
        o = res["o3dml"]
        lines += [
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
    if "threads" in res:
        t = res["threads"]
        lines += [
            f"## Threads ({t['voxels']:,} voxels; default = {t['default_threads']} threads)",
            "",
            "| figure | ratio |",
            "|---|---|",
            *[f"| {k} | {v}x |" for k, v in t["ratios"].items()],
            "",
            "| configuration (kind/threads/busy) | median s |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in t["median_s"].items()],
            "",
        ]
    if "inference" in res:
        i = res["inference"]
        lines += [
            "## Inference end to end (pointseg-predict on a LAZ scan)",
            "",
            "| points | wall (process) | points/s (process) | points/s (predict.json) | peak RSS |",
            "|---|---|---|---|---|",
            f"| {i['points']:,} | {i['wall_s']} s | {i['points_per_s']:,} | "
            f"{i['predict_points_per_s']:,} | {i['peak_rss_gb']} GB |",
            "",
        ]
    if "scaling" in res:
        s = res["scaling"]
        lines += [
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
    if "gpu" in res:
        lines += _gpu_markdown(res["gpu"])
    return "\n".join(lines)


def _gpu_markdown(g: dict[str, Any]) -> list[str]:
    if "skipped" in g:
        return ["## GPU (spunet34c)", "", f"skipped: {g['skipped']}", ""]
    lines = [
        f"## GPU training step (spunet34c, {g['device']}, CUDA {g['cuda']})",
        "",
        "Median of the timed steps over four different rooms; forward includes the rulebooks. "
        f"Target: a full step <= {g['target_step_ms']:g} ms with AMP.",
        "",
    ]
    for name, row in g["scenes"].items():
        vox = np.mean(row["voxels"])
        lines += [
            f"### {name}: {row['points']:,} points, {vox:,.0f} voxels at 2 cm",
            "",
            "| mode | step | forward | backward | optimizer | voxels/s | peak GPU memory | "
            "vs fp32 |",
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
                f"of which spconv's allocator callbacks {prof['allocator_ms_per_step']} ms "
                f"({prof['allocator_calls_per_step']} calls) and Python's garbage collector "
                f"{prof['gc_ms_per_step']} ms ({prof['gc_runs_per_step']} runs).",
                "",
            ]
    return lines


def machine() -> dict[str, Any]:
    import spconv

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "spconv": getattr(spconv, "__version__", "?"),
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"), help="output folder")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--ckpt", default=None, help="checkpoint for the inference section")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    reused = reuse_freed_memory()  # as pointseg-train does (POINTSEG_REUSE_MEMORY=0: off)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    q = args.quick
    res: dict[str, Any] = {
        "quick": q,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {**machine(), "reuse_freed_memory": reused},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    t0 = time.perf_counter()
    if "voxelize" in only:
        res["voxelize"] = bench_voxelize([1_000_000, 2_000_000] if q else [1_000_000, 10_000_000])
    if "dense" in only:
        res["dense"] = bench_dense(0.1 if q else 0.08, 1 if q else 2)
    if "o3dml" in only:
        res["o3dml"] = bench_o3dml((2.8, 5.6), 3 if q else 8)
    if "threads" in only:
        res["threads"] = bench_threads(1 if q else 2, 3 if q else 5)
    if "inference" in only:
        with tempfile.TemporaryDirectory(prefix="pointseg-bench-") as tmp:
            ckpt = Path(args.ckpt).resolve() if args.ckpt else None
            res["inference"] = bench_inference(2_000_000 if q else 50_000_000, Path(tmp), ckpt)
    if "scaling" in only:
        sizes = [0.4, 0.2, 0.1, 0.05] if q else [0.4, 0.2, 0.1, 0.07, 0.05, 0.035, 0.025]
        counts = [1, 2, 4] if q else [1, 2, 4, 8, 16]
        res["scaling"] = bench_scaling(sizes, 4 if q else 8, counts)
    if "gpu" in only:
        res["gpu"] = bench_gpu(10 if q else 30, out)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    res["plots"] = _plots(res, out)
    md = markdown(res)
    print(md)
    atomic_write_text(out / "results.md", md + "\n")
    write_json(out / "results.json", res)
    log(f"done in {res['total_s']} s; wrote {out}/results.json, results.md, {res['plots']}")


if __name__ == "__main__":
    main()
