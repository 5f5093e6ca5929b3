"""What every benchmark section shares: the section interface, timing, the synthetic scenes
and the training step they time, and the description of the machine."""

from __future__ import annotations

import gc
import os
import platform
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pointseg.data.datasets.synthetic import SyntheticRooms
from pointseg.data.voxelize import voxelize
from pointseg.utils import atomic_path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Context:
    """What a run gives every section: the sizes to use, where files go, an optional model."""

    quick: bool
    out: Path
    ckpt: Path | None = None


class Section(ABC):
    """One benchmark section. ``run`` returns its figures (JSON-ready), ``markdown`` renders
    them, ``plots`` draws them into ``out`` and returns the file names it wrote."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for ``bench.py --help``

    @abstractmethod
    def run(self, ctx: Context) -> dict[str, Any]: ...

    @abstractmethod
    def markdown(self, res: dict[str, Any]) -> list[str]: ...

    def plots(self, res: dict[str, Any], out: Path) -> list[str]:
        return []


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


def median_ratio(base: list[float], other: list[float]) -> float:
    """Median over rounds of ``other / base``: each pair ran back to back, so the median
    resists the load changing between rounds."""
    ratios = sorted(b / a for a, b in zip(base, other, strict=True))
    return ratios[len(ratios) // 2]


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


def save_figure(fig: Any, out: Path, name: str) -> str:
    """Save a matplotlib figure as ``out/name`` through a temporary file; returns ``name``."""
    import matplotlib.pyplot as plt

    with atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return name


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
