"""``gather_conv`` (one gather + one GEMM per submanifold conv, used on CUDA) against the
per-offset loop of ``cpu_conv``, on spconv's own rulebooks. The maths is device-independent, so
it is checked here on the CPU; ``tests/test_cuda.py`` covers the CUDA dispatch."""

import pytest
import torch

from pointseg.sparse import cpu_conv, gather_conv
from pointseg.sparse.tensor import spatial_shape_for
from tests.test_rulebook import as_rulebook, scene, spconv_pairs


@pytest.mark.parametrize("k", [3, 5])
def test_forward_and_gradients_equal_the_offset_loop(k: int) -> None:
    ind = scene(2, batch=2, size=14, density=0.3)
    shape = spatial_shape_for(ind, 2)
    _, pairs, counts = spconv_pairs(ind, 2, shape, subm=True, k=k)
    rb = as_rulebook(ind, ind, pairs, counts, subm=True, k=k)
    gen = torch.Generator().manual_seed(0)
    n, c_in, c_out = ind.shape[0], 4, 8
    feat = torch.randn(n, c_in, generator=gen, dtype=torch.float64)
    filters = torch.randn(c_out, k, k, k, c_in, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(n, c_out, generator=gen, dtype=torch.float64)

    want = cpu_conv.conv_forward(feat, filters, rb, inverse=False)
    got = gather_conv.forward(feat, filters, pairs, counts)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    want_in, want_w = cpu_conv.conv_backward(feat, filters, grad_out, rb, inverse=False)
    got_in, got_w = gather_conv.backward(feat, filters, grad_out, pairs, counts)
    torch.testing.assert_close(got_w, want_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_in, want_in, rtol=1e-12, atol=1e-12)
    none, got_w2 = gather_conv.backward(feat, filters, grad_out, pairs, counts, input_grad=False)
    assert none is None and torch.equal(got_w2, got_w)


def test_neighbour_map_lists_each_pair_once_and_the_centre_as_identity() -> None:
    ind = scene(3, batch=1, size=10, density=0.3)
    _, pairs, counts = spconv_pairs(ind, 1, spatial_shape_for(ind, 1), subm=True, k=3)
    n = ind.shape[0]
    nbr = gather_conv.neighbour_map(pairs, counts, n)
    assert nbr.shape == (n, 27) and torch.equal(nbr[:, 13], torch.arange(n))
    # neighbours by coordinates: offset (dx, dy, dz) of output o is the input at o + offset
    key = {tuple(c): i for i, c in enumerate(ind[:, 1:].tolist())}
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    for o, c in enumerate(ind[:, 1:].tolist()[:50]):
        for k, d in enumerate(offsets):
            want = key.get((c[0] + d[0], c[1] + d[1], c[2] + d[2]), n)
            assert int(nbr[o, k]) == want


def test_usable_only_for_cuda_submanifold_convs_with_few_columns() -> None:
    feat, stem = torch.zeros(10, 4), torch.zeros(32, 5, 5, 5, 4)
    assert not gather_conv.usable(feat, stem, subm=True, inverse=False)  # CPU: cpu_conv's loop


def test_byte_limit_shrinks_on_small_gpus(monkeypatch) -> None:
    monkeypatch.setattr(gather_conv, "_DEVICE_BYTES", {0: 8 << 30, 1: 80 << 30})
    assert gather_conv.byte_limit(torch.device("cuda", 0)) == 1 << 30  # an eighth of 8 GiB
    assert gather_conv.byte_limit(torch.device("cuda", 1)) == gather_conv.MAX_BYTES
