"""pointseg's thread policy (``pointseg/threads.py``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pointseg import threads


def test_openmp_defaults_only_when_the_user_set_none() -> None:
    env: dict[str, str] = {}
    threads.openmp_env_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(mine)
        threads.openmp_env_defaults(env)
        assert env == mine


def test_import_sets_the_wait_policy_before_torch_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env.pop("GOMP_SPINCOUNT", None)
    code = "import os, pointseg, torch; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr


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
        assert threads.set_threads(None) == threads.available_cpus()
        assert torch.get_num_threads() == threads.available_cpus()
        with pytest.raises(ValueError, match="threads"):
            threads.set_threads(-2)
    finally:
        torch.set_num_threads(before)
