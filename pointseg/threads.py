"""CPU thread policy for every pointseg entry point: how many threads, and how they wait.

- **How many**: one count for the whole run, set once by the entry point (``pointseg-train``,
  ``-eval``, ``-predict``, ``-prune``, ``-submit``: their ``@hydra.main`` wrappers call
  ``set_threads`` before any tensor work) and never changed while it runs. The count is, in
  this order: the config's ``threads: N``; ``OMP_NUM_THREADS``; the CPUs this process may use
  (``available_cpus``: its affinity mask, ``os.sched_getaffinity``, capped by a cgroup CPU
  quota, v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, which
  ``os.cpu_count()`` ignores). Under DDP, Lightning's launcher gives each rank its share
  (``OMP_NUM_THREADS`` = CPUs / ranks, inherited by the ranks it starts), which the second rule
  then keeps. Library functions (``train()``, ``evaluate()``, ``Segmenter``) never change the
  thread count: a caller's own setting is theirs.
- **Why fixed**: torch's CPU reductions (``Tensor.sum`` over all elements, batch norm's
  statistics) split their sums by the thread count, so the same seed on 1 and on 2 threads gives
  different weights; a count that follows the machine's load (the governor pointseg once had)
  makes the model depend on what else ran. pointseg's own sparse-conv kernels give the same bits
  on 1 and 2 threads (``tests/test_thread_invariance.py``); the fixed count is what makes a whole
  run reproducible, quiet machine or busy.
- **How they wait**: OpenMP threads spin for a while at a barrier before they sleep. Sleeping at
  once (``OMP_WAIT_POLICY=PASSIVE``) survives a busy neighbour but cost 1.65x on an idle
  machine (every region pays a wake-up); a short spin (``GOMP_SPINCOUNT``) is the default. OpenMP
  reads it when torch loads it, so ``openmp_env_defaults`` runs in ``pointseg/__init__.py``,
  before torch is imported; a wait setting the user made is kept. Contention figures:
  ``docs/benchmarks.md``, "Threads under contention".
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# libgomp (torch's OpenMP on Linux): spin ~30k iterations (tens of microseconds) at a barrier,
# then sleep; Intel's runtime: 1 ms. See the module doc and docs/benchmarks.md.
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


def thread_count(threads: int | None = None, *, env: Mapping[str, str] | None = None) -> int:
    """The run's thread count: ``threads`` when given (not None or 0), else
    ``OMP_NUM_THREADS`` from ``env`` (``os.environ``) when set, else ``available_cpus()``."""
    env = os.environ if env is None else env
    if threads:
        n, where = int(threads), "threads"
    elif env.get("OMP_NUM_THREADS", "").strip():
        raw = env["OMP_NUM_THREADS"].split(",")[0].strip()  # "4,2": the outer level's count
        try:
            n, where = int(raw), "OMP_NUM_THREADS"
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']!r} is not a count") from None
    else:
        return available_cpus()
    if n < 1:
        raise ValueError(f"{where} must be >= 1 (or unset for the CPUs available), got {n}")
    return n


def set_threads(threads: int | None = None) -> int:
    """Fix torch's thread count for the whole run (``thread_count``) and return it. For entry
    points only, once, before any tensor work; an explicit ``threads`` is also exported as
    ``OMP_NUM_THREADS``, so every process the run starts (DDP ranks) uses it too."""
    import torch

    chosen = bool(threads) or bool(os.environ.get("OMP_NUM_THREADS", "").strip())
    n = thread_count(threads)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.info("torch CPU threads: %d", n)
    hint = None if chosen else busy_machine_hint(n)
    if hint:
        log.warning(hint)
    return n


def busy_machine_hint(n: int, *, load: float | None = None) -> str | None:
    """A warning for a run that takes ``n`` > 1 threads by default on a machine whose 1-minute
    load average (``load``, by default ``os.getloadavg()``) says other processes already keep
    one of its CPUs busy: each OpenMP region then waits for a descheduled thread, so such a run
    can take several times as long as with ``threads=1``. Only a hint; the count stays."""
    if n <= 1:
        return None
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return None
    if load < 1.0:
        return None
    return (
        f"the machine is busy (load average {load:.1f}, {n} threads on {available_cpus()} CPUs): "
        "the thread count stays fixed so that the result does not depend on the load, but "
        "here threads=1 may be much faster (a different, equally reproducible run)"
    )


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
