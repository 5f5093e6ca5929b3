"""The o3dml_plan preset: Open3D-ML's SparseConvUnet network built on spconv."""

from __future__ import annotations

import pytest
import torch

from pointseg.models.o3dml_plan import O3DMLPlanUNet


def test_parameter_count_matches_the_reference_network():
    # 16..112 channels over 7 levels, 3 inputs, 5 classes (Open3D-ML SparseConvUnet, m=16)
    assert O3DMLPlanUNet(3, 5).num_parameters() == 2_689_605
    assert O3DMLPlanUNet(3, 5).widths == [16, 32, 48, 64, 80, 96, 112]


def _cloud(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # a thick 160 x 160 slab: the coarsest of the 7 levels still holds several voxels
    hi = torch.tensor([160, 160, 8])
    grid = (torch.rand((n, 3), generator=g) * hi).to(torch.int32)
    grid = torch.unique(grid, dim=0)
    idx = torch.cat([torch.zeros((len(grid), 1), dtype=torch.int32), grid], 1)
    return torch.randn(len(idx), 3, generator=g), idx


def test_forward_keeps_rows_and_backward_reaches_every_weight():
    feat, idx = _cloud(3000)
    net = O3DMLPlanUNet(3, 5)
    out = net(feat, idx, 1)
    assert out.shape == (len(idx), 5)
    out.square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    # row order follows the input: permuting the rows permutes the logits (eval mode)
    net.eval()
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = net(feat, idx, 1), net(feat[perm], idx[perm].contiguous(), 1)
    torch.testing.assert_close(b, a[perm], rtol=1e-4, atol=1e-4)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="widths"):
        O3DMLPlanUNet(3, 5, widths=[16, 0])
    with pytest.raises(ValueError, match="feature channels"):
        O3DMLPlanUNet(3, 5)(torch.randn(4, 4), torch.zeros((4, 4), dtype=torch.int32), 1)


def test_config_builds_the_preset(compose_cfg):
    import hydra

    cfg = compose_cfg("train", ["model=o3dml_plan"])
    net = hydra.utils.instantiate(cfg.model.net)
    assert isinstance(net, O3DMLPlanUNet)
    assert net.widths[-1] == 112 and net.num_stages == 6
