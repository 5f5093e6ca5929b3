"""The guards of ``pointseg.sparse.tensor`` and the CPU traps of spconv they stand in front of."""

import pytest
import torch

from pointseg.models.blocks import inverse_conv3d, strided_conv3d, subm_conv3d
from pointseg.models.sparse_unet import spunet_small
from pointseg.sparse import tensor as compat


def random_scene(seed: int, batch: int = 2, size: int = 12, density: float = 0.25):
    """(M, 3) float32 features and (M, 4) int32 unique [b, x, y, z] indices."""
    gen = torch.Generator().manual_seed(seed)
    ind = (torch.rand(batch, size, size, size, generator=gen) < density).nonzero().int()
    return torch.randn(ind.shape[0], 3, generator=gen), ind.contiguous()


def test_gradients_flow_on_cpu() -> None:
    torch.manual_seed(0)
    feat, ind = random_scene(0)
    feat.requires_grad_(True)
    convs = [
        subm_conv3d(3, 8, 3, indice_key="subm0"),
        strided_conv3d(8, 8, indice_key="down1"),
        subm_conv3d(8, 8, 3, indice_key="subm1"),
        inverse_conv3d(8, 4, indice_key="down1"),
    ]
    x = compat.sparse_tensor(feat, ind, 2, levels=1)
    for conv in convs:
        x = conv(x)
    assert torch.equal(x.indices, ind)
    x.features.square().mean().backward()
    for grad in [feat.grad] + [conv.weight.grad for conv in convs]:
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_eval_mode_with_kernel_3_has_no_bias_trap() -> None:
    feat, ind = random_scene(1)
    convs = [subm_conv3d(3, 8, 3, indice_key="s"), strided_conv3d(8, 8, indice_key="d")]
    convs.append(inverse_conv3d(8, 4, indice_key="d"))
    x = compat.sparse_tensor(feat, ind, 2, levels=1)
    with torch.no_grad():
        for conv in convs:
            assert conv.bias is None
            x = conv.eval()(x)
    assert x.features.shape == (ind.shape[0], 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.bfloat16])
def test_non_float32_features_refused(dtype: torch.dtype) -> None:
    feat, ind = random_scene(2)
    with pytest.raises(TypeError, match="float32"):
        compat.sparse_tensor(feat.to(dtype), ind, 2, levels=1)


def test_spatial_shape_for() -> None:
    ind = torch.tensor([[0, 0, 0, 0], [1, 17, 3, 0]], dtype=torch.int32)
    assert compat.spatial_shape_for(ind, 4) == [32, 16, 16]
    assert compat.spatial_shape_for(ind, 0) == [18, 4, 1]
    assert compat.spatial_shape_for(ind[:1], 3) == [8, 8, 8]


def test_flat_scene_and_single_voxel_through_four_levels() -> None:
    model = spunet_small(3, 5)
    assert model.num_stages == 4
    xy = torch.cartesian_prod(torch.arange(40), torch.arange(40))  # a flat 40 x 40 floor, z == 0
    flat = torch.cat([torch.zeros(len(xy), 1), xy, torch.zeros(len(xy), 1)], dim=1).int()
    out = model.train()(torch.randn(len(flat), 3), flat, 1)  # training: BN needs > 1 voxel
    assert out.shape == (len(flat), 5)
    one = torch.tensor([[0, 5, 7, 0]], dtype=torch.int32)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3), one, 1).shape == (1, 5)
        assert torch.isfinite(model(torch.randn(len(flat), 3), flat, 1)).all()


def test_noncontiguous_indices_are_made_contiguous() -> None:
    feat, ind = random_scene(3)
    strided = ind.t().contiguous().t()  # same values, column-major (like nonzero().int())
    assert not strided.is_contiguous()
    conv = subm_conv3d(3, 4, 3, indice_key="s")
    want = conv(compat.sparse_tensor(feat, ind, 2, levels=0)).features
    got = conv(compat.sparse_tensor(feat, strided, 2, levels=0)).features
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("indices", "error", "match"),
    [
        (torch.zeros(3, 4, dtype=torch.int64), TypeError, "int32"),
        (torch.zeros(3, 3, dtype=torch.int32), ValueError, r"\(M, 4\)"),
        (torch.zeros(0, 4, dtype=torch.int32), ValueError, "empty"),
        (torch.tensor([[0, -1, 0, 0]], dtype=torch.int32), ValueError, "non-negative"),
        (torch.tensor([[2, 0, 0, 0]], dtype=torch.int32), ValueError, "batch_size=2"),
        (torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]], dtype=torch.int32), ValueError, "duplicate"),
        ([[0, 0, 0, 0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_indices_rejected(indices, error, match) -> None:
    n = len(indices)
    with pytest.raises(error, match=match):
        compat.sparse_tensor(torch.zeros(n, 3), indices, 2, levels=2)


def test_feature_rows_must_match_indices() -> None:
    feat, ind = random_scene(4)
    with pytest.raises(ValueError, match="rows"):
        compat.sparse_tensor(feat[:-1], ind, 2, levels=1)
