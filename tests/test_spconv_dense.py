"""pointseg's sparse convs (both backends) against dense torch references: forward, input and
weight gradients.

The sparse features are scattered into a dense (B, C, X, Y, Z) grid (zeros elsewhere) and run
through ``conv3d`` / ``conv_transpose3d`` with the spconv weight ``[out, kD, kH, kW, in]``
permuted to torch's layout; outputs are read back at the sparse output sites. Run with at least
two threads, so a scatter-add race would show up (the default backend; spconv's own races,
so it runs on one thread here).
"""

import pytest
import torch
import torch.nn.functional as F

from pointseg.models.blocks import inverse_conv3d, strided_conv3d, subm_conv3d
from pointseg.sparse import sparse_tensor, use_backend

B, S, C_IN, C_OUT = 2, 10, 3, 4
TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(autouse=True, params=["pointseg", "spconv"])
def backend(request):
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before) if request.param == "pointseg" else 1)
    with use_backend(request.param):
        yield request.param
    torch.set_num_threads(before)


def random_sites(seed: int, density: float = 0.3) -> torch.Tensor:
    """(M, 4) int32 unique [b, x, y, z] sites in a B x S^3 grid (column-major, as nonzero gives)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(B, S, S, S, generator=gen) < density).nonzero().int()


def to_dense(feat: torch.Tensor, ind: torch.Tensor, size: int) -> torch.Tensor:
    """(M, C) features at (M, 4) sites -> (B, C, size, size, size) grid, differentiable."""
    grid = feat.new_zeros(B, feat.shape[1], size, size, size)
    i = ind.long()
    grid[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]] = feat
    return grid


def at_sites(grid: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) grid -> (M, C) values at the (M, 4) sites."""
    i = ind.long()
    return grid[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]]


def grads(out: torch.Tensor, upstream: torch.Tensor, *leaves: torch.Tensor) -> tuple:
    return torch.autograd.grad((out * upstream).sum(), leaves)


def assert_matches(out: torch.Tensor, ref: torch.Tensor, *leaves: torch.Tensor) -> None:
    """``out`` equals the dense reference ``ref``, and so do the gradients of both with
    respect to ``leaves`` for one random upstream gradient (each of them non-zero)."""
    torch.testing.assert_close(out, ref, **TOL)
    upstream = torch.randn_like(ref)
    got = grads(out, upstream, *leaves)
    want = grads(ref, upstream, *leaves)
    for g, w in zip(got, want, strict=True):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("kernel", [3, 5])
def test_subm_conv_matches_dense_conv3d(kernel: int) -> None:
    torch.manual_seed(0)
    ind = random_sites(1)
    feat = torch.randn(ind.shape[0], C_IN, requires_grad=True)
    conv = subm_conv3d(C_IN, C_OUT, kernel, indice_key="subm")
    out = conv(sparse_tensor(feat, ind, B, levels=0))
    assert torch.equal(out.indices, ind)  # submanifold: same sites, same row order
    weight = conv.weight.permute(0, 4, 1, 2, 3)  # (out, in, kD, kH, kW)
    ref = at_sites(F.conv3d(to_dense(feat, ind, S), weight, padding=kernel // 2), ind)
    assert_matches(out.features, ref, feat, conv.weight)


def test_strided_conv_matches_dense_conv3d() -> None:
    torch.manual_seed(0)
    ind = random_sites(2)
    feat = torch.randn(ind.shape[0], C_IN, requires_grad=True)
    conv = strided_conv3d(C_IN, C_OUT, indice_key="down1")
    out = conv(sparse_tensor(feat, ind, B, levels=1))
    # Output sites: exactly the parents floor(site / 2) of the input sites, once each.
    parents = torch.cat([ind[:, :1], ind[:, 1:] // 2], dim=1).unique(dim=0)
    assert torch.equal(out.indices.unique(dim=0), parents)
    assert out.indices.shape[0] == parents.shape[0]

    weight = conv.weight.permute(0, 4, 1, 2, 3)
    ref = at_sites(F.conv3d(to_dense(feat, ind, S), weight, stride=2), out.indices)
    assert_matches(out.features, ref, feat, conv.weight)


def test_inverse_conv_matches_dense_conv_transpose3d() -> None:
    torch.manual_seed(0)
    ind = random_sites(3)
    x = sparse_tensor(torch.randn(ind.shape[0], C_IN), ind, B, levels=1)
    coarse = strided_conv3d(C_IN, C_OUT, indice_key="down1")(x)
    feat = torch.randn(coarse.indices.shape[0], C_OUT, requires_grad=True)  # (M_coarse, C_OUT)
    conv = inverse_conv3d(C_OUT, C_IN, indice_key="down1")
    out = conv(coarse.replace_feature(feat))
    assert torch.equal(out.indices, x.indices)  # back to the fine sites, in their row order

    weight = conv.weight.permute(4, 0, 1, 2, 3)  # (in, out, kD, kH, kW), no kernel flip
    dense = F.conv_transpose3d(to_dense(feat, coarse.indices, S // 2), weight, stride=2)
    ref = at_sites(dense, x.indices)
    assert_matches(out.features, ref, feat, conv.weight)
