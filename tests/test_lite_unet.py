"""LiteUNet: shapes, row order, depthwise layers and keys, learning, shuffle, MAC counting."""

import pytest
import torch

from pointseg.models.lite_unet import GroupedPointwise, LiteUNet, channel_shuffle
from pointseg.models.sparse_unet import spunet_small
from pointseg.prune.measure import count_macs
from pointseg.sparse import SubMConv3d, sparse_tensor
from tests.test_sparse_unet import overfit_losses, scene

TINY = {"stem_channels": 8, "channels": (8, 16, 16, 8), "layers": (1, 1, 1, 1)}


def test_output_shape_and_gradients() -> None:
    torch.manual_seed(0)
    parts = [scene(s, b=b) for b, s in enumerate((1, 2))]
    feat, ind = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    model = LiteUNet(4, 7).train()
    assert model.num_stages == 4
    out = model(feat, ind, 2)
    assert out.shape == (len(ind), 7)
    out.logsumexp(dim=1).mean().backward()
    dw = [m for m in model.modules() if isinstance(m, SubMConv3d) and m.groups > 1]
    assert len(dw) == 16 and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in dw)


def test_rows_keep_their_order() -> None:
    torch.manual_seed(0)
    feat, ind = scene(4)
    model = LiteUNet(4, 5, **TINY).eval()
    perm = torch.randperm(len(ind))
    with torch.no_grad():
        out, out_perm = model(feat, ind, 1), model(feat[perm], ind[perm], 1)
    torch.testing.assert_close(out_perm, out[perm], atol=1e-5, rtol=1e-5)


def test_lite_is_smaller_and_cheaper_than_small() -> None:
    feat, ind = scene(5)
    batch = {"feat": feat, "indices": ind, "batch_size": 1}
    lite, small = LiteUNet(4, 9), spunet_small(4, 9)
    assert lite.num_parameters() < 0.25 * small.num_parameters()
    assert count_macs(lite, batch) < 0.5 * count_macs(small, batch)


def test_kernel5_uses_its_own_rulebooks_and_the_stem_shares_level0() -> None:
    model = LiteUNet(4, 5, stem_kernel=5, kernel=5, **TINY)
    keys = {m.indice_key for m in model.modules() if isinstance(m, SubMConv3d)}
    assert keys == {"subm0_k5", "subm1_k5", "subm2_k5"}
    assert model.stem.conv.kernel_size == [5, 5, 5]
    feat, ind = scene(6)
    assert model.eval()(feat, ind, 1).shape == (len(ind), 5)


def test_count_macs_of_a_depthwise_conv() -> None:
    """pairs (neighbours within the kernel, the site itself included) x channels."""
    _, ind = scene(7)
    conv = SubMConv3d(6, 6, 3, padding=1, indice_key="k", groups=6)
    net = torch.nn.Module()
    net.conv = conv
    net.forward = lambda feat, indices, batch_size: conv(sparse_tensor(feat, indices, 1, levels=0))
    d = (ind[:, None, 1:] - ind[None, :, 1:]).abs().amax(-1)  # Chebyshev distances
    pairs = int((d <= 1).sum())
    macs = count_macs(net, {"feat": torch.randn(len(ind), 6), "indices": ind, "batch_size": 1})
    assert macs == pairs * 6


def test_overfits_a_tiny_scene() -> None:
    torch.manual_seed(0)
    losses = overfit_losses(LiteUNet(4, 3, **TINY), seed=8)
    assert losses[-1] < 0.4 * losses[0]


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).reshape(1, 6)  # groups [0 1 2] [3 4 5]
    assert channel_shuffle(x, 2).tolist() == [[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]]


def test_grouped_pointwise_is_block_diagonal() -> None:
    torch.manual_seed(0)
    pw = GroupedPointwise(4, 6, groups=2)
    x = torch.randn(5, 4)
    dense = torch.block_diag(pw.weight[0], pw.weight[1])  # (4, 6)
    torch.testing.assert_close(pw(x), x @ dense)


def test_grouped_pointwise_with_shuffle_trains() -> None:
    torch.manual_seed(0)
    feat, ind = scene(9)
    model = LiteUNet(4, 3, pw_groups=4, shuffle=True, **TINY).train()
    assert any(isinstance(m, GroupedPointwise) for m in model.modules())
    model(feat, ind, 1).square().mean().backward()
    pw = next(m for m in model.modules() if isinstance(m, GroupedPointwise))
    assert pw.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kernel": 4}, "odd"), ({"stem_kernel": 2}, "odd"), ({"pw_groups": 0}, ">= 1")],
)
def test_bad_options_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        LiteUNet(4, 3, **{**TINY, **kwargs})
