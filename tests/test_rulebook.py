"""pointseg's CPU rulebooks and conv loop equal spconv's own, pair for pair and bit for bit."""

import copy

import pytest
import spconv.pytorch.ops
import torch
from spconv.core import ConvAlgo

from pointseg.models.o3dml_plan import O3DMLPlanUNet
from pointseg.sparse import allow_cpu_backward, cpu_conv, rulebook, use_backend
from pointseg.sparse.rulebook import Rulebook
from pointseg.sparse.tensor import spatial_shape_for

NATIVE = ConvAlgo.Native


def scene(seed: int, batch: int = 2, size: int = 16, density: float = 0.2):
    """(M, 4) int32 unique sorted [b, x, y, z], touching both ends of every axis."""
    gen = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, size, size, size, generator=gen) < density
    occ[:, 0, 0, 0] = occ[:, -1, -1, -1] = True  # the table margins are exercised
    return occ.nonzero().int().contiguous()


def spconv_pairs(ind, batch, shape, *, subm, k=3):
    """spconv's own builder."""
    stride, pad = ([1] * 3, [k // 2] * 3) if subm else ([k] * 3, [0] * 3)
    return spconv.pytorch.ops.get_indice_pairs(
        ind, batch, shape, NATIVE, [k] * 3, stride, pad, [1] * 3, [0] * 3, subm, False, -1
    )


def as_rulebook(ind, out_ind, pairs, counts, *, subm, k) -> Rulebook:
    """A ``Rulebook`` around spconv's pairs (for pointseg's kernels)."""
    return Rulebook(ind, out_ind, pairs, counts, [], [], subm, [k] * 3, [1 if subm else k] * 3)


def pair_set(pairs, counts, k, out_key=None, n=None):
    """Sorted int64 codes of (output, input) pairs of offset k (outputs relabelled by key)."""
    n = int(counts[k]) if n is None else n
    src, dst = pairs[0, k, :n].long(), pairs[1, k, :n].long()
    if out_key is not None:
        dst = out_key[dst]
    return torch.sort(dst * (1 << 32) + src).values


def coord_key(ind):
    c = ind.long()
    return ((c[:, 0] * 4096 + c[:, 1]) * 4096 + c[:, 2]) * 4096 + c[:, 3]


@pytest.mark.parametrize("table", ["batch", "per_sample"])
@pytest.mark.parametrize("k", [3, 5])
def test_subm_pairs_equal_spconv(k: int, table: str, monkeypatch) -> None:
    ind = scene(0, batch=3)
    ind = ind[ind[:, 0] != 1]  # an empty sample in the middle of the batch
    shape = spatial_shape_for(ind, 2)
    if table == "per_sample":  # room for one sample's table, not for the batch's
        cells = 1
        for d in rulebook.subm_table_dims(ind, [k] * 3):
            cells *= d
        monkeypatch.setattr(rulebook, "LOOKUP_MIN_CELLS", 0)
        monkeypatch.setattr(rulebook, "LOOKUP_CELLS_PER_VOXEL", 2 * cells / ind.shape[0])
        dims = rulebook.subm_table_dims(ind, [k] * 3)
        assert not rulebook.lookup_fits(ind.shape[0], 3, dims)
        assert rulebook.subm_fits(ind, 3, [k] * 3)
    _, want, want_n = spconv_pairs(ind, 3, shape, subm=True, k=k)
    got, got_n = rulebook.subm_pairs(ind, 3, shape, [k] * 3)
    kv, center = k**3, k**3 // 2
    assert got.shape == (2, kv, ind.shape[0]) and int(got_n[center]) == 0
    for off in range(center):
        assert int(got_n[off]) == int(want_n[off])
        assert torch.equal(pair_set(got, got_n, off), pair_set(want, want_n, off))
    # Past the centre spconv reads the mirror's count: the pairs are the mirror's, swapped.
    for off in range(center + 1, kv):
        n = int(want_n[kv - 1 - off])
        assert int(got_n[off]) == n
        assert torch.equal(pair_set(got, got_n, off), pair_set(want, want_n, off, n=n))
        assert torch.equal(pair_set(got, got_n, off), pair_set(want.flip(0), want_n, kv - 1 - off))


def test_strided_pairs_equal_spconv_up_to_output_order() -> None:
    ind = scene(1)
    shape = spatial_shape_for(ind, 3)
    want_out, want, want_n = spconv_pairs(ind, 2, shape, subm=False, k=2)
    got_out, got, got_n = rulebook.strided_pairs(ind, 2, shape, [2] * 3)
    assert got_out.dtype == torch.int32 and got_out.shape == want_out.shape
    assert torch.equal(
        torch.sort(coord_key(got_out)).values, torch.sort(coord_key(want_out)).values
    )
    assert torch.equal(got_n, want_n)
    for off in range(8):
        a = pair_set(got, got_n, off, coord_key(got_out))
        b = pair_set(want, want_n, off, coord_key(want_out))
        assert torch.equal(a, b)
    # The unique path (a grid too large for the table) numbers the outputs the same way.
    big = ind.clone()
    big[:, 1] *= 50_000  # x spread far apart: the lookup table would not fit
    big_shape = spatial_shape_for(big, 1)
    assert not rulebook.lookup_fits(big.shape[0], 2, [s // 2 for s in big_shape])
    out_b, pairs_b, n_b = rulebook.strided_pairs(big, 2, big_shape, [2] * 3)
    ref_out, ref, ref_n = spconv_pairs(big, 2, big_shape, subm=False, k=2)
    assert torch.equal(n_b, ref_n)
    for off in range(8):
        assert torch.equal(
            pair_set(pairs_b, n_b, off, coord_key(out_b)),
            pair_set(ref, ref_n, off, coord_key(ref_out)),
        )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("block_bytes", [cpu_conv.BLOCK_BYTES, 4096])
@pytest.mark.parametrize("subm", [True, False])
def test_conv_loop_equals_spconv_bit_for_bit(
    subm: bool, block_bytes: int, threads: int, monkeypatch
) -> None:
    """Outputs and input gradients bit for bit, in one block or many (4096 bytes: 1024-row
    blocks), on one thread and on two (spconv's scatter kernel, which races on two threads
    unless ``single_openmp_thread`` holds it to one); weight gradients to rounding."""
    monkeypatch.setattr(cpu_conv, "BLOCK_BYTES", block_bytes)
    before = torch.get_num_threads()
    ind = scene(2, size=32)
    shape = spatial_shape_for(ind, 2)
    out_ind, pairs, counts = spconv_pairs(ind, 2, shape, subm=subm, k=3 if subm else 2)
    gen = torch.Generator().manual_seed(0)
    k = 3 if subm else 2
    x = torch.randn(ind.shape[0], 8, generator=gen)
    w = torch.randn(16, k, k, k, 8, generator=gen)
    n_out = out_ind.shape[0]
    g = torch.randn(n_out, 16, generator=gen)
    try:
        torch.set_num_threads(1)  # spconv's own scatter is only correct on one thread
        with allow_cpu_backward():
            want_y = spconv.pytorch.ops.indice_conv(x, w, pairs, counts, n_out, False, subm)
            want_dx, want_dw = spconv.pytorch.ops.indice_conv_backward(
                x, w, g, pairs, counts, False, subm
            )
            w_inv = w.transpose(0, 4).contiguous()  # (8, k, k, k, 16): back to 8 channels
            want_inv = spconv.pytorch.ops.indice_conv(
                g, w_inv, pairs, counts, x.shape[0], True, subm
            )
        torch.set_num_threads(threads)
        rb = as_rulebook(ind, out_ind, pairs, counts, subm=subm, k=k)
        y = cpu_conv.conv_forward(x, w, rb, inverse=False)
        dx, dw = cpu_conv.conv_backward(x, w, g, rb, inverse=False)
        inv = cpu_conv.conv_forward(g, w_inv, rb, inverse=True)
        none, dw2 = cpu_conv.conv_backward(x, w, g, rb, inverse=False, input_grad=False)
    finally:
        torch.set_num_threads(before)
    assert int(counts.max()) > 1024  # more than one block per offset with 4096-byte blocks
    for got, want in ((y, want_y), (dx, want_dx), (inv, want_inv)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # weight gradients are long reductions: their rounding depends on the blocks and on BLAS's
    # threads (spconv's ran on one), so they agree to a few ulps of the largest entry
    for got in (dw, dw2):
        torch.testing.assert_close(got, want_dw, rtol=1e-5, atol=1e-6 * float(want_dw.abs().max()))
    assert none is None


def test_pointseg_backend_is_used_and_matches_spconv_through_a_network() -> None:
    """A whole o3dml_plan network, forward and backward, on pointseg's path and on spconv's.

    BatchNorm runs in eval mode: in training mode its batch sums would see the coarse rows in
    pointseg's order instead of spconv's hash order, a permutation that only moves rounding.
    """
    gen = torch.Generator().manual_seed(3)
    ind = scene(3, batch=2, size=24, density=0.15)
    feat = torch.randn(ind.shape[0], 3, generator=gen)
    labels = torch.randint(0, 5, (ind.shape[0],), generator=gen)
    torch.manual_seed(0)
    net = O3DMLPlanUNet(3, 5, widths=[8, 16, 24]).eval()
    ref = copy.deepcopy(net)
    calls = {"subm": 0, "strided": 0, "backward": []}
    real_subm, real_strided, real_bw = (
        rulebook.subm_pairs,
        rulebook.strided_pairs,
        cpu_conv.conv_backward,
    )

    def count(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)

        return wrapped

    def backward(*a, **kw):
        calls["backward"].append(kw["input_grad"])
        return real_bw(*a, **kw)

    before = torch.get_num_threads()
    try:
        rulebook.subm_pairs = count("subm", real_subm)
        rulebook.strided_pairs = count("strided", real_strided)
        cpu_conv.conv_backward = backward
        torch.set_num_threads(2)
        out = net(feat, ind, 2)
        torch.nn.functional.cross_entropy(out, labels).backward()
        torch.set_num_threads(1)
        with use_backend("spconv"):
            want = ref(feat, ind, 2)
            torch.nn.functional.cross_entropy(want, labels).backward()
    finally:
        rulebook.subm_pairs, rulebook.strided_pairs = real_subm, real_strided
        cpu_conv.conv_backward = real_bw
        torch.set_num_threads(before)
    assert calls["subm"] == 3 and calls["strided"] == 2  # one per level / per downsampling
    # Every conv's backward ran on pointseg's loop; only the input conv skipped its input grad.
    assert calls["backward"].count(False) == 1 and len(calls["backward"]) == 1 + 3 + 2 * 2 + 2
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_large_sparse_grid_falls_back_to_spconv(monkeypatch) -> None:
    ind = scene(4)
    shape = spatial_shape_for(ind, 0)
    monkeypatch.setattr(rulebook, "LOOKUP_MIN_CELLS", 0)
    monkeypatch.setattr(rulebook, "LOOKUP_CELLS_PER_VOXEL", 0)

    def refuse(*a, **kw):
        raise AssertionError("the lookup-table builder ran although the table does not fit")

    monkeypatch.setattr(rulebook, "subm_pairs", refuse)
    geometry = {"ksize": [3] * 3, "stride": [1] * 3, "padding": [1] * 3, "dilation": [1] * 3}
    rb = rulebook.build(ind, 2, shape, subm=True, **geometry)
    _, want, want_n = spconv_pairs(ind, 2, shape, subm=True)
    assert torch.equal(rb.indice_pair_num, want_n) and torch.equal(rb.indice_pairs, want)
