"""``reuse_freed_memory``: large freed blocks are reused instead of faulted back in."""

import os
import subprocess
import sys

import pytest

FAULTS = """
import resource, torch
from pointseg.utils import reuse_freed_memory
applied = reuse_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds = []
for _ in range(5):  # a training step's large tensors (40-120 MB), then freed together
    before = faults()
    live = [torch.ones(n) for n in (10_000_000, 25_000_000, 15_000_000, 30_000_000)]
    del live
    rounds.append(faults() - before)
print(applied, *rounds)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_reuse_freed_memory_stops_page_faults_on_reallocation(setting: str) -> None:
    """Freed large tensors are reused: the next rounds fault far fewer pages back in."""
    env = {**os.environ, "POINTSEG_REUSE_MEMORY": setting}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    applied, first, later = out[-6] == "True", int(out[-5]), [int(x) for x in out[-4:]]
    assert first > 70_000  # 300 MB of fresh pages
    if setting == "0":  # glibc unmaps every block on free: each round faults them all again
        assert not applied and min(later) > 0.9 * first
    else:
        assert applied and sum(later) < first
