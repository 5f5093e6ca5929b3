"""CPU thread policy for every pointseg entry point: how many threads, and how they wait.

- **How many, at most**: the CPUs this process may actually use: its affinity mask
  (``os.sched_getaffinity``), capped by a cgroup CPU quota (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us / cpu.cfs_period_us``), which ``os.cpu_count()`` ignores.
- **How many, now** (``threads: null``, the default): the CPUs other processes leave free. A
  sparse conv runs thousands of short memory-bound OpenMP regions per step; when another process
  holds a core, the thread that shares it is descheduled and its partner waits for it at every
  region's barrier, so 2 threads next to one busy process ran 2-5x slower than 1 thread
  (``docs/benchmarks.md``). ``ThreadGovernor`` reads the CPU time the whole machine spent
  (``/proc/stat``, over the CPUs of the affinity mask) and this process's own, at most once per
  ``interval`` seconds, and sets torch's thread count to the CPUs the others left idle (at least
  1, at most the count above). ``adapt()`` is that check; the sparse-conv dispatch calls it
  before every CPU conv, so every training step, eval and predict block follows the machine.
  ``threads: N`` fixes the count and turns the governor off.
- **How they wait**: OpenMP threads spin for a while at a barrier before they sleep. Sleeping at
  once (``OMP_WAIT_POLICY=PASSIVE``) survives a busy neighbour but cost 1.65x on an idle machine
  (every region pays a wake-up); with the governor dropping to 1 thread when the machine is
  busy, a short spin (``GOMP_SPINCOUNT``) is the default. OpenMP reads it when torch loads it,
  so ``openmp_env_defaults`` runs in ``pointseg/__init__.py``, before torch is imported; a wait
  setting the user made is kept.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import re
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

# libgomp (torch's OpenMP on Linux): spin ~30k iterations (tens of microseconds) at a barrier,
# then sleep; Intel's runtime: 1 ms. See the module doc and docs/benchmarks.md.
log = logging.getLogger(__name__)

OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"}
# Set by the user (any of them): the wait policy is theirs and pointseg adds nothing.
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def openmp_env_defaults(env: MutableMapping[str, str] | None = None) -> None:
    """Put ``OPENMP_DEFAULTS`` into ``env`` (``os.environ``) unless a wait setting is there."""
    env = os.environ if env is None else env
    if not any(name in env for name in WAIT_SETTINGS):
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


def affinity() -> set[int]:
    """The CPUs this process may run on (its affinity mask; all of them where there is none)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def available_cpus(*, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by its cgroup quota (rounded up)."""
    cpus = len(affinity())
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _busy_seconds(cpus: set[int], stat: Path) -> float | None:
    """CPU seconds spent busy (user, nice, system, irq, softirq, steal) since boot on ``cpus``,
    from ``/proc/stat``; None where the file cannot be read."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Keeps torch's thread count at the CPUs that other processes leave idle (module doc).

    ``update()`` is cheap when called often: it samples at most once per ``interval`` seconds.
    Over a sample, others = (busy CPU seconds on our CPUs - our own CPU seconds) / wall seconds,
    and the count becomes ``round(len(cpus) - others)``, clamped to [1, ``limit``].
    """

    def __init__(
        self,
        limit: int,
        *,
        interval: float = 1.0,
        stat: Path = Path("/proc/stat"),
        cpus: set[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        own: Callable[[], float] = time.process_time,
    ) -> None:
        cpus = affinity() if cpus is None else cpus
        self.limit, self.interval, self.stat, self.cpus = limit, interval, stat, cpus
        self.clock, self.own = clock, own
        self.threads = limit
        self.others = 0.0
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        busy = _busy_seconds(self.cpus, self.stat)
        return None if busy is None else (self.clock(), busy, self.own())

    def update(self) -> int:
        """Re-sample when ``interval`` has passed; set and return the thread count."""
        if self._last is None:  # no /proc/stat: a fixed count
            return self.threads
        now = self.clock()
        if now - self._last[0] < self.interval:
            return self.threads
        sample = self._sample()
        if sample is None:
            return self.threads
        wall, busy, own = (b - a for a, b in zip(self._last, sample, strict=True))
        self._last = sample
        if wall <= 0:
            return self.threads
        self.others = max(0.0, (busy - own) / wall)
        free = len(self.cpus) - self.others
        threads = min(self.limit, max(1, int(free + 0.5)))
        if threads != self.threads:
            import torch

            log.info(
                "threads: %d -> %d (other processes kept %.1f of %d CPUs busy)",
                self.threads, threads, self.others, len(self.cpus),
            )  # fmt: skip
            torch.set_num_threads(threads)
            self.threads = threads
        return threads


_governor: ThreadGovernor | None = None


def adapt() -> None:
    """Let the governor of ``set_threads(None)`` follow the machine (no-op without one)."""
    if _governor is not None:
        _governor.update()


def set_threads(threads: int | None = None) -> int:
    """Set torch's thread count for the run: ``threads`` (fixed), or when None or 0,
    ``available_cpus()`` with a ``ThreadGovernor`` that lowers it while other processes keep
    CPUs busy. Returns the starting count. Call once at the start of an entry point."""
    import torch

    global _governor
    n = int(threads) if threads else available_cpus()
    if n < 1:
        raise ValueError(f"threads must be >= 1 (or null for the CPUs available), got {threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _governor = None if threads else ThreadGovernor(n)
    return n


class single_openmp_thread:  # noqa: N801 (used as a ``with`` statement, like torch.no_grad)
    """Runs its block with one OpenMP thread in the calling thread only, for a kernel that is
    only correct on one (spconv's CPU ``scatter_add`` shares its row pointers between threads).

    OpenMP keeps the thread count per thread (the ``nthreads-var`` ICV), so this changes
    nothing in other Python threads, nor torch's own count or MKL's, unlike
    ``torch.set_num_threads``. Every OpenMP runtime in the process is set: spconv's kernels
    bind to whichever one the dynamic linker loaded first (torch's libgomp, or spconv's bundled
    copy); on exit each is set back to torch's thread count. Where no runtime can be found
    (not Linux) it falls back to ``torch.set_num_threads``.
    """

    __slots__ = ("_saved",)
    _setters: list[Callable[[int], Any]] | None = None

    @classmethod
    def setters(cls) -> list[Callable[[int], Any]]:
        """``omp_set_num_threads`` of each loaded OpenMP runtime (libgomp, libiomp5, libomp)."""
        if cls._setters is None:
            found = []
            try:
                maps = Path("/proc/self/maps").read_text()
            except OSError:
                maps = ""
            for path in sorted(set(re.findall(r"(/\S*/lib(?:g|i)?omp[^/\s]*\.so[^/\s]*)", maps))):
                try:
                    found.append(ctypes.CDLL(path).omp_set_num_threads)
                except (OSError, AttributeError):
                    continue
            cls._setters = found
        return cls._setters

    @classmethod
    def _set(cls, n: int) -> None:
        setters = cls.setters()
        if not setters:
            import torch

            torch.set_num_threads(n)
        for set_count in setters:
            set_count(n)

    def __enter__(self) -> None:
        import torch

        self._saved = torch.get_num_threads()
        self._set(1)

    def __exit__(self, *exc: object) -> None:
        self._set(self._saved)
