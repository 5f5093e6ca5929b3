"""``pointseg.sparse.config``: one ``SparseConfig``, recorded by a tensor when it is made and read
once; a per-module override; the scoped spconv workaround; no import cycle in the layer."""

import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import spconv.pytorch as spconv
import torch
from spconv.pytorch import cppcore, ops
from spconv.pytorch.core import IndiceData

from pointseg import sparse
from pointseg.models.o3dml_plan import O3DMLPlanUNet
from pointseg.sparse import SparseConfig, config, grouped, tensor
from pointseg.sparse.rulebook import Rulebook
from tests.test_rulebook import scene

SPARSE = Path(sparse.__file__).parent


def _net() -> O3DMLPlanUNet:
    torch.manual_seed(0)
    return O3DMLPlanUNet(3, 5, widths=[8, 16, 24]).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ind = scene(7, batch=2, size=20)
    return torch.randn(ind.shape[0], 3, generator=torch.Generator().manual_seed(0)), ind


def _convs(net: torch.nn.Module) -> list[sparse.SparseConvNd]:
    return [m for m in net.modules() if isinstance(m, sparse.SparseConvNd)]


def _record_rulebooks(net: torch.nn.Module) -> list:
    """Each conv's input rulebook of its key, appended by a forward hook."""
    seen: list = []
    for conv in _convs(net):
        conv.register_forward_hook(lambda m, a, out: seen.append(out.indice_dict[m.indice_key]))
    return seen


def test_config_object_and_its_one_switch() -> None:
    assert sparse.get_config() == SparseConfig() == SparseConfig("pointseg", False)
    with pytest.raises(ValueError, match="unknown sparse-conv backend"):
        SparseConfig(backend="torchsparse")
    with pytest.raises(TypeError, match="fused_depthwise"):
        SparseConfig(fused_depthwise=1)
    with pytest.raises(AttributeError):
        sparse.get_config().backend = "spconv"  # frozen
    with sparse.use_config(backend="spconv") as cfg:
        assert cfg == sparse.get_config() == SparseConfig(backend="spconv")
        with grouped.use_fused_depthwise():  # the old names are the same switch
            assert sparse.get_config() == SparseConfig("spconv", True)
        assert sparse.get_backend() == "spconv" and not sparse.get_config().fused_depthwise
    assert sparse.get_config() == SparseConfig()
    with pytest.raises(TypeError):
        sparse.set_config(threads=2)
    assert sparse.get_config() == SparseConfig()


def test_environment_sets_the_starting_backend() -> None:
    code = "from pointseg.sparse import get_config; print(get_config().backend)"
    env = dict(os.environ, POINTSEG_SPARSE_BACKEND="spconv")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "spconv", out.stderr


def test_tensor_records_the_config_and_derived_tensors_keep_it() -> None:
    feat, ind = _inputs()
    with sparse.use_backend("spconv"):
        x = sparse.sparse_tensor(feat, ind, 2, levels=2)
    assert sparse.config_of(x) == SparseConfig(backend="spconv")
    y = spconv.SparseSequential(sparse.SubMConv3d(3, 4, 3, indice_key="s"), torch.nn.ReLU())(x)
    assert sparse.config_of(y) == SparseConfig(backend="spconv")  # the default is pointseg
    assert isinstance(y.indice_dict["s"], IndiceData)
    mine = SparseConfig(fused_depthwise=True)
    assert sparse.config_of(sparse.sparse_tensor(feat, ind, 2, levels=2, config=mine)) is mine
    with pytest.raises(TypeError, match="SparseConfig"):
        sparse.sparse_tensor(feat, ind, 2, levels=2, config="spconv")
    with pytest.raises(ValueError, match="reserved"):
        sparse.SubMConv3d(3, 4, 3, indice_key=tensor.CONFIG_KEY)(x)


def test_backend_switched_mid_forward_runs_the_whole_forward_on_the_tensors() -> None:
    """A switch of the default inside a forward (here: a hook after the first conv) changes
    nothing: every conv runs on the tensor's backend, the output bit for bit the plain one's.
    Reading the default per conv would build spconv rulebooks, or refuse the shared keys."""
    feat, ind = _inputs()
    with torch.no_grad():
        want = _net()(feat, ind, 2)
        net = _net()
        seen = _record_rulebooks(net)
        switch = _convs(net)[0].register_forward_hook(lambda *a: sparse.set_backend("spconv"))
        try:
            got = net(feat, ind, 2)
        finally:
            switch.remove()
            sparse.set_backend("pointseg")
    assert len(seen) == len(_convs(net)) and all(isinstance(rb, Rulebook) for rb in seen)
    assert torch.equal(got, want)


def test_config_is_read_once_per_tensor(monkeypatch) -> None:
    """The default is read when the tensor is made and never again in its forward; a plain
    spconv tensor reads it at its first conv only."""
    reads: list[SparseConfig] = []

    def counted() -> SparseConfig:
        reads.append(config._default)
        return config._default

    monkeypatch.setattr(tensor, "get_config", counted)
    feat, ind = _inputs()
    with torch.no_grad():
        _net()(feat, ind, 2)
    assert len(reads) == 1
    plain = spconv.SparseConvTensor(feat, ind, sparse.spatial_shape_for(ind, 0), 2)
    convs = [sparse.SubMConv3d(3, 4, 3, indice_key="s"), sparse.SubMConv3d(4, 4, 3, indice_key="s")]
    with torch.no_grad():
        out = convs[1](convs[0](plain))
    assert len(reads) == 2 and sparse.config_of(out) == SparseConfig()


def test_per_module_override_runs_that_conv_only() -> None:
    feat, ind = _inputs()
    torch.manual_seed(1)
    first = sparse.SubMConv3d(3, 8, 3, padding=1, indice_key="a")
    spc = sparse.SubMConv3d(8, 8, 3, padding=1, indice_key="b",
                            sparse_config=SparseConfig(backend="spconv"))  # fmt: skip
    last = sparse.SubMConv3d(8, 4, 3, padding=1, indice_key="a")
    assert "sparse_config=SparseConfig(backend='spconv'" in repr(spc)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's scatter-add is exact on one thread only
    try:
        x = sparse.sparse_tensor(feat, ind, 2, levels=0)
        y = spc(first(x))
        out = last(y)
        spc.sparse_config = None  # the attribute can be set after construction, too
        ref = last(spc(first(x)))
    finally:
        torch.set_num_threads(before)
    assert isinstance(y.indice_dict["a"], Rulebook) and isinstance(y.indice_dict["b"], IndiceData)
    assert sparse.config_of(y) == SparseConfig()  # the tensor keeps its record
    assert isinstance(out.indice_dict["a"], Rulebook)
    torch.testing.assert_close(out.features, ref.features, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="SparseConfig"):
        sparse.SubMConv3d(3, 3, 3, sparse_config="spconv")


def test_override_of_fused_depthwise_reaches_the_kernel(monkeypatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(grouped, "fused_depthwise", lambda f, s, n: calls.append(True) or f * 0)
    feat, ind = _inputs()
    dw = sparse.SubMConv3d(3, 3, 3, padding=1, indice_key="k", groups=3)
    x = sparse.sparse_tensor(feat, ind, 2, levels=0)
    dw(x)
    assert calls == []
    dw.sparse_config = SparseConfig(fused_depthwise=True)
    dw(x)
    assert calls == [True]


def test_allow_cpu_backward_is_scoped_nested_and_restored() -> None:
    spconvs = cppcore.get_current_stream
    assert ops.get_current_stream is spconvs
    with sparse.allow_cpu_backward():
        inner = ops.get_current_stream
        if not torch.cuda.is_available():
            assert inner is not spconvs and inner() == 0
        with sparse.allow_cpu_backward():
            assert ops.get_current_stream is inner
        assert ops.get_current_stream is inner  # re-entrant: the outer block still holds it
    assert ops.get_current_stream is spconvs
    with pytest.raises(KeyError), sparse.allow_cpu_backward():
        raise KeyError("restored on errors too")
    assert ops.get_current_stream is spconvs
    go = threading.Barrier(4)

    def overlapping() -> None:
        go.wait()
        for _ in range(200):
            with sparse.allow_cpu_backward():
                pass

    workers = [threading.Thread(target=overlapping) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert ops.get_current_stream is spconvs


def test_spconv_backend_trains_on_the_cpu_and_leaves_spconv_unchanged() -> None:
    """spconv's CPU backward needs the workaround, entered around it only."""
    feat, ind = _inputs()
    feat.requires_grad_()
    net = _net()
    with sparse.use_backend("spconv"):
        out = net(feat, ind, 2)
    assert ops.get_current_stream is cppcore.get_current_stream
    out.square().sum().backward()
    assert ops.get_current_stream is cppcore.get_current_stream
    assert feat.grad is not None and all(p.grad is not None for p in net.parameters())


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, function-local imports too; ``from a import b`` names
    ``a`` and, where ``b`` is a module of pointseg.sparse, ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the package pointseg.sparse
                module = ".".join(["pointseg", "sparse", *filter(None, [module])])
            found.add(module)
            if module == "pointseg.sparse":
                found.update(f"{module}.{a.name}" for a in node.names
                             if (SPARSE / f"{a.name}.py").exists())  # fmt: skip
    return found


def test_no_sparse_module_imports_the_package_and_there_is_no_cycle() -> None:
    modules = {f"pointseg.sparse.{p.stem}": p for p in SPARSE.glob("*.py") if p.stem != "__init__"}
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    for name, path in modules.items():
        assert "pointseg.sparse" not in _imports(path), f"{name} imports the package itself"
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join([*path, name, dep])}"
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert graph["pointseg.sparse.functional"] >= {"pointseg.sparse.tensor"}
