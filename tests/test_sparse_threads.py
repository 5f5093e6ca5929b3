"""pointseg's thread policy (``pointseg/threads.py``): one count per run, set by the entry point."""

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
    assert env == {**threads.OPENMP_DEFAULTS, **threads.MKL_DEFAULTS} and "GOMP_SPINCOUNT" in env
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(mine)
        threads.openmp_env_defaults(env)
        assert env == {**mine, **threads.MKL_DEFAULTS}
    env = {"MKL_CBWR": "COMPATIBLE"}
    threads.openmp_env_defaults(env)
    assert env == {"MKL_CBWR": "COMPATIBLE", **threads.OPENMP_DEFAULTS}


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


def test_thread_count_prefers_the_config_then_omp_num_threads_then_the_cpus() -> None:
    assert threads.thread_count(3, env={"OMP_NUM_THREADS": "2"}) == 3
    assert threads.thread_count(None, env={"OMP_NUM_THREADS": "2"}) == 2
    assert threads.thread_count(0, env={"OMP_NUM_THREADS": "4,1"}) == 4  # nested: outer level
    assert threads.thread_count(None, env={}) == threads.available_cpus()
    assert threads.thread_count(None, env={"OMP_NUM_THREADS": " "}) == threads.available_cpus()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        threads.thread_count(-2, env={})
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        threads.thread_count(None, env={"OMP_NUM_THREADS": "many"})
    with pytest.raises(ValueError, match="OMP_NUM_THREADS must be >= 1"):
        threads.thread_count(None, env={"OMP_NUM_THREADS": "0"})


def test_set_threads_fixes_the_count_and_exports_an_explicit_one(monkeypatch) -> None:
    """An explicit count goes to ``OMP_NUM_THREADS`` too, so DDP ranks the run starts use it
    (Lightning keeps a set ``OMP_NUM_THREADS``); the default exports nothing, so Lightning can
    give each rank its share."""
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", threads.RUN_PID):
        monkeypatch.setenv(name, "")  # restored (or removed) after the test
        monkeypatch.delenv(name)
    try:
        assert threads.set_threads(None) == threads.available_cpus()
        assert torch.get_num_threads() == threads.available_cpus()
        assert "OMP_NUM_THREADS" not in os.environ
        assert threads.set_threads(1) == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert threads.set_threads(None) == 1  # now from OMP_NUM_THREADS
        assert os.environ[threads.RUN_PID] == str(os.getpid())  # for the run's own processes
    finally:
        torch.set_num_threads(before)


def test_nothing_in_the_conv_path_changes_the_thread_count(monkeypatch) -> None:
    """A forward and backward of the network never calls ``torch.set_num_threads``."""
    from pointseg.models.sparse_unet import SparseUNet

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    gen = torch.Generator().manual_seed(0)
    ind = (torch.rand(2, 12, 12, 12, generator=gen) < 0.3).nonzero().int()
    net = SparseUNet(3, 4, stem_channels=8, channels=[8] * 8, layers=[1] * 8)
    net(torch.randn(ind.shape[0], 3), ind, 2).sum().backward()
    assert calls == []


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


def test_busy_machine_hint_only_for_a_default_count_on_a_loaded_machine() -> None:
    assert threads.busy_machine_hint(2, load=0.3) is None
    assert threads.busy_machine_hint(1, load=5.0) is None
    hint = threads.busy_machine_hint(2, load=1.4)
    assert hint is not None and "load average 1.4" in hint and "threads=1" in hint


class FakeMachine:
    """``/proc/stat`` of 2 CPUs, a clock and this run's CPU seconds, moved by the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.stat, self.now, self.busy, self.ours = tmp_path / "stat", 0.0, 0.0, {1: 0.0}
        self.write()

    def write(self) -> None:
        ticks = int(self.busy * os.sysconf("SC_CLK_TCK") / 2)
        line = f"{ticks} 0 0 1000 0 0 0 0 0 0"
        self.stat.write_text(f"cpu 0 0 0 0 0 0 0 0\ncpu0 {line}\ncpu1 {line}\n")

    def advance(self, seconds: float, *, others: float, ours: float, child: float = 0.0) -> None:
        """``seconds`` pass with ``others`` CPUs busy outside the run, ``ours`` in this
        process and ``child`` in a process of the run."""
        self.now += seconds
        self.busy += seconds * (others + ours + child)
        self.ours = {1: self.ours[1] + seconds * ours, 2: self.ours.get(2, 0.0) + seconds * child}
        self.write()

    def governor(self) -> threads.ThreadGovernor:
        return threads.ThreadGovernor(
            2, cpus={0, 1}, stat=self.stat, clock=lambda: self.now, ours=lambda: dict(self.ours)
        )


def test_governor_lowers_the_count_for_other_processes_only(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    machine = FakeMachine(tmp_path)
    try:
        gov = machine.governor()
        machine.advance(0.3, others=1.0, ours=1.0)
        assert gov.update() == 1 and torch.get_num_threads() == 1  # the first sample: 0.25 s
        machine.advance(0.5, others=0.0, ours=1.0)
        assert gov.update() == 1  # then once per second: no new sample yet
        machine.advance(1.5, others=0.0, ours=1.0, child=1.0)  # its own worker: not "others"
        assert gov.update() == 2 and torch.get_num_threads() == 2
        assert gov.others == pytest.approx(0.0, abs=0.05)
        machine.advance(2, others=1.0, ours=1.0)
        assert gov.update() == 1 and gov.others == pytest.approx(1.0, abs=0.05)
        gov.reset()
        assert gov.threads == 2 and torch.get_num_threads() == 2
        machine.advance(2, others=0.1, ours=1.0)
        assert gov.update() == 2  # a little load leaves the count alone
        machine.advance(2, others=1.8, ours=0.2)
        assert gov.update() == 1  # never below 1
        gov.ranks = 2  # two ranks of the run on this machine: each takes half of what is free
        machine.advance(2, others=0.0, ours=2.0)
        assert gov.update() == 1
    finally:
        torch.set_num_threads(before)


def test_run_root_and_process_tree_see_the_runs_own_children(monkeypatch) -> None:
    """A child of this process counts as the run's (a DataLoader worker, a DDP rank), and a
    child that inherits ``RUN_PID`` finds this process as its run's root."""
    monkeypatch.delenv(threads.RUN_PID, raising=False)
    assert threads.run_root() == os.getpid()
    code = "from pointseg import threads; print(threads.run_root())"
    env = dict(os.environ, **{threads.RUN_PID: str(os.getpid())})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(os.getpid()), out.stderr
    # the pid of a process that is not an ancestor (a finished one): ignored
    stranger = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
    env[threads.RUN_PID] = stranger
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() != stranger and out.stdout.strip() != str(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        tree = threads.tree_cpu_seconds(os.getpid())
        assert os.getpid() in tree and child.pid in tree and tree[child.pid] > 0
        # the fallback for kernels without children lists finds the same tree
        by_scan = threads._tree_by_scan(os.getpid(), Path("/proc"), os.sysconf("SC_CLK_TCK"))
        assert by_scan.keys() == tree.keys()
        assert child.pid not in threads.tree_cpu_seconds(child.pid + 10**7)
    finally:
        child.kill()
        child.wait()


def test_follow_load_takes_the_count_the_strategy_left_and_restores_it() -> None:
    """Lightning's DDP launcher may set each rank's share after the callback is made: the
    governor's ceiling is the count at ``setup``, shared by the ranks on this machine."""
    from types import SimpleNamespace

    from pointseg.callbacks import FollowLoad

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        follow = FollowLoad()
        torch.set_num_threads(1)  # the launcher's per-rank share
        cpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")),
                              num_devices=2)  # fmt: skip
        follow.setup(cpu, None, "fit")
        assert follow.governor is not None
        assert (follow.governor.limit, follow.governor.ranks) == (1, 2)
        follow.teardown(cpu, None, "fit")
        assert torch.get_num_threads() == 1
        gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
        follow.setup(gpu, None, "fit")
        assert follow.governor is None  # nothing to follow on an accelerator
    finally:
        torch.set_num_threads(before)


def test_only_the_entry_points_add_follow_load(monkeypatch) -> None:
    """``train()``, ``evaluate()`` and ``predict()`` follow the load only when given the
    callback; the console scripts give it unless ``follow_load=false`` or the GEMMs are not
    thread-invariant here (then the count stays fixed, so results stay reproducible)."""
    import inspect

    from omegaconf import OmegaConf

    from pointseg.callbacks import FollowLoad, block_hook, entry_callbacks, thread_invariant_gemm
    from pointseg.eval import evaluate
    from pointseg.predict.run import predict
    from pointseg.train import train

    before = torch.get_num_threads()
    monkeypatch.setenv(threads.RUN_PID, "")  # entry_callbacks sets it: restored after the test
    on = OmegaConf.create({"follow_load": True, "threads": None})
    try:
        if thread_invariant_gemm():
            (follow,) = entry_callbacks(on)
            assert isinstance(follow, FollowLoad) and block_hook([follow]) == follow.update
        torch.set_num_threads(1)
        monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # MKL reproducible only at a fixed count
        assert not thread_invariant_gemm() and entry_callbacks(on) == []
        assert torch.get_num_threads() == threads.thread_count(None)  # and it set the count
        assert entry_callbacks(OmegaConf.create({"follow_load": False})) == []
        assert block_hook([]) is None
    finally:
        torch.set_num_threads(before)
    for fn in (train, evaluate, predict):
        assert inspect.signature(fn).parameters["callbacks"].default == ()
