"""The point branch: every point is labelled from its voxel's features and its own, so two points
of one voxel can get different labels; block inference and TTA vote per point; a network without
the branch behaves as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointseg.data.collate import collate
from pointseg.data.transforms import Voxelize
from pointseg.inference import InferenceOptions
from pointseg.models.sparse_unet import POINT_EXTRA, has_point_branch, spunet_small
from pointseg.segmenter import FeatureRecipe, Segmenter

TINY = {"stem_channels": 8, "channels": [8] * 8, "layers": [1] * 8}


def _scene(n: int = 6000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    coord = (rng.random((n, 3)) * [24.0, 24.0, 4.0]).astype(np.float32)
    return {"coord": coord, "color": rng.random((n, 3)).astype(np.float32),
            "segment": rng.integers(0, 3, n)}  # fmt: skip


def test_voxelize_point_features() -> None:
    s = _scene()
    for mode in ("train", "mean"):
        out = Voxelize(voxel_size=0.5, feat_keys=["color"], mode=mode, point_features=True)(s)
        pf = out["point_feat"]
        assert pf.shape == (len(s["coord"]), 3 + POINT_EXTRA) and pf.dtype == np.float32
        np.testing.assert_array_equal(pf[:, :3], s["color"])  # the point's own features
        np.testing.assert_array_equal(out["segment"], s["segment"])  # every point, both modes
        # the offset is the point's place in its own voxel
        cell = out["grid_coord"][out["inverse"]]
        rel = (s["coord"].astype(np.float64) - s["coord"].min(0)) / 0.5
        np.testing.assert_allclose(pf[:, 3:], rel - cell - 0.5, atol=1e-5)
        assert (pf[:, 3:] >= -0.5).all() and (pf[:, 3:] < 0.5 + 1e-6).all()
    plain = Voxelize(voxel_size=0.5, feat_keys=["color"], mode="train")(s)
    assert "point_feat" not in plain and len(plain["inverse"]) == len(plain["grid_coord"])


def test_points_of_one_voxel_get_their_own_logits() -> None:
    torch.manual_seed(0)
    s = _scene()
    batch = collate([Voxelize(voxel_size=1.0, feat_keys=["color"], point_features=True)(s)])
    args = (batch["feat"], batch["indices"], 1)
    kw = {"inverse": batch["inverse"], "point_feat": batch["point_feat"]}
    branch, plain = spunet_small(3, 3, point_channels=8, **TINY), spunet_small(3, 3, **TINY)
    assert has_point_branch(branch) and not has_point_branch(plain)
    inv = batch["inverse"]
    shared = int(torch.bincount(inv).argmax())  # the fullest voxel
    rows = torch.nonzero(inv == shared).reshape(-1)
    with torch.no_grad():
        by_branch = branch.eval()(*args, **kw)  # (N, K)
        by_voxel = plain.eval()(*args, **kw)
    assert by_branch.shape == by_voxel.shape == (len(inv), 3)
    assert len(rows) > 1 and not torch.allclose(by_branch[rows[0]], by_branch[rows[1]])
    torch.testing.assert_close(by_voxel[rows[0]], by_voxel[rows[1]])
    torch.testing.assert_close(by_voxel, plain(*args)[inv])  # voxel nets: logits[inverse]
    with pytest.raises(ValueError, match="point_feat"):
        branch(*args, inverse=inv)
    # gradients reach the point MLP from a per-point loss
    branch.train()
    loss = torch.nn.functional.cross_entropy(branch(*args, **kw), torch.as_tensor(s["segment"]))
    loss.backward()
    assert branch.point_mlp[0].weight.grad.abs().sum() > 0


def _segmenter(net: torch.nn.Module, **options) -> Segmenter:
    recipe = FeatureRecipe(class_names=("a", "b", "c"), feat_keys=("color",), voxel_size=0.5)
    return Segmenter(net, recipe, options=InferenceOptions(**options))


def test_segmenter_labels_points_as_the_network_does() -> None:
    torch.manual_seed(1)
    net = spunet_small(3, 3, point_channels=8, **TINY).eval()
    s = _scene()
    pred = _segmenter(net).predict({"coord": s["coord"], "color": s["color"]})
    batch = collate([Voxelize(voxel_size=0.5, feat_keys=["color"], point_features=True)(s)])
    with torch.no_grad():
        want = torch.softmax(
            net(batch["feat"], batch["indices"], 1, inverse=batch["inverse"],
                point_feat=batch["point_feat"]), 1,
        ).numpy()  # fmt: skip
    np.testing.assert_allclose(pred.probs, want, atol=1e-5)
    np.testing.assert_array_equal(pred.labels, want.argmax(1))
    assert pred.voxel_probs is None and pred.point_probs(10, 20).shape == (10, 3)


def test_block_votes_per_point() -> None:
    """Blocks: each point's probabilities are the weighted mean of the blocks that hold its
    voxel; a block the size of the scene gives the single pass."""
    torch.manual_seed(2)
    net = spunet_small(3, 3, point_channels=8, **TINY).eval()
    s = _scene()
    x = {"coord": s["coord"], "color": s["color"]}
    one = _segmenter(net).predict(x)
    big = _segmenter(net, block_size=1000.0, overlap=0.0, single_pass_max_voxels=0).predict(x)
    assert big.num_blocks == 1
    np.testing.assert_allclose(big.probs, one.probs, atol=1e-5)
    blocks = _segmenter(net, block_size=8.0, overlap=2.0, single_pass_max_voxels=0).predict(x)
    assert blocks.num_blocks > 4
    np.testing.assert_allclose(blocks.probs.sum(1), 1.0, atol=1e-5)
    assert (blocks.labels == one.labels).mean() > 0.9  # context changes a few labels, no more


def test_tta_turns_the_point_inputs() -> None:
    """A 90-degree TTA copy of a scene whose extent is a whole number of voxels equals labelling
    the turned scene: the per-point features and offsets are turned with the voxels."""
    torch.manual_seed(3)
    net = spunet_small(3, 3, point_channels=8, **TINY).eval()
    rng = np.random.default_rng(4)
    # points strictly inside [0, 16)^2 with corner points pinning the extent to 32 x 32 voxels
    xy = rng.random((4000, 2)) * 15.9 + 0.05
    xy = np.concatenate([xy, [[0.0, 0.0], [15.999, 15.999]]])
    coord = np.c_[xy, rng.random(len(xy)) * 2].astype(np.float32)
    color = rng.random((len(xy), 3)).astype(np.float32)
    turned = _segmenter(net, tta=True, tta_angles=(90.0,), tta_flip=False)
    got = turned.predict({"coord": coord, "color": color})
    rot = coord.copy()
    rot[:, 0], rot[:, 1] = 16.0 - 1e-4 - coord[:, 1], coord[:, 0]  # +90 degrees about z
    want = _segmenter(net).predict({"coord": rot, "color": color})
    assert (got.labels == want.labels).mean() > 0.99
    # non-exact variants (scales, other angles) still give each point a distribution
    other = _segmenter(net, tta=True, tta_angles=(30.0,), tta_scales=(0.9, 1.1)).predict(
        {"coord": coord, "color": color}
    )
    np.testing.assert_allclose(other.probs.sum(1), 1.0, atol=1e-5)


def test_structured_pruning_keeps_the_point_branch_function() -> None:
    """Channel pruning plans the point branch's two layers too: the smaller network computes
    what the network with those channels zeroed computes, point by point."""
    import copy

    import hydra

    from pointseg.prune import structured

    torch.manual_seed(5)
    cfg = {"_target_": "pointseg.models.sparse_unet.SparseUNet", "in_channels": 3,
           "num_classes": 3, "point_channels": 12, **TINY}  # fmt: skip
    net = hydra.utils.instantiate(cfg)
    for m in net.modules():  # non-trivial BN scales, so the ranking means something
        if isinstance(m, torch.nn.BatchNorm1d):
            m.weight.data.uniform_(0.2, 1.5)
    net.eval()
    plan = structured.channel_plan(net)
    assert {"point_mid", "point"} <= set(plan.groups)
    keep = structured.select_channels(structured.channel_scores(net, plan), 0.5)
    small, small_cfg = structured.prune_channels(net, cfg, keep)
    assert small_cfg["widths"]["point"] == small_cfg["widths"]["point_mid"] == 6
    assert small.point_channels == 6 and small.head.in_features == 4 + 6
    reference = copy.deepcopy(net)
    structured.zero_channels(reference, plan, keep)
    s = _scene()
    batch = collate([Voxelize(voxel_size=1.0, feat_keys=["color"], point_features=True)(s)])
    args = (batch["feat"], batch["indices"], 1)
    kw = {"inverse": batch["inverse"], "point_feat": batch["point_feat"]}
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(*args, **kw), reference(*args, **kw),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    rebuilt = hydra.utils.instantiate(small_cfg)
    rebuilt.load_state_dict(small.state_dict())
