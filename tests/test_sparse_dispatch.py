"""``pointseg.sparse``: the backend setting, explicit dispatch, rulebook reuse, threads, and
interplay with plain spconv layers. No test here relies on spconv being patched."""

import subprocess
import sys

import pytest
import spconv.pytorch as spconv
import torch

from pointseg import sparse
from pointseg.models.o3dml_plan import O3DMLPlanUNet
from pointseg.sparse import rulebook
from tests.test_rulebook import scene


def test_importing_pointseg_changes_nothing_in_spconv() -> None:
    code = (
        "import spconv.pytorch.ops as o, spconv.pytorch.cppcore as c, spconv.pytorch.conv as v\n"
        "from spconv.core_cc.csrc.sparse.all import SpconvOps\n"
        "before = (o.get_current_stream, o.SpconvOps, o.indice_conv, v.SparseConvolution.forward)\n"
        "import pointseg.models.sparse_unet, pointseg.models.o3dml_plan, pointseg.sparse\n"
        "after = (o.get_current_stream, o.SpconvOps, o.indice_conv, v.SparseConvolution.forward)\n"
        "assert before == after and o.SpconvOps is SpconvOps, after\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_setting() -> None:
    assert sparse.get_backend() == "pointseg"
    with sparse.use_backend("spconv"):
        assert sparse.get_backend() == "spconv"
    assert sparse.get_backend() == "pointseg"
    with pytest.raises(ValueError, match="unknown sparse-conv backend"):
        sparse.set_backend("torchsparse")


def _tiny_net() -> O3DMLPlanUNet:
    torch.manual_seed(0)
    return O3DMLPlanUNet(3, 5, widths=[8, 16, 24])


def test_rulebooks_built_once_per_key_and_reused_by_backward(monkeypatch) -> None:
    built: list[bool] = []
    real = rulebook.build
    monkeypatch.setattr(rulebook, "build", lambda *a, **k: built.append(k["subm"]) or real(*a, **k))
    monkeypatch.setattr("pointseg.sparse.functional.build", rulebook.build)
    ind = scene(1, batch=2, size=20)
    feat = torch.randn(ind.shape[0], 3)
    net = _tiny_net()
    net(feat, ind, 2).square().sum().backward()
    # 3 levels: one submanifold rulebook per level, one per downsampling; 11 convs in all
    assert sorted(built) == [False, False, True, True, True]
    assert all(p.grad is not None for p in net.parameters())


def _conv_stack() -> torch.nn.ModuleList:
    torch.manual_seed(0)
    return torch.nn.ModuleList([sparse.SubMConv3d(3, 16, 3, padding=1, indice_key="s"),
                                sparse.SparseConv3d(16, 32, 2, stride=2, indice_key="d"),
                                sparse.SubMConv3d(32, 32, 3, padding=1, indice_key="s1"),
                                sparse.SparseInverseConv3d(32, 8, 2, indice_key="d")])  # fmt: skip


def test_many_threads_are_exact_and_never_toggled(monkeypatch) -> None:
    """The scatter-adds are exact on any number of threads (spconv's own kernel is not), and
    the conv path never changes torch's thread count."""
    ind = scene(2, batch=2, size=24)
    feat = torch.randn(ind.shape[0], 3, requires_grad=True)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 4):
            torch.set_num_threads(threads)
            with monkeypatch.context() as m:
                m.setattr(torch, "set_num_threads", lambda n: pytest.fail("threads toggled"))
                x = sparse.sparse_tensor(feat, ind, 2, levels=1)
                for conv in _conv_stack():
                    x = conv(x)
                (grad,) = torch.autograd.grad(x.features.square().sum(), feat)
            results.append((x.features, grad))
    finally:
        torch.set_num_threads(before)
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


def test_cpu_convs_never_change_the_thread_count(monkeypatch) -> None:
    """The count is the entry point's, fixed for the run (pointseg/threads.py): nothing in the
    dispatch or the kernels sets it, whatever the machine's load."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    ind = scene(2, batch=2, size=24)
    x = sparse.sparse_tensor(torch.randn(ind.shape[0], 3), ind, 2, levels=1)
    for conv in _conv_stack():
        x = conv(x)
    assert calls == []


def test_state_dict_is_spconv_compatible() -> None:
    """pointseg's modules and spconv's hold the same parameters under the same names, and
    compute the same (spconv on one thread: its own scatter-add races)."""
    ind = scene(3, batch=1, size=12)
    feat = torch.randn(ind.shape[0], 3)
    ours = torch.nn.ModuleList([sparse.SubMConv3d(3, 8, 3, padding=1, indice_key="s"),
                                sparse.SparseConv3d(8, 4, 2, stride=2, indice_key="d"),
                                sparse.SparseInverseConv3d(4, 6, 2, indice_key="d")])  # fmt: skip
    theirs = torch.nn.ModuleList([spconv.SubMConv3d(3, 8, 3, padding=1, bias=False,
                                                    indice_key="s"),
                                  spconv.SparseConv3d(8, 4, 2, stride=2, bias=False,
                                                      indice_key="d"),
                                  spconv.SparseInverseConv3d(4, 6, 2, bias=False,
                                                             indice_key="d")])  # fmt: skip
    theirs.load_state_dict(ours.state_dict())  # strict: same keys and shapes
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outs = []
        for net in (ours, theirs):
            x = sparse.sparse_tensor(feat, ind, 1, levels=1)
            for conv in net:
                x = conv(x)
            outs.append(x.features)
            with sparse.allow_cpu_backward():  # plain spconv layers train on the CPU too
                x.features.sum().backward()
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_a_key_shared_across_backends_is_refused() -> None:
    ind = scene(4, batch=1, size=12)
    x = sparse.sparse_tensor(torch.randn(ind.shape[0], 3), ind, 1, levels=1)
    y = sparse.SubMConv3d(3, 3, 3, padding=1, indice_key="s")(x)
    other = sparse.SubMConv3d(
        3, 3, 3, padding=1, indice_key="s", sparse_config=sparse.SparseConfig(backend="spconv")
    )
    with pytest.raises(RuntimeError, match="another backend"):
        other(y)


def test_wrong_keys_are_refused() -> None:
    ind = scene(5, batch=1, size=12)
    x = sparse.sparse_tensor(torch.randn(ind.shape[0], 3), ind, 1, levels=1)
    y = sparse.SubMConv3d(3, 3, 3, padding=1, indice_key="s")(x)
    with pytest.raises(ValueError, match="submanifold"):
        sparse.SparseInverseConv3d(3, 3, 2, indice_key="s")(y)
    down = sparse.SparseConv3d(3, 3, 2, stride=2, indice_key="d")(y)
    with pytest.raises(ValueError, match="other sites"):
        sparse.SubMConv3d(3, 3, 3, padding=1, indice_key="d")(down)
    with pytest.raises(ValueError, match="indice_key"):
        sparse.SparseInverseConv3d(3, 3, 2)
