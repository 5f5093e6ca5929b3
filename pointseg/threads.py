"""CPU thread policy for every pointseg entry point: how many threads, and how they wait.

- **How many**: the CPUs this process may actually use: its affinity mask
  (``os.sched_getaffinity``), capped by a cgroup CPU quota (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us / cpu.cfs_period_us``), which ``os.cpu_count()`` ignores. One count is set
  once for the whole run (``set_threads``); the sparse-conv kernels never change it.
- **How they wait**: torch's OpenMP threads spin between parallel regions by default. A sparse
  conv runs thousands of short memory-bound regions per step; when another process holds a
  core, a spinning thread burns the time its descheduled partner needs, and a 2-thread step took
  4x as long as 1 thread (``docs/benchmarks.md``). ``OMP_WAIT_POLICY=PASSIVE`` (and Intel's
  ``KMP_BLOCKTIME=0``) make idle threads sleep instead. OpenMP reads them when torch loads it,
  so ``openmp_env_defaults`` runs in ``pointseg/__init__.py``, before torch is imported; a
  value the user set is kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
# Set by the user (any of them): the wait policy is theirs and pointseg adds nothing.
_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def openmp_env_defaults(env: MutableMapping[str, str] | None = None) -> None:
    """Put ``OPENMP_DEFAULTS`` into ``env`` (``os.environ``) unless a wait setting is there."""
    env = os.environ if env is None else env
    if not any(name in env for name in _WAIT_SETTINGS):
        env.update(OPENMP_DEFAULTS)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup CPU quota under ``root``, or None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 without quota
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(*, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by its cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def set_threads(threads: int | None = None) -> int:
    """Set torch's thread count for the run: ``threads``, or ``available_cpus()`` when None or
    0. Returns the count. Call once at the start of an entry point."""
    import torch

    n = int(threads) if threads else available_cpus()
    if n < 1:
        raise ValueError(f"threads must be >= 1 (or null for the CPUs available), got {threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
