"""Block inference and TTA: same voxels as training, blocks agree with one pass, TTA is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pointseg.data.collate import collate
from pointseg.data.datasets.synthetic import generate_room, scene_seed
from pointseg.data.transforms import AddHeight, Voxelize
from pointseg.data.voxelize import voxelize_chunked as voxelize_scene
from pointseg.inference import InferenceOptions, _transform, plan_blocks
from pointseg.models.sparse_unet import spunet_small
from pointseg.segmenter import FeatureRecipe, Segmenter

FEATS = ["color", "height"]


@pytest.fixture(scope="module")
def room() -> dict[str, np.ndarray]:
    return generate_room(scene_seed(0, "val", 2), room_size=(4.0, 5.0), density=900.0)


@pytest.fixture(scope="module")
def net(room) -> torch.nn.Module:
    """An untrained net whose BatchNorm statistics are calibrated on the room, so its labels
    vary from voxel to voxel instead of being one class everywhere."""
    torch.manual_seed(0)
    net = spunet_small(4, 9)
    batch = collate([Voxelize(voxel_size=0.1, feat_keys=FEATS)(AddHeight()(room))])
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: one pass sets the statistics
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(batch["feat"], batch["indices"], 1)
    return net.eval()


def _predictor(net: torch.nn.Module, **options) -> Segmenter:
    recipe = FeatureRecipe(
        class_names=tuple(str(i) for i in range(9)),
        feat_keys=tuple(FEATS),
        voxel_size=0.1,
        transforms=({"_target_": "pointseg.data.transforms.AddHeight"},),
    )
    return Segmenter(net, recipe, options=InferenceOptions(**options))


def test_scene_voxels_match_the_training_voxelizer(room) -> None:
    sample = AddHeight()(room)
    ref = Voxelize(voxel_size=0.08, feat_keys=FEATS, mode="mean")(sample)
    vox = voxelize_scene(sample, FEATS, voxel_size=0.08, chunk_size=7_000)  # many chunks
    np.testing.assert_array_equal(vox.grid, ref["grid_coord"])
    np.testing.assert_array_equal(vox.inverse, ref["inverse"])
    np.testing.assert_array_equal(vox.feat, ref["feat"])
    assert vox.counts.sum() == len(room["coord"])
    assert vox.groups == {"color": slice(0, 3), "height": slice(3, 4)}


def test_single_pass_equals_the_lightning_forward(room, net) -> None:
    batch = collate([Voxelize(voxel_size=0.1, feat_keys=FEATS)(AddHeight()(room))])
    with torch.no_grad():
        ref = net(batch["feat"], batch["indices"], 1)[batch["inverse"]].argmax(1).numpy()
    pred = _predictor(net).predict(room)
    assert pred.num_blocks == 1
    np.testing.assert_array_equal(pred.labels, ref)
    assert len(np.unique(ref)) >= 4  # the calibrated net is not trivial


def test_block_plan_covers_every_voxel(room) -> None:
    vox = voxelize_scene(AddHeight()(room), FEATS, voxel_size=0.1)
    n, blocks = plan_blocks(vox.grid, tile=12, margin=5)
    best = np.zeros(len(vox.grid))
    seen = 0
    for ids, weight in blocks:
        assert np.all(np.diff(ids) > 0) and np.all((weight > 0) & (weight <= 1))
        best[ids] = np.maximum(best[ids], weight)
        seen += 1
    assert seen == n > 1
    np.testing.assert_array_equal(best, 1.0)  # every voxel lies in some block's core


def test_blocks_reproduce_one_pass_when_margins_hold_the_scene(room, net) -> None:
    """Every block then sees the whole scene on a grid shifted by whole pooling cells: the
    vote must equal the single pass, which checks alignment, gathering and weights."""
    one = _predictor(net).predict(room)
    many = _predictor(net, block_size=1.5, overlap=12.0, single_pass_max_voxels=0).predict(room)
    assert many.num_blocks > 4
    np.testing.assert_allclose(many.voxel_probs, one.voxel_probs, atol=1e-5)
    assert (many.labels == one.labels).mean() >= 0.9999


def test_tta_shapes_and_identity(room, net) -> None:
    plain = _predictor(net).predict(room)
    same = _predictor(net, tta=True, tta_angles=(0.0,), tta_flip=False).predict(room)
    np.testing.assert_array_equal(same.labels, plain.labels)
    opts = InferenceOptions(tta=True, tta_scales=(1.0, 1.25))
    assert len(opts.variants()) == 16
    tta = _predictor(net, tta=True, tta_scales=(0.9, 1.0)).predict(room)
    assert tta.labels.shape == plain.labels.shape and tta.labels.dtype == np.uint8
    assert tta.voxel_probs.shape == plain.voxel_probs.shape
    np.testing.assert_allclose(tta.voxel_probs.sum(1), 1.0, atol=1e-5)


class _PointwiseNet(torch.nn.Module):
    """Logits from each voxel's own features only: every TTA copy must give each voxel the
    same scores once mapped back, so TTA equals plain inference exactly."""

    num_stages = 4

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 9)

    def forward(self, feat: torch.Tensor, indices: torch.Tensor, batch_size: int) -> torch.Tensor:
        return self.head(feat) * 20.0


def test_tta_maps_every_copy_back_to_its_voxels(room) -> None:
    torch.manual_seed(1)
    net = _PointwiseNet().eval()
    plain = _predictor(net).predict(room)
    tta = _predictor(net, tta=True).predict(room)  # 4 quarter turns x mirror
    assert len(np.unique(plain.labels)) >= 3
    np.testing.assert_allclose(tta.voxel_probs, plain.voxel_probs, atol=1e-6)
    np.testing.assert_array_equal(tta.labels, plain.labels)


def test_quarter_turn_permutes_grid_cells_exactly() -> None:
    """Points at cell centres (voxel 1/8 m: exact in binary): voxelizing the turned points
    gives the turned cells, and normals turn with them."""
    rng = np.random.default_rng(0)
    cells = np.unique(rng.integers(0, 30, (3000, 3)), axis=0)
    coord = ((cells + 0.5) * 0.125).astype(np.float32)
    n = len(coord)
    sample = {"coord": coord, "color": rng.random((n, 3)).astype(np.float32)}
    sample["normal"] = np.tile(np.float32([1.0, 0.0, 0.0]), (n, 1))
    vox = voxelize_scene(sample, ["color", "normal"], voxel_size=0.125)
    g, f, back, _ = _transform(vox.grid.astype(np.int64), vox.feat, vox.counts, vox.groups,
                            angle=90.0, flip=False, scale=1.0, align=16)  # fmt: skip
    assert back is None and len(np.unique(g, axis=0)) == len(g) == n
    x, y, z = coord.T
    turned = {**sample, "coord": np.stack([-y, x, z], 1)}
    ref = voxelize_scene(turned, ["color", "normal"], voxel_size=0.125)
    ref_rows = {tuple(r): i for i, r in enumerate(ref.grid.astype(np.int64))}
    match = np.array([ref_rows[tuple(r)] for r in g])  # every turned cell exists
    np.testing.assert_array_equal(f[:, :3], ref.feat[match, :3])  # same voxel, same colour
    np.testing.assert_allclose(f[:, 3:], np.tile([0.0, 1.0, 0.0], (n, 1)), atol=1e-6)
    g2, _, _, _ = _transform(vox.grid.astype(np.int64), vox.feat, vox.counts, vox.groups,
                          angle=0.0, flip=True, scale=1.0, align=16)  # fmt: skip
    assert len(np.unique(g2, axis=0)) == n


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown inference option"):
        InferenceOptions.from_config({"blocksize": 3})
    with pytest.raises(ValueError, match="block_size"):
        InferenceOptions.from_config({"block_size": -1})
    with pytest.raises(ValueError, match="margin_weight"):
        InferenceOptions.from_config({"margin_weight": 2})
    opts = InferenceOptions.from_config({"tta_angles": [0, 180]}, tta=True)
    assert opts.variants() == [(0.0, False, 1.0), (0.0, True, 1.0), (180.0, False, 1.0),
                               (180.0, True, 1.0)]  # fmt: skip


@pytest.mark.slow
def test_trained_model_blocks_agree_and_tta_does_not_hurt(tmp_path: Path) -> None:
    """A short real training run: blocks agree with one pass on >= 99.9 % of points and TTA
    does not lower val mIoU."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from pointseg.metrics import confusion_matrix, scores
    from pointseg.train import train

    conf = Path(__file__).resolve().parents[1] / "conf"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", [
            "experiment=synthetic_fast", "trainer.max_epochs=8", "data.train_dataset.num_scenes=32",
            "trainer.check_val_every_n_epoch=8", "data.val_dataset.num_scenes=4",
            "logger=csv", "callbacks.progress_bar.refresh_rate=0",
        ])  # fmt: skip
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(tmp_path), str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
    ckpt = train(cfg)["best_ckpt"]
    from pointseg.data.datasets.synthetic import SyntheticRooms

    val = SyntheticRooms("val", num_scenes=4)
    one = Segmenter.from_checkpoint(ckpt, device="cpu")
    blocks = Segmenter.from_checkpoint(ckpt, device="cpu", options=InferenceOptions(
        block_size=3.0, overlap=3.0, single_pass_max_voxels=0))  # fmt: skip
    tta = Segmenter.from_checkpoint(ckpt, device="cpu", options=InferenceOptions(tta=True))
    cms, agree, total = {"one": 0, "tta": 0}, 0, 0
    for i in range(len(val)):
        scene = val[i]
        seg = torch.as_tensor(scene["segment"])
        a = one.predict(scene).labels
        b = blocks.predict(scene)
        assert b.num_blocks > 1
        agree, total = agree + int((a == b.labels).sum()), total + len(a)
        for name, lab in (("one", a), ("tta", tta.predict(scene).labels)):
            cms[name] = cms[name] + confusion_matrix(torch.from_numpy(lab.astype(np.int64)), seg,
                                                     9, -1)  # fmt: skip
    assert agree / total >= 0.999
    assert scores(cms["tta"]).miou >= scores(cms["one"]).miou
