"""The spconv patches and guards of ``pointseg.models.spconv_compat``."""

import pytest
import spconv.pytorch as spconv
import spconv.pytorch.hash
import spconv.pytorch.ops
import spconv.pytorch.utils
import torch
from spconv.pytorch.conv import SparseConvolution
from spconv.pytorch.cppcore import torch_tensor_to_tv

from pointseg.models import spconv_compat as compat
from pointseg.models.blocks import inverse_conv3d, strided_conv3d, subm_conv3d
from pointseg.models.sparse_unet import spunet_small

PATCHED_MODULES = [spconv.pytorch.cppcore, spconv.pytorch.ops, spconv.pytorch.hash]


def random_scene(seed: int, batch: int = 2, size: int = 12, density: float = 0.25):
    """(M, 3) float32 features and (M, 4) int32 unique [b, x, y, z] indices."""
    gen = torch.Generator().manual_seed(seed)
    ind = (torch.rand(batch, size, size, size, generator=gen) < density).nonzero().int()
    return torch.randn(ind.shape[0], 3, generator=gen), ind.contiguous()


def test_patch_is_applied_everywhere_and_idempotent() -> None:
    compat.patch_spconv()
    compat.patch_spconv()
    for module in PATCHED_MODULES:
        assert module.get_current_stream is compat._get_current_stream
    for module in (spconv.pytorch.ops, spconv.pytorch.utils):
        assert module.SpconvOps is compat._OPS_PROXY
    assert spconv.pytorch.ops.get_arch is compat._get_arch  # asked of torch once per device
    # Other ops still reach spconv's own implementation through the proxy.
    assert spconv.pytorch.ops.SpconvOps.gather_cpu is compat._ORIGINAL_OPS.gather_cpu
    if not torch.cuda.is_available():
        assert compat._get_current_stream() == 0
        assert compat.default_algo() is compat.ConvAlgo.Native


def test_scatter_add_is_correct_with_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(max(4, before))  # spconv's own kernel races with > 1 thread
    try:
        gen = torch.Generator().manual_seed(0)
        out = torch.randn(50_000, 16, generator=gen)
        src = torch.randn(30_000, 16, generator=gen)  # a buffer: only the first rows are used
        rows = torch.randperm(50_000, generator=gen)[:20_000].int()
        want = out.clone().index_add_(0, rows.long(), src[:20_000])
        tv = torch_tensor_to_tv
        for _ in range(3):  # the race hit a few rows in every call when it was there
            got = out.clone()
            spconv.pytorch.ops.SpconvOps.scatter_add_cpu(tv(got), tv(src), tv(rows))
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            assert torch.get_num_threads() == max(4, before)  # restored after the call
    finally:
        torch.set_num_threads(before)


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


def test_set_conv_algo() -> None:
    model = spunet_small(3, 5)
    compat.set_conv_algo(model, compat.ConvAlgo.Native)
    convs = [m for m in model.modules() if isinstance(m, SparseConvolution)]
    assert convs and all(conv.algo == compat.ConvAlgo.Native for conv in convs)


def test_convs_built_for_implicit_gemm_run_native_on_cpu_tensors() -> None:
    # what a model built on a GPU machine holds; spconv's implicit GEMM is CUDA-only
    torch.manual_seed(0)
    native = spunet_small(3, 5).eval()
    gpu_built = compat.set_conv_algo(spunet_small(3, 5).eval(), compat.ConvAlgo.MaskImplicitGemm)
    gpu_built.load_state_dict(native.state_dict())
    feat, ind = random_scene(3, size=16)
    with torch.no_grad():
        torch.testing.assert_close(gpu_built(feat, ind, 2), native(feat, ind, 2), rtol=0, atol=0)
    convs = [m for m in gpu_built.modules() if isinstance(m, SparseConvolution)]
    assert {m.algo for m in convs} == {compat.ConvAlgo.Native}
    assert {m._pointseg_cuda_algo for m in convs} == {compat.ConvAlgo.MaskImplicitGemm}
