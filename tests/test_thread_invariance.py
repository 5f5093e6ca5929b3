"""Which CPU results depend on torch's thread count (``pointseg/threads.py``, "Why fixed").

pointseg's own CPU kernels (gather, GEMM and scatter of ``cpu_conv``, the rulebook builder,
grouped and depthwise convs, the voxelizer) give the same bits on 1 and on 2 threads, outputs and
gradients: their work is split by rows whose sums never cross threads, and spconv's scatter
runs on one OpenMP thread. That holds here for the GEMM because MKL does not split these
products' inner dimension across threads; it is measured, not promised by torch.

torch's own reductions are not thread-invariant: a full ``Tensor.sum`` and batch norm's
statistics split their sums by the thread count (the last test shows it where this machine
has 2 CPUs), so a whole training run is reproducible because the entry points fix the count for
the run, not because every op is (``tests/test_reliability.py`` holds that under load).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from pointseg.data import voxelize as vox_module
from pointseg.data.voxelize import Voxelized, voxelize
from pointseg.sparse import (
    SparseConv3d,
    SparseInverseConv3d,
    SubMConv3d,
    rulebook,
    sparse_tensor,
    spatial_shape_for,
    use_backend,
)

B, S = 2, 40  # ~19 k sites a sample: several blocks a kernel offset, parallel torch ops


@pytest.fixture(autouse=True)
def _pointseg_backend() -> Iterator[None]:
    before = torch.get_num_threads()
    with use_backend("pointseg"):
        yield
    torch.set_num_threads(before)


def at_1_and_2_threads(fn: Callable[[], tuple]) -> tuple[tuple, tuple]:
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        results.append(fn())
    return results[0], results[1]


def assert_same_bits(a: tuple, b: tuple) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype and x.shape == y.shape, i
        assert torch.equal(x, y), f"result {i} differs between 1 and 2 threads"


def sites(seed: int, density: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(B, S, S, S, generator=gen) < density).nonzero().int()


def conv_run(make: Callable[[], torch.nn.Module], c_in: int, *, strided_first: bool = False):
    """Forward and backward of one conv (after a strided one for the inverse conv): output,
    input gradient and weight gradient."""

    def run() -> tuple:
        torch.manual_seed(0)
        ind = sites(1)
        feat = torch.randn(ind.shape[0], c_in, requires_grad=True)
        x = sparse_tensor(feat, ind, B, levels=1)
        if strided_first:
            down = SparseConv3d(c_in, c_in, 2, stride=2, indice_key="down", bias=False)
            x = down(x)
        conv = make()
        out = conv(x).features
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        grad_in, grad_w = torch.autograd.grad((out * upstream).sum(), (feat, conv.weight))
        return out.detach(), grad_in, grad_w

    return run


CONVS = {
    "subm": (lambda: SubMConv3d(32, 32, 3, padding=1, indice_key="s", bias=False), False),
    "strided": (lambda: SparseConv3d(32, 48, 2, stride=2, indice_key="d", bias=False), False),
    "inverse": (lambda: SparseInverseConv3d(32, 32, 2, indice_key="down", bias=False), True),
    "grouped": (lambda: SubMConv3d(32, 32, 3, padding=1, indice_key="g", groups=4), False),
    "depthwise": (lambda: SubMConv3d(32, 32, 3, padding=1, indice_key="dw", groups=32), False),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_kernels_same_bits_on_1_and_2_threads(name: str) -> None:
    """Gather, GEMM and scatter (``cpu_conv``; ``grouped`` for groups > 1), forward and
    backward, inside the conv modules as a network calls them."""
    make, strided_first = CONVS[name]
    assert_same_bits(*at_1_and_2_threads(conv_run(make, 32, strided_first=strided_first)))


def test_rulebook_same_bits_on_1_and_2_threads() -> None:
    ind = sites(3)
    shape = spatial_shape_for(ind, 2)

    def run() -> tuple:
        subm = rulebook.subm_pairs(ind, B, shape, [3] * 3)
        out, pairs, counts = rulebook.strided_pairs(ind, B, shape, [2] * 3)
        return (*subm, out, pairs, counts)

    assert_same_bits(*at_1_and_2_threads(run))


@pytest.mark.parametrize("mode", ["mean", "train"])
def test_voxelize_same_bits_on_1_and_2_threads(mode: str, monkeypatch) -> None:
    monkeypatch.setattr(vox_module, "_THREADED_POINTS", 1)  # its threaded passes, on a small cloud
    rng = np.random.default_rng(4)
    coord = rng.uniform(0, 4, (40_001, 3)).astype(np.float32)
    feat = rng.uniform(0, 1, (40_001, 4)).astype(np.float32)

    def run() -> tuple:
        v = voxelize(coord, feat, voxel_size=0.1, mode=mode, seed=0)
        return tuple(
            torch.from_numpy(np.ascontiguousarray(getattr(v, f))) for f in Voxelized._fields
        )

    assert_same_bits(*at_1_and_2_threads(run))


def test_batch_norm_statistics_depend_on_the_thread_count() -> None:
    """Why the entry points fix the count for a run: torch's batch norm (in every block of the
    network) sums its statistics in per-thread parts, so 1 and 2 threads round differently."""
    x = torch.randn(200_000, 32, generator=torch.Generator().manual_seed(0))

    def run() -> tuple:
        return (torch.nn.functional.batch_norm(x, None, None, training=True),)

    a, b = at_1_and_2_threads(run)
    assert not torch.equal(a[0], b[0]), "batch norm is thread-invariant in this torch"
