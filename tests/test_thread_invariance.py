"""A training step gives the same bits on 1 and on 2 threads (``pointseg/threads.py``).

Every CPU op of a step is thread-invariant, outputs and gradients:

- pointseg's sparse-conv kernels (gather, GEMM and scatter of ``cpu_conv``, the rulebook
  builder, grouped and depthwise convs) and the voxelizer split their work by rows whose sums
  never cross threads, and spconv's scatter runs on one OpenMP thread;
- MKL's GEMMs (the convs' products, ``nn.Linear``) run in its strict reproducible mode
  (``MKL_CBWR=AUTO,STRICT``, set when pointseg is imported): without it a product over many rows
  splits its inner sum between threads;
- pointseg's ``BatchNorm1d`` sums its statistics per channel (torch's kernel sums in
  per-thread parts: the last test shows it), and ``gather_rows`` adds each point's gradient into
  its voxel in point order (``x[index]``'s backward does not).

So a count that changes with the machine's load cannot change the model; the whole step is
checked on every network plan at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from pointseg.callbacks import thread_invariant_gemm
from pointseg.data import voxelize as vox_module
from pointseg.data.voxelize import Voxelized, voxelize
from pointseg.models.blocks import BN_EPS, BN_MOMENTUM, batch_norm, gather_rows
from pointseg.sparse import (
    SparseConv3d,
    SparseInverseConv3d,
    SubMConv3d,
    rulebook,
    sparse_tensor,
    spatial_shape_for,
    use_backend,
)
from pointseg.train import build, train
from tests.conftest import TINY, TINY_MODEL

B, S = 2, 40  # ~19 k sites a sample: several blocks a kernel offset, parallel torch ops


# MKL's strict mode covers its AVX2 and AVX-512 code paths only (MKL's documented condition);
# on other CPUs, or another BLAS, a product over many rows may still depend on the thread count
strict_gemm = pytest.mark.skipif(
    not thread_invariant_gemm(),
    reason="MKL's strict reproducible mode needs MKL on an AVX2 or AVX-512 CPU",
)


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


def test_torch_batch_norm_depends_on_the_thread_count() -> None:
    """Why pointseg has its own ``BatchNorm1d``: torch's kernel sums its statistics in
    per-thread parts, so 1 and 2 threads round differently."""
    x = torch.randn(200_000, 32, generator=torch.Generator().manual_seed(0))

    def run() -> tuple:
        return (torch.nn.functional.batch_norm(x, None, None, training=True),)

    a, b = at_1_and_2_threads(run)
    assert not torch.equal(a[0], b[0]), "batch norm is thread-invariant in this torch"


@pytest.mark.parametrize("channels", [13, 32, 48])
def test_batch_norm_same_bits_on_1_and_2_threads(channels: int) -> None:
    x0 = torch.randn(150_000, channels, generator=torch.Generator().manual_seed(0)) * 3 + 1
    upstream = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    def run() -> tuple:
        bn = batch_norm(channels)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
        x = x0.clone().requires_grad_(True)
        out = bn(x)
        grads = torch.autograd.grad((out * upstream).sum(), (x, bn.weight, bn.bias))
        return out.detach(), *grads, bn.running_mean.clone(), bn.running_var.clone()

    a, b = at_1_and_2_threads(run)
    assert_same_bits(a, b)
    # and it is batch norm: torch's kernel agrees to rounding, running statistics included
    ref = torch.nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    x = x0.clone().requires_grad_(True)
    out = ref(x)
    grads = torch.autograd.grad((out * upstream).sum(), (x, ref.weight, ref.bias))
    want = (out.detach(), *grads, ref.running_mean, ref.running_var)
    for got, exp in zip(a, want, strict=True):  # weight and bias gradients: sums of 150 k rows
        torch.testing.assert_close(got, exp, rtol=1e-3, atol=5e-3)


@strict_gemm
def test_linear_and_gather_same_bits_on_1_and_2_threads() -> None:
    """The head's GEMM over 200 k rows (MKL's strict mode) and the voxel -> point gather."""
    g = torch.Generator().manual_seed(0)
    voxels, index = torch.randn(40_000, 32, generator=g), torch.randint(0, 40_000, (200_000,))
    upstream = torch.randn(200_000, 9, generator=g)

    def run() -> tuple:
        torch.manual_seed(0)
        head = torch.nn.Linear(32, 9)
        x = voxels.clone().requires_grad_(True)
        out = head(gather_rows(x, index))
        grads = torch.autograd.grad((out * upstream).sum(), (x, head.weight, head.bias))
        return out.detach(), *grads

    a, b = at_1_and_2_threads(run)
    assert_same_bits(a, b)
    x = voxels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((x[index] * upstream[:, :1]).sum(), (x,))
    x2 = voxels.clone().requires_grad_(True)
    (grad2,) = torch.autograd.grad((gather_rows(x2, index) * upstream[:, :1]).sum(), (x2,))
    torch.testing.assert_close(grad2, grad)  # the same gradient as x[index], to rounding


NETWORKS = {
    "spunet_small": [],
    "point_branch": [
        "+data.train_transforms.6.point_features=true",
        "+model.net.point_channels=16",
    ],
    "spunet_lite": ["model=spunet_lite"],
    "o3dml_plan": ["model=o3dml_plan", "model.class_weights=[1,2,3,0.5,1,1.5,2,0.7,1.1]"],
}


@strict_gemm
@pytest.mark.parametrize("name", list(NETWORKS))
def test_training_step_same_bits_on_1_and_2_threads(name: str, compose_cfg) -> None:
    """One step of each plan through its real config (data, loss, AdamW), 1 against 2
    threads: the loss, every gradient and every BatchNorm buffer, and the weights after the
    optimizer's step."""
    cfg = compose_cfg("train", ["data.train_dataset.num_scenes=2", *NETWORKS[name]])

    def run() -> tuple:
        pl.seed_everything(0)
        datamodule, module = build(cfg)
        datamodule.setup("fit")
        module.train()
        batch = next(iter(datamodule.train_dataloader()))
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
        loss = module.model_step(batch)[0]
        loss.backward()
        grads = [p.grad.clone() for p in module.parameters()]
        opt.step()
        state = [t.detach().clone() for t in module.state_dict().values()]
        return loss.detach(), *grads, *state

    assert_same_bits(*at_1_and_2_threads(run))


class AlternateThreads(pl.Callback):
    """Runs every training batch on 1 or 2 threads in turn (a governor at its most restless)."""

    def on_train_batch_start(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        torch.set_num_threads(1 + trainer.global_step % 2)


@strict_gemm
def test_a_run_whose_thread_count_changes_every_step_trains_the_same_model(compose_cfg) -> None:
    """What makes ``FollowLoad`` result-neutral: a run at 2 fixed threads and a run whose count
    changes at every step give the same weights and validation scores, bit for bit."""
    before = torch.get_num_threads()
    base = [*TINY, *TINY_MODEL, "seed=3", "logger=none", "follow_load=false"]
    base += ["data.train_dataset.num_scenes=4", "callbacks.progress_bar.refresh_rate=0"]
    results = []
    try:
        for extra in ([], ["+callbacks.alternate._target_=" + f"{__name__}.AlternateThreads"]):
            torch.set_num_threads(2)
            cfg = compose_cfg("train", [*base, *extra])
            cfg.paths.output_dir = str(Path(cfg.paths.output_dir) / str(len(extra)))
            results.append(train(cfg))
    finally:
        torch.set_num_threads(before)
    a, b = results
    assert a["last_val"] == b["last_val"]
    wa, wb = (torch.load(r["best_ckpt"], weights_only=False)["state_dict"] for r in results)
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
