"""SparseUNet: shapes, row order, batch independence, presets, learning, config validation."""

import pytest
import torch
import torch.nn.functional as F

from pointseg.models.sparse_unet import SparseUNet, spunet34c, spunet_small

TINY = {"stem_channels": 8, "channels": (8, 16, 16, 8), "layers": (1, 1, 1, 1)}


def scene(seed: int, size: tuple[int, int, int] = (14, 12, 10), density: float = 0.25, b: int = 0):
    """(M, 4) float32 features and (M, 4) int32 unique [b, x, y, z] indices of one scene."""
    gen = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(*size, generator=gen) < density).nonzero().int()
    ind = torch.cat([torch.full((len(xyz), 1), b, dtype=torch.int32), xyz], dim=1)
    return torch.randn(len(ind), 4, generator=gen), ind


def expected_parameters(in_ch, num_classes, stem, channels, layers, stem_kernel=5) -> int:
    """Closed-form parameter count of the plan (convs are bias-free, BN has 2 per channel)."""

    def block(c_in, c_out):  # two k=3 convs + BNs, 1x1 projection + BN if the width changes
        proj = c_in * c_out + 2 * c_out if c_in != c_out else 0
        return 27 * c_in * c_out + 27 * c_out * c_out + 4 * c_out + proj

    n = len(channels) // 2
    total = stem_kernel**3 * in_ch * stem + 2 * stem
    width = [stem, *channels[:n]]
    for i in range(n):  # down conv k=2 + BN, then blocks
        total += 8 * width[i] * width[i + 1] + 2 * width[i + 1]
        total += layers[i] * block(width[i + 1], width[i + 1])
    prev = width[n]
    for j in range(n):  # inverse conv k=2 + BN, then blocks on concat(up, skip)
        out, skip = channels[n + j], width[n - j - 1]
        total += 8 * prev * out + 2 * out + block(out + skip, out)
        total += (layers[n + j] - 1) * block(out, out)
        prev = out
    return total + channels[-1] * num_classes + num_classes  # linear head


def test_output_shape_train_and_eval_batched() -> None:
    torch.manual_seed(0)
    parts = [scene(s, b=b) for b, s in enumerate((1, 2, 3))]
    feat, ind = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    model = spunet_small(4, 7)
    out = model.train()(feat, ind, 3)
    assert out.shape == (len(ind), 7) and out.dtype == torch.float32
    out.logsumexp(dim=1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert model.eval()(feat, ind, 3).shape == (len(ind), 7)


def test_rows_keep_their_order() -> None:
    torch.manual_seed(0)
    feat, ind = scene(4)
    model = SparseUNet(4, 5, **TINY).eval()
    perm = torch.randperm(len(ind))
    with torch.no_grad():
        out = model(feat, ind, 1)
        out_perm = model(feat[perm], ind[perm], 1)
    torch.testing.assert_close(out_perm, out[perm], atol=1e-5, rtol=1e-5)


def test_batched_scenes_are_independent() -> None:
    torch.manual_seed(0)
    feat_a, ind_a = scene(5, size=(10, 10, 8))
    feat_b, ind_b = scene(6, size=(20, 14, 12))  # a larger extent than scene a
    batched = torch.cat([ind_a, ind_b + torch.tensor([1, 0, 0, 0], dtype=torch.int32)])
    model = spunet_small(4, 5).eval()
    with torch.no_grad():
        out = model(torch.cat([feat_a, feat_b]), batched, 2)
        alone_a, alone_b = model(feat_a, ind_a, 1), model(feat_b, ind_b, 1)
    torch.testing.assert_close(out[: len(ind_a)], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[len(ind_a) :], alone_b, atol=1e-5, rtol=1e-5)


def test_preset_parameter_counts() -> None:
    small = spunet_small(4, 13)
    assert small.num_parameters() < 2_000_000
    assert small.num_parameters() == expected_parameters(
        4, 13, 32, (32, 48, 64, 96, 64, 48, 32, 32), (1,) * 8
    )
    big = spunet34c(6, 20)
    count = big.num_parameters()
    assert count == expected_parameters(
        6, 20, 32, (32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2)
    )
    assert 35_000_000 < count < 45_000_000
    custom = SparseUNet(3, 4, stem_channels=16, channels=(16, 32, 24, 16), layers=(0, 2, 1, 3))
    assert custom.num_parameters() == expected_parameters(3, 4, 16, (16, 32, 24, 16), (0, 2, 1, 3))


def overfit_losses(model: torch.nn.Module, seed: int, steps: int = 40) -> list[float]:
    """Training losses of ``model`` (4 input channels, 3 classes) on ``scene(seed)`` with
    random labels, Adam at lr 1e-2."""
    feat, ind = scene(seed)
    labels = torch.randint(0, 3, (len(ind),), generator=torch.Generator().manual_seed(1))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(feat, ind, 1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_overfits_a_tiny_scene() -> None:
    torch.manual_seed(0)
    losses = overfit_losses(SparseUNet(4, 3, **TINY), seed=7)
    assert losses[-1] < 0.25 * losses[0]


def test_float64_features_refused() -> None:
    feat, ind = scene(8)
    with pytest.raises(TypeError, match="float32"):
        SparseUNet(4, 3, **TINY)(feat.double(), ind, 1)


def test_wrong_feature_width_refused() -> None:
    feat, ind = scene(9)
    with pytest.raises(ValueError, match="feature channels"):
        SparseUNet(5, 3, **TINY)(feat, ind, 1)


def test_hydra_style_kwargs() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"channels": [8, 16, 16, 8], "layers": [1, 1, 1, 1]})
    model = SparseUNet(in_channels=4, num_classes=3, channels=cfg.channels, layers=cfg.layers)
    assert model.num_stages == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": (8, 16, 8), "layers": (1, 1, 1)},  # odd length
        {"channels": (8, 16, 16, 8), "layers": (1, 1, 1)},  # length mismatch
        {"channels": (), "layers": ()},
        {"channels": (8, 0, 16, 8), "layers": (1, 1, 1, 1)},
        {"channels": (8, 16, 16, 8), "layers": (1, 1, 0, 1)},  # a decoder stage without blocks
        {"channels": (8, 16, 16, 8), "layers": (-1, 1, 1, 1)},
        {"stem_kernel": 4},
        {"dropout": 1.0},
    ],
)
def test_invalid_config_raises(kwargs) -> None:
    with pytest.raises(ValueError):
        SparseUNet(4, 3, **{**TINY, **kwargs})
