"""Grouped and depthwise submanifold convs (``pointseg.sparse.grouped``) against dense
``conv3d(groups=...)`` at the active sites: forward, input and weight gradients, on both
kernels (pointseg's CPU rulebook loop; the neighbour-map path that spconv's rulebooks take)."""

import pytest
import torch
import torch.nn.functional as F
from spconv.pytorch.core import ImplicitGemmIndiceData

from pointseg.sparse import (
    SparseConv3d,
    SubMConv3d,
    get_config,
    grouped,
    sparse_tensor,
    use_backend,
)
from pointseg.sparse.rulebook import build
from tests.test_spconv_dense import (
    TOL,
    B,
    S,
    assert_matches,
    at_sites,
    grads,
    random_sites,
    to_dense,
)

# (C_in, C_out, groups): depthwise, grouped, depthwise with a channel multiplier, one group
CASES = [(6, 6, 6), (4, 6, 2), (3, 6, 3), (4, 5, 1)]


@pytest.fixture(params=["pointseg", "pointseg-1-thread", "spconv"])
def backend(request):
    before = torch.get_num_threads()
    # pointseg on >= 2 threads, so a scatter race would show, and on 1 (other code paths);
    # spconv's own (groups=1) kernel races, so 1
    torch.set_num_threads(max(2, before) if request.param == "pointseg" else 1)
    name = request.param.split("-")[0]
    with use_backend(name):
        yield name
    torch.set_num_threads(before)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize(("c_in", "c_out", "groups"), CASES)
def test_grouped_subm_matches_dense_conv3d(backend, kernel, c_in, c_out, groups) -> None:
    torch.manual_seed(0)
    ind = random_sites(kernel)
    feat = torch.randn(ind.shape[0], c_in, requires_grad=True)
    conv = SubMConv3d(c_in, c_out, kernel, padding=kernel // 2, indice_key="k", groups=groups)
    assert conv.weight.shape == (c_out, kernel, kernel, kernel, c_in // groups)
    out = conv(sparse_tensor(feat, ind, B, levels=0))
    assert torch.equal(out.indices, ind)
    weight = conv.weight.permute(0, 4, 1, 2, 3)  # (out, in / groups, kD, kH, kW)
    dense = F.conv3d(to_dense(feat, ind, S), weight, padding=kernel // 2, groups=groups)
    ref = at_sites(dense, ind)
    assert_matches(out.features, ref, feat, conv.weight)


def test_weight_gradient_without_input_gradient(backend) -> None:
    """The data needs no gradient: only the weight's is computed, and it is still right."""
    torch.manual_seed(1)
    ind = random_sites(4)
    feat = torch.randn(ind.shape[0], 8)
    conv = SubMConv3d(8, 8, 3, padding=1, indice_key="k", groups=8)
    conv(sparse_tensor(feat, ind, B, levels=0)).features.square().sum().backward()
    weight = conv.weight.detach().permute(0, 4, 1, 2, 3).requires_grad_()
    ref = at_sites(F.conv3d(to_dense(feat, ind, S), weight, padding=1, groups=8), ind)
    ref.square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, weight.grad.permute(0, 2, 3, 4, 1), **TOL)


def test_depthwise_shares_the_rulebook_of_a_full_conv(backend) -> None:
    """A depthwise conv after a full conv of the same key reuses its rulebook."""
    torch.manual_seed(2)
    ind = random_sites(5)
    x = sparse_tensor(torch.randn(ind.shape[0], 4), ind, B, levels=0)
    full = SubMConv3d(4, 6, 3, padding=1, indice_key="subm0")
    dw = SubMConv3d(6, 6, 3, padding=1, indice_key="subm0", groups=6)
    mid = full(x)
    out = dw(mid)
    assert out.indice_dict["subm0"] is mid.indice_dict["subm0"]
    w = dw.weight.permute(0, 4, 1, 2, 3)
    ref = at_sites(F.conv3d(to_dense(mid.features, ind, S), w, padding=1, groups=6), ind)
    torch.testing.assert_close(out.features, ref, **TOL)


def test_a_rulebook_of_another_kernel_size_is_refused() -> None:
    ind = random_sites(6)
    x = sparse_tensor(torch.randn(ind.shape[0], 4), ind, B, levels=0)
    x = SubMConv3d(4, 4, 3, padding=1, indice_key="k")(x)
    with pytest.raises(ValueError, match="kernel offsets"):
        SubMConv3d(4, 4, 5, padding=2, indice_key="k", groups=4)(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 6, "out_channels": 4, "groups": 4}, "divide"),
        ({"in_channels": 4, "out_channels": 4, "groups": 0}, ">= 1"),
    ],
)
def test_bad_groups_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SubMConv3d(kernel_size=3, padding=1, indice_key="k", **kwargs)


def test_groups_only_on_submanifold_convs() -> None:
    with pytest.raises(ValueError, match="submanifold only"):
        SparseConv3d(4, 4, 2, stride=2, indice_key="down1", groups=2)


def test_float64_weights_are_refused_on_the_cpu_kernel() -> None:
    ind = random_sites(7)
    x = sparse_tensor(torch.randn(ind.shape[0], 4), ind, B, levels=0)
    conv = SubMConv3d(4, 4, 3, padding=1, indice_key="k", groups=4).double()
    with pytest.raises(TypeError, match="float32"):
        conv(x)


def test_implicit_gemm_rulebook_gives_the_same_neighbours() -> None:
    """spconv's CUDA rulebook lists, per offset, the input row of every output row (pair_fwd,
    -1 where none); its neighbour map must equal the one read from Native pairs. Built here
    from pointseg's rulebook, since spconv builds implicit-GEMM rulebooks on CUDA only."""
    ind = random_sites(8)
    n = ind.shape[0]
    rb = build(ind, B, [S] * 3, subm=True, ksize=[3] * 3, stride=[1] * 3, padding=[1] * 3,
               dilation=[1] * 3)  # fmt: skip
    nbr = grouped.neighbours(rb, n)  # (N, 27), n where absent
    pair_fwd = torch.where(nbr == n, -1, nbr).t().int().contiguous()
    pair_fwd[13] = -1  # the centre is filled in from the row itself
    fake = ImplicitGemmIndiceData(
        rb.indices, rb.indices, pair_fwd, torch.empty(0), [], [], [], [], [], rb.spatial_shape,
        rb.spatial_shape, True, None, [3] * 3, [1] * 3, [1] * 3, [1] * 3,
    )  # fmt: skip
    assert torch.equal(grouped.neighbours(fake, n), nbr)
    assert (nbr[:, 13] == torch.arange(n)).all() and (nbr < n).sum() > 2 * n


@pytest.mark.slow
def test_fused_depthwise_forward_matches_the_loop() -> None:
    """The compiled gather-and-reduce forward (torch.compile) gives the loop's outputs and
    leaves the gradients to the loop's backward."""
    torch.manual_seed(3)
    ind = random_sites(9)
    feat = torch.randn(ind.shape[0], 8, requires_grad=True)
    conv = SubMConv3d(8, 8, 3, padding=1, indice_key="k", groups=8)
    plain = conv(sparse_tensor(feat, ind, B, levels=0)).features
    with grouped.use_fused_depthwise():
        fused = conv(sparse_tensor(feat, ind, B, levels=0)).features
    assert not get_config().fused_depthwise
    torch.testing.assert_close(fused, plain, **TOL)
    upstream = torch.randn_like(plain)
    for g, w in zip(grads(fused, upstream, feat, conv.weight),
                    grads(plain, upstream, feat, conv.weight), strict=True):  # fmt: skip
        torch.testing.assert_close(g, w, **TOL)
