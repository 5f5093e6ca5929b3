"""CPU thread policy for every pointseg entry point: how many threads, and how they wait.

- **How many, at most**: one count for the run, set once by the entry point (``pointseg-train``,
  ``-eval``, ``-predict``, ``-prune``, ``-submit``: their ``@hydra.main`` wrappers call
  ``set_threads`` before any tensor work). The count is, in this order: the config's
  ``threads: N``; ``OMP_NUM_THREADS``; the CPUs this process may use (``available_cpus``: its
  affinity mask, ``os.sched_getaffinity``, capped by a cgroup CPU quota, v2 ``cpu.max`` or v1
  ``cpu.cfs_quota_us / cpu.cfs_period_us``, which ``os.cpu_count()`` ignores). Under DDP,
  Lightning's launcher gives each rank its share (``OMP_NUM_THREADS`` = CPUs / ranks,
  inherited by the ranks it starts), which the second rule then keeps. Library functions
  (``train()``, ``evaluate()``, ``predict()``, ``Segmenter``) never change the thread count.
- **How many, now** (``follow_load: true``, the default of train, eval and predict): a
  ``ThreadGovernor``, driven between batches by the ``pointseg.callbacks.FollowLoad``
  callback that the entry points pass to them (and between a file's blocks), lowers the count
  while other processes keep CPUs busy and raises it back. Others are everything but this run's
  process tree (``run_root``: its DataLoader workers and DDP ranks are its own). Two OpenMP
  threads next to one busy process wait for each other at every barrier: a training step ran
  6x slower than alone, one thread 1x.
- **Why that changes no result**: every CPU op of a training step gives the same bits on any
  thread count (``tests/test_thread_invariance.py``): pointseg's sparse-conv kernels and
  voxelizer split their work by rows; its ``BatchNorm1d`` and ``gather_rows`` sum per channel
  and in point order, where torch's kernels sum in per-thread parts; MKL's GEMMs run in its
  strict reproducible mode (``MKL_CBWR=AUTO,STRICT``, ``MKL_DEFAULTS``). So the same seed gives
  the same model on a quiet machine or a busy one, on 1 thread or 2.
- **How they wait**: OpenMP threads spin for a while at a barrier before they sleep. Sleeping at
  once (``OMP_WAIT_POLICY=PASSIVE``) survives a busy neighbour but cost 1.65x on an idle
  machine (every region pays a wake-up); a short spin (``GOMP_SPINCOUNT``) is the default. OpenMP
  reads it when torch loads it, and MKL reads ``MKL_CBWR`` at its first call, so
  ``openmp_env_defaults`` runs in ``pointseg/__init__.py``, before torch is imported; a
  setting the user made is kept. Contention figures: ``docs/benchmarks.md``, "Threads under
  contention".
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# libgomp (torch's OpenMP on Linux): spin ~30k iterations (tens of microseconds) at a barrier,
# then sleep; Intel's runtime: 1 ms. See the module doc and docs/benchmarks.md.
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"}
# Set by the user (any of them): the wait policy is theirs and pointseg adds nothing.
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# MKL's strict conditional numerical reproducibility: its GEMMs give the same bits on any thread
# count on AVX2/AVX-512 CPUs (without it, a product over 100 k rows splits its inner sum between
# threads); "AUTO" keeps the fastest path. Read at MKL's first call. A user's MKL_CBWR is kept.
MKL_DEFAULTS = {"MKL_CBWR": "AUTO,STRICT"}


def openmp_env_defaults(env: MutableMapping[str, str] | None = None) -> None:
    """Put ``OPENMP_DEFAULTS`` into ``env`` (``os.environ``) unless a wait setting is there,
    and ``MKL_DEFAULTS`` unless ``MKL_CBWR`` is."""
    env = os.environ if env is None else env
    if not any(name in env for name in WAIT_SETTINGS):
        env.update(OPENMP_DEFAULTS)
    if "MKL_CBWR" not in env:
        env.update(MKL_DEFAULTS)


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


def set_threads(threads: int | None = None, *, follow_load: bool = False) -> int:
    """Set torch's thread count for the run (``thread_count``) and return it. For entry points
    only, once, before any tensor work; an explicit ``threads`` is also exported as
    ``OMP_NUM_THREADS``, so every process the run starts (DDP ranks) uses it too. The run's
    process-tree root (``RUN_PID``) is exported for ``ThreadGovernor``; ``follow_load``: one
    will follow the machine's load (no busy-machine hint then)."""
    import torch

    chosen = bool(threads) or bool(os.environ.get("OMP_NUM_THREADS", "").strip())
    n = thread_count(threads)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ[RUN_PID] = str(run_root())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.info("torch CPU threads: %d%s", n, " (at most, following the load)" if follow_load else "")
    hint = None if chosen or follow_load else busy_machine_hint(n)
    if hint:
        log.warning(hint)
    return n


# The pid whose process tree is this run: its DataLoader workers and DDP ranks (started by it,
# and inheriting the variable) are never "other processes" to ``ThreadGovernor``.
RUN_PID = "POINTSEG_RUN_PID"


def _stat_fields(pid: int | str, proc: Path) -> list[str] | None:
    """The fields after the command name of ``/proc/<pid>/stat`` (field 3 onwards)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _ancestors(pid: int, proc: Path) -> list[int]:
    """``pid`` and its ancestors, nearest first."""
    chain = [pid]
    while pid > 1:
        fields = _stat_fields(pid, proc)
        if fields is None:
            break
        pid = int(fields[1])  # ppid
        chain.append(pid)
    return chain


def run_root(*, env: Mapping[str, str] | None = None, proc: Path = Path("/proc")) -> int:
    """The root of this run's process tree: ``RUN_PID`` where it names this process or an
    ancestor (a DDP rank or worker of the run); the parent under torchrun, whose agent starts
    the ranks; else this process."""
    env = os.environ if env is None else env
    chain = _ancestors(os.getpid(), proc)
    raw = env.get(RUN_PID, "")
    if raw.isdigit() and int(raw) in chain:
        return int(raw)
    if "TORCHELASTIC_RUN_ID" in env and len(chain) > 1:
        return chain[1]
    return chain[0]


def _children(pid: int, proc: Path) -> list[int]:
    """Children of ``pid``, from ``/proc/<pid>/task/*/children`` (none once it has ended)."""
    kids: list[int] = []
    tasks = proc / str(pid) / "task"
    try:
        for task in os.scandir(tasks):
            kids += map(int, (tasks / task.name / "children").read_text().split())
    except OSError:  # the process (or one of its threads) ended meanwhile
        pass
    return kids


def tree_cpu_seconds(root: int, *, proc: Path = Path("/proc")) -> dict[int, float]:
    """CPU seconds (user + system) of ``root`` and of every live descendant, by pid: through the
    kernel's children lists where it has them, else by reading every process's parent."""
    ticks = os.sysconf("SC_CLK_TCK")
    if not (proc / "self" / "task" / str(threading.get_native_id()) / "children").exists():
        return _tree_by_scan(root, proc, ticks)
    found: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        fields = _stat_fields(pid, proc)
        if fields is None or pid in found:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        todo.extend(_children(pid, proc))
    return found


def _tree_by_scan(root: int, proc: Path, ticks: int) -> dict[int, float]:
    parent, cpu = {}, {}  # by pid
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name, proc)
        if fields is None:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in cpu and pid not in found:
            found[pid] = cpu[pid]
            todo.extend(k for k, ppid in parent.items() if ppid == pid)
    return found


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
    """Keeps torch's thread count at the CPUs that other processes leave idle, at most
    ``limit`` (the run's count). Result-neutral: every CPU op of a step gives the same bits on
    any count (``tests/test_thread_invariance.py``). Called between batches by
    ``pointseg.callbacks.FollowLoad`` and between blocks of a file by pointseg-predict.

    ``update()`` is cheap when called often: it samples at most once per ``interval`` seconds
    (the first time after ``first_interval``: a run that starts next to a busy process drops its
    extra thread before its first step). Over a sample, others = (busy CPU seconds on our CPUs
    - this run's, its process tree's: workers and DDP ranks included) / wall seconds; the count
    becomes ``round((len(cpus) - others) / ranks)`` (``ranks``: the run's processes on this
    machine, which share what is free), clamped to [1, ``limit``]. OpenMP threads that miss a
    barrier because a neighbour holds their CPU cost far more than the thread they add: two
    fixed threads next to one busy process ran a step 6x slower than alone, one thread 1x.
    """

    def __init__(
        self,
        limit: int,
        *,
        interval: float = 1.0,
        first_interval: float = 0.25,
        stat: Path = Path("/proc/stat"),
        cpus: set[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ours: Callable[[], dict[int, float]] | None = None,
    ) -> None:
        self.limit, self.interval, self.stat = max(1, limit), interval, stat
        self._wait = first_interval
        self.cpus = affinity() if cpus is None else cpus
        root = run_root()
        self.clock = clock
        self.ours = ours if ours is not None else (lambda: tree_cpu_seconds(root))
        self.threads, self.others, self.ranks = self.limit, 0.0, 1
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, dict[int, float]] | None:
        busy = _busy_seconds(self.cpus, self.stat)
        return None if busy is None else (self.clock(), busy, self.ours())

    def update(self) -> int:
        """Re-sample when ``interval`` has passed; set and return the thread count."""
        if self._last is None:  # no /proc/stat: the run's count
            return self.threads
        if self.clock() - self._last[0] < self._wait:
            return self.threads
        sample = self._sample()
        if sample is None:
            return self.threads
        self._wait = self.interval
        (t0, busy0, ours0), (t1, busy1, ours1) = self._last, sample
        self._last = sample
        wall = t1 - t0
        if wall <= 0:
            return self.threads
        # a process born in the interval counts from 0; one that ended is lost for a sample
        ours = sum(sec - ours0.get(pid, 0.0) for pid, sec in ours1.items())
        self.others = max(0.0, (busy1 - busy0 - ours) / wall)
        free = (len(self.cpus) - self.others) / max(1, self.ranks)
        threads = min(self.limit, max(1, int(free + 0.5)))
        if threads != self.threads:
            log.info(
                "threads: %d -> %d (other processes kept %.1f of %d CPUs busy)",
                self.threads, threads, self.others, len(self.cpus),
            )  # fmt: skip
            self._set(threads)
        return threads

    def reset(self) -> None:
        """Back to the run's count (``limit``), e.g. when a stage ends."""
        if self.threads != self.limit:
            self._set(self.limit)

    def _set(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.threads = threads


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
