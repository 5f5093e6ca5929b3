"""pointseg's thread policy (``pointseg/threads.py``)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pointseg import threads


def test_openmp_defaults_only_when_the_user_set_none() -> None:
    env: dict[str, str] = {}
    threads.openmp_env_defaults(env)
    assert env == threads.OPENMP_DEFAULTS and "GOMP_SPINCOUNT" in env
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(mine)
        threads.openmp_env_defaults(env)
        assert env == mine


def test_import_sets_the_wait_policy_before_torch_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_SETTINGS}
    code = "import os, pointseg, torch; print(os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == threads.OPENMP_DEFAULTS["GOMP_SPINCOUNT"], out.stderr


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_available_cpus_follows_affinity_and_cgroup_quota(tmp_path: Path, files, want) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    got = threads.available_cpus(cgroup_root=tmp_path)
    assert got == (affinity if want is None else min(affinity, want))


def test_set_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == 1 and torch.get_num_threads() == 1
        assert threads._governor is None  # a fixed count is never changed
        assert threads.set_threads(None) == threads.available_cpus()
        assert torch.get_num_threads() == threads.available_cpus()
        assert threads._governor is not None and threads._governor.limit == threads.available_cpus()
        with pytest.raises(ValueError, match="threads"):
            threads.set_threads(-2)
    finally:
        threads._governor = None
        torch.set_num_threads(before)


class FakeMachine:
    """A /proc/stat whose CPUs' busy ticks, this process's CPU time and the clock move on
    ``advance``."""

    def __init__(self, path: Path, cpus: int) -> None:
        self.path, self.cpus = path, cpus
        self.hz = os.sysconf("SC_CLK_TCK")
        self.now, self.own_s = 0.0, 0.0
        self.busy = [0] * (cpus + 1)  # one CPU more than the process may use: never counted
        self.write()

    def write(self) -> None:
        lines = [f"cpu  {sum(self.busy)} 0 0 0 0 0 0 0 0 0"]
        lines += [f"cpu{i} {b} 0 0 1000 0 0 0 0 0 0" for i, b in enumerate(self.busy)]
        self.path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n")

    def advance(self, seconds: float, *, own: float, others: float, extra_cpu: float = 0) -> None:
        """``own`` and ``others`` CPU seconds per wall second spread over the CPUs we may use;
        ``extra_cpu`` CPU seconds per second on the CPU outside our set."""
        per_cpu = (own + others) * seconds / self.cpus
        for i in range(self.cpus):
            self.busy[i] += round(per_cpu * self.hz)
        self.busy[self.cpus] += round(extra_cpu * seconds * self.hz)
        self.now += seconds
        self.own_s += own * seconds
        self.write()


def test_governor_follows_the_cpus_other_processes_leave(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path / "stat", cpus=4)
    before = torch.get_num_threads()
    gov = threads.ThreadGovernor(
        4, interval=1.0, stat=machine.path, cpus={0, 1, 2, 3},
        clock=lambda: machine.now, own=lambda: machine.own_s,
    )  # fmt: skip
    try:
        assert gov.threads == 4
        machine.advance(2, own=4, others=0.1, extra_cpu=1)  # alone; the 5th CPU is not ours
        assert gov.update() == 4
        machine.advance(2, own=2, others=2)  # two busy neighbours
        assert gov.update() == 2 and torch.get_num_threads() == 2
        assert gov.others == pytest.approx(2, abs=0.05)
        machine.advance(0.5, own=0.5, others=3.5)  # within the interval: no new sample
        assert gov.update() == 2
        machine.advance(1.5, own=0.5, others=3.5)  # a third and fourth neighbour
        assert gov.update() == 1 and torch.get_num_threads() == 1
        machine.advance(2, own=1, others=1.4)  # neighbours leave: back up, rounding 2.6 up
        assert gov.update() == 3 and torch.get_num_threads() == 3
        machine.advance(2, own=3, others=0)
        assert gov.update() == 4  # never above the limit
    finally:
        torch.set_num_threads(before)


def test_governor_without_proc_stat_keeps_its_count(tmp_path: Path) -> None:
    gov = threads.ThreadGovernor(3, stat=tmp_path / "missing", interval=0)
    assert gov.update() == 3 and gov.update() == 3


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_governor_drops_threads_next_to_real_busy_processes() -> None:
    """On this machine, with a spinning process on every CPU we may use, the governor's next
    sample finds them and goes to one thread."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 8:
        pytest.skip("more CPUs than this test wants to keep busy")
    before = torch.get_num_threads()
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in cpus]
    try:
        gov = threads.ThreadGovernor(len(cpus), interval=0.5)
        time.sleep(1.0)
        assert gov.update() == 1, f"others={gov.others:.2f}"
        assert torch.get_num_threads() == 1
    finally:
        for p in spin:
            p.kill()
            p.wait()
        torch.set_num_threads(before)


def test_single_openmp_thread_is_local_to_the_calling_thread() -> None:
    """Inside it, this thread's OpenMP regions run on one thread (spconv's racy scatter is then
    exact); another Python thread keeps its count, and the count comes back on exit."""
    import ctypes
    import threading

    from spconv.core_cc.csrc.sparse.all import SpconvOps
    from spconv.pytorch.cppcore import torch_tensor_to_tv as tv

    setters = threads.single_openmp_thread.setters()
    assert setters, "torch's OpenMP runtime was not found in /proc/self/maps"
    omp = ctypes.CDLL(None)  # the runtime the dynamic linker binds first (spconv's kernels)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        target = torch.randperm(60_000, generator=gen)[:50_000].int()
        rows = torch.randn(50_000, 16, generator=gen)
        want = torch.zeros(60_000, 16)
        want[target.long()] = rows
        seen: list[int] = []
        inside = threading.Event()
        done = threading.Event()

        def other() -> None:
            omp.omp_set_num_threads(2)
            inside.wait()
            seen.append(omp.omp_get_max_threads())
            done.set()

        worker = threading.Thread(target=other)
        worker.start()
        with threads.single_openmp_thread():
            assert omp.omp_get_max_threads() == 1
            inside.set()
            done.wait(10)
            for _ in range(5):
                out = torch.zeros(60_000, 16)
                SpconvOps.scatter_add_cpu(tv(out), tv(rows), tv(target))
                assert torch.equal(out, want)
        worker.join()
        assert seen == [2]  # the other thread was never limited
        assert omp.omp_get_max_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
