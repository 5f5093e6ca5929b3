"""pointseg-prune: sparsity, channel removal, compressed checkpoints, loading them everywhere."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from pointseg.checkpoint import (
    build_net,
    load_checkpoint,
    save_checkpoint,
    weights_checkpoint,
)
from pointseg.models.sparse_unet import SparseUNet
from pointseg.prune import structured, unstructured
from pointseg.prune.methods import MagnitudePruning
from pointseg.utils import CONF_DIR
from tests.conftest import TINY

TINY_NET = [
    "model.net.stem_channels=8",
    "model.net.channels=[8,12,12,8]",
    "model.net.layers=[1,1,1,1]",
    "data.voxel_size=0.25",
]


def _tiny_net(seed: int = 0) -> SparseUNet:
    torch.manual_seed(seed)
    net = SparseUNet(
        4, 5, stem_channels=8, channels=(8, 12, 16, 12, 8, 8), layers=(1, 2, 1, 1, 2, 1)
    )
    for m in net.modules():  # non-trivial BN statistics, so eval mode is not an identity
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return net.eval()


def _scene(n: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.zeros(n, 4, dtype=torch.int32)
    idx[:, 1:] = torch.randint(0, 24, (n, 3), generator=g, dtype=torch.int32)
    idx = torch.unique(idx, dim=0)
    return torch.randn(len(idx), 4, generator=g), idx


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained checkpoint of a tiny network on coarse synthetic rooms, as train stores it."""
    import hydra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF_DIR

    root = tmp_path_factory.mktemp("tiny")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, *TINY_NET])
    GlobalHydra.instance().clear()
    cfg.paths.output_dir = str(root)  # no Hydra run: resolve the interpolation by hand
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model)
    return save_checkpoint(
        weights_checkpoint(module.state_dict(), OmegaConf.to_container(cfg, resolve=True)),
        root / "tiny.ckpt",
    )


def test_global_magnitude_masks_give_the_requested_sparsity() -> None:
    net = _tiny_net()
    bn_before = {k: v.clone() for k, v in net.state_dict().items() if ".bn" in k or "proj.1" in k}
    weights = unstructured.prunable_weights(net)
    assert any(w.ndim == 5 for w in weights.values()) and "head.weight" in weights
    for amount in (0.0, 0.5, 0.83):
        pruned = copy.deepcopy(net)
        ws = unstructured.prunable_weights(pruned)
        unstructured.apply_masks(pruned, unstructured.global_magnitude_masks(ws, amount))
        sp = unstructured.weight_sparsity(pruned)
        assert sp.zeros == round(amount * sp.total)
        # the survivors are the largest magnitudes over all layers together
        flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
        kept = torch.cat([w.detach().abs().reshape(-1) for w in ws.values()])
        if amount:
            assert kept[kept > 0].min() >= flat.sort().values[sp.zeros - 1]
        # zeros are +0.0 (a zero bit pattern), BatchNorm is untouched
        assert all((w.view(torch.int32)[w == 0] == 0).all() for w in ws.values())
        sd = pruned.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in bn_before.items())


def test_cubic_schedule() -> None:
    s = [unstructured.cubic_sparsity(t, total_steps=10, final=0.8) for t in range(12)]
    assert s[0] == 0.0 and s[10] == s[11] == 0.8
    assert all(a < b for a, b in zip(s[:10], s[1:11], strict=True))
    assert s[5] == pytest.approx(0.8 * (1 - 0.5**3))


@pytest.mark.parametrize("amount", [1.5, -0.1, 1.0, "abc"])
def test_bad_amount_names_the_field(amount) -> None:
    with pytest.raises(ValueError, match=r"prune\.amount"):
        unstructured.check_amount(amount)


def test_bad_amount_through_the_entry_point(compose_cfg, tiny_ckpt: Path) -> None:
    from pointseg.prune.run import prune

    cfg = compose_cfg("prune", [f"ckpt_path={tiny_ckpt}", "prune.amount=1.5"])
    with pytest.raises(ValueError, match=r"prune\.amount must be in \[0, 1\).*1\.5"):
        prune(cfg)
    cfg = compose_cfg("prune", [f"ckpt_path={tiny_ckpt}", "prune=structured", "prune.amount=2"])
    with pytest.raises(ValueError, match=r"prune\.amount"):
        prune(cfg)


def test_l1_penalty_adds_its_subgradient() -> None:
    net = _tiny_net()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    cb = unstructured.L1Penalty(l1=0.01, group=0.1, prefix="")
    cb.on_after_backward(None, net)  # type: ignore[arg-type]
    w = net.encoders[0][0].conv.weight
    norms = w.detach().reshape(len(w), -1).norm(dim=1).reshape(-1, 1, 1, 1, 1)
    expected = 0.01 * torch.sign(w.detach()) + 0.1 * w.detach() / norms
    torch.testing.assert_close(w.grad, expected)
    assert torch.equal(net.stem.bn.weight.grad, torch.zeros_like(net.stem.bn.weight))


def test_structured_pruning_equals_the_zeroed_network() -> None:
    net = _tiny_net()
    cfg = {"_target_": "pointseg.models.sparse_unet.SparseUNet", "in_channels": 4,
           "num_classes": 5, "stem_channels": 8, "channels": [8, 12, 16, 12, 8, 8],
           "layers": [1, 2, 1, 1, 2, 1]}  # fmt: skip
    plan = structured.channel_plan(net)
    assert {"stem", "down.0", "enc_mid.1.1", "up.2", "dec.1", "dec_mid.1.1"} <= set(plan.groups)
    feat, idx = _scene()
    for by, amount in (("bn", 0.5), ("l1", 0.3)):
        keep = structured.select_channels(structured.channel_scores(net, plan, by=by), amount)
        small, small_cfg = structured.prune_channels(net, cfg, keep)
        reference = copy.deepcopy(net)
        structured.zero_channels(reference, plan, keep)
        with torch.no_grad():
            want, got, orig = reference(feat, idx, 1), small.eval()(feat, idx, 1), net(feat, idx, 1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(orig, want, atol=1e-3)  # the pruning did change the function
        assert small.num_parameters() < 0.8 * net.num_parameters()
        w = small_cfg["widths"]
        assert w["stem"] == round(8 * (1 - amount)) and len(w["dec_mid"][1]) == 2
        # the stored config alone rebuilds the small network
        import hydra

        rebuilt = hydra.utils.instantiate(small_cfg)
        rebuilt.load_state_dict(small.state_dict())
        assert rebuilt.num_parameters() == small.num_parameters()


def test_default_widths_keep_the_presets() -> None:
    from pointseg.models.sparse_unet import spunet_small

    net = spunet_small(4, 9)
    assert net.num_parameters() == 1_807_369
    explicit = spunet_small(4, 9, widths=net.widths)
    assert explicit.num_parameters() == 1_807_369
    with pytest.raises(ValueError, match=r"widths\.down"):
        spunet_small(4, 9, widths={"down": [8, 8]})


def test_compressed_checkpoint_round_trips_bit_exactly(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 3, 3, 3, 32, generator=g)
    w[torch.rand(w.shape, generator=g) < 0.85] = 0.0
    w.view(-1)[:3] = torch.tensor([-0.0, float("nan"), float("inf")])
    sd = {
        "net.a.weight": w,
        "net.b.weight": torch.randn(8, 8, generator=g),  # dense: stays dense
        "net.c.weight": torch.zeros(16, 16, dtype=torch.float16),
        "net.bn.num_batches_tracked": torch.tensor(7),
        "net.empty": torch.zeros(0, 3),
    }
    config = {"model": {"net": {"_target_": "x"}}, "data": {}}
    dense = save_checkpoint(weights_checkpoint(sd, config), tmp_path / "dense.ckpt")
    sparse = save_checkpoint(weights_checkpoint(sd, config, compressed=True), tmp_path / "s.ckpt")
    assert sparse.stat().st_size < 0.35 * dense.stat().st_size
    # plain containers: loadable with weights_only=True
    raw = torch.load(sparse, weights_only=True)
    assert raw["pointseg_format"] == "sparse-bitmask-v1" and "state_dict" not in raw
    assert isinstance(raw["sparse_state_dict"]["net.b.weight"], torch.Tensor)
    back = load_checkpoint(sparse)["state_dict"]
    assert back.keys() == sd.keys()
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        bits = {4: torch.int32, 2: torch.int16, 8: torch.int64}[v.element_size()]
        if v.is_floating_point():
            assert torch.equal(back[k].view(bits), v.view(bits)), k
        else:
            assert torch.equal(back[k], v), k
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary file


def test_finetuning_keeps_pruned_weights_zero(tiny_ckpt: Path) -> None:
    import hydra

    ckpt = load_checkpoint(tiny_ckpt)
    stored = OmegaConf.create(ckpt["pointseg_config"])
    module = hydra.utils.instantiate(stored.model)
    module.load_state_dict(ckpt["state_dict"])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cb = unstructured.MaskedFineTuning(final=0.6, ramp_steps=0)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[cb],
    )  # fmt: skip
    trainer.fit(module, datamodule=hydra.utils.instantiate(stored.data))
    params = dict(module.named_parameters())
    assert cb.masks and all(k.startswith("net.") for k in cb.masks)
    for name, mask in cb.masks.items():
        assert (params[name][~mask] == 0).all(), name
    changed = [n for n, m in cb.masks.items() if not torch.equal(params[n][m], before[n][m])]
    assert changed  # the kept weights were trained
    assert unstructured.weight_sparsity(module.net).fraction == pytest.approx(0.6, abs=1e-4)


def _prune(compose_cfg, ckpt: Path, *overrides: str) -> dict:
    from pointseg.prune.run import prune

    args = [f"ckpt_path={ckpt}", "prune.epochs=1", "report.latency_runs=1",
            "report.latency_warmup=0", "progress=false", "+data.val_dataset.num_scenes=1",
            *overrides]  # fmt: skip
    return prune(compose_cfg("prune", args))


def _evaluate(compose_cfg, ckpt: str | Path, out: Path) -> float:
    from pointseg.eval import evaluate

    cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", "+data.val_dataset.num_scenes=1"])
    cfg.paths.output_dir = str(out)
    cfg.report.enabled = False
    return evaluate(cfg)["val/miou"]


def _predict(compose_cfg, ckpt: str | Path, tmp_path: Path) -> np.ndarray:
    from pointseg.data.datasets.synthetic import generate_room, scene_seed
    from pointseg.predict import predict

    room = generate_room(scene_seed(0, "test", 1), room_size=(4.0, 5.0), density=300.0)
    np.savez(tmp_path / "cloud.npz", coord=room["coord"], color=room["color"])
    out = tmp_path / "pred"
    args = [f"ckpt_path={ckpt}", f"input={tmp_path / 'cloud.npz'}", f"output={out}"]
    cfg = compose_cfg("predict", [*args, "progress=false", "write_ply=false"])
    predict(cfg)
    labels = np.load(out / "cloud.labels.npy")
    assert labels.shape == (len(room["coord"]),)
    return labels


def test_magnitude_run_writes_a_compressed_checkpoint_that_eval_and_predict_load(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    result = _prune(compose_cfg, tiny_ckpt, "prune=magnitude", "prune.amount=0.7",
                    "prune.sweep=[0.3]")  # fmt: skip
    run_dir = Path(result["run_dir"])
    assert (run_dir / "prune_report.md").is_file() and (run_dir / "prune_curve.png").is_file()
    assert [s["amount"] for s in result["sweep"]] == [0.3, 0.7]
    sparse = Path(result["pruned_ckpt"])
    assert sparse.name == "pruned_sparse.ckpt"
    assert sparse.stat().st_size < (run_dir / "checkpoints" / "pruned.ckpt").stat().st_size
    net = build_net(load_checkpoint(sparse))
    assert unstructured.weight_sparsity(net).fraction == pytest.approx(0.7, abs=1e-4)
    assert result["after"]["sparsity"] == pytest.approx(0.7, abs=1e-4)
    miou = _evaluate(compose_cfg, sparse, tmp_path / "eval")
    assert miou == pytest.approx(result["after"]["miou"], abs=1e-6)
    labels = _predict(compose_cfg, sparse, tmp_path)
    dense_labels = _predict(compose_cfg, run_dir / "checkpoints" / "pruned.ckpt", tmp_path)
    np.testing.assert_array_equal(labels, dense_labels)


def test_structured_run_rebuilds_the_smaller_network_from_its_checkpoint(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    result = _prune(compose_cfg, tiny_ckpt, "prune=structured", "prune.amount=0.5",
                    "prune.sweep=[]")  # fmt: skip
    ckpt = load_checkpoint(result["pruned_ckpt"])
    widths = ckpt["pointseg_config"]["model"]["net"]["widths"]
    assert widths["stem"] == 4 and widths["down"] == [4, 6]
    net = build_net(ckpt)
    assert net.widths == widths == result["widths"]
    assert result["after"]["params"] < 0.4 * result["dense"]["params"]
    assert result["after"]["macs"] < 0.5 * result["dense"]["macs"]
    miou = _evaluate(compose_cfg, result["pruned_ckpt"], tmp_path / "eval")
    assert miou == pytest.approx(result["after"]["miou"], abs=1e-6)
    _predict(compose_cfg, result["pruned_ckpt"], tmp_path)


def test_l1_run_thresholds_to_the_requested_sparsity(compose_cfg, tiny_ckpt: Path) -> None:
    result = _prune(compose_cfg, tiny_ckpt, "prune=l1", "prune.amount=0.5", "prune.sweep=[]",
                    "prune.recover_epochs=1", "prune.group_lasso=1e-4")  # fmt: skip
    stages = [t["stage"] for t in result["trajectory"]]
    assert stages == [
        "after L1 fine-tuning",
        "thresholded",
        "fine-tuned",
        "fine-tuned, BN recalibrated",
    ]
    assert result["after"]["miou"] == result["trajectory"][-1]["miou"]
    net = build_net(load_checkpoint(result["pruned_ckpt"]))
    assert unstructured.weight_sparsity(net).fraction == pytest.approx(0.5, abs=1e-4)


def test_bn_recalibration_averages_every_batch_and_keeps_weights() -> None:
    from pointseg.prune.finetune import recalibrate_bn

    bn = torch.nn.BatchNorm1d(3, momentum=0.02).eval()
    bn.running_mean.fill_(5.0)
    weight = bn.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(50, 3, generator=g) + i for i in range(3)]
    assert recalibrate_bn(bn, batches) == 3
    want = torch.stack([b.mean(0) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, want)
    assert bn.momentum == 0.02 and not bn.training and torch.equal(bn.weight, weight)


def test_prune_config_maps_to_its_method_class_by_target() -> None:
    from pointseg.prune.methods import ChannelPruning, L1Pruning, MagnitudePruning, PruneMethod

    for name, cls in (("magnitude", MagnitudePruning), ("l1", L1Pruning),
                      ("structured", ChannelPruning)):  # fmt: skip
        cfg = OmegaConf.load(CONF_DIR / "prune" / f"{name}.yaml")
        method = PruneMethod.from_config(cfg)
        assert type(method) is cls and method.name == name
        assert method.amount == cfg.amount and list(method.sweep) == list(cfg.sweep)
    with pytest.raises(ValueError, match=r"unknown prune option\(s\) \['ramp'\]"):
        PruneMethod.from_config({"_target_": "pointseg.prune.methods.L1Pruning", "ramp": 0.5})
    with pytest.raises(ValueError, match=r"prune._target_=collections.OrderedDict is not"):
        PruneMethod.from_config({"_target_": "collections.OrderedDict"})
    with pytest.raises(ValueError, match=r"prune._target_ is missing"):
        PruneMethod.from_config({"amount": 0.5})
    with pytest.raises(ValueError, match=r"prune\.criterion"):
        PruneMethod.from_config({"_target_": "pointseg.prune.methods.ChannelPruning",
                                 "criterion": "random"})  # fmt: skip


@dataclasses.dataclass
class HalfRampPruning(MagnitudePruning):
    """A user's method: magnitude pruning under its own name and description."""

    name: ClassVar[str] = "half-ramp"

    def describe(self) -> str:
        return "half ramp"


def test_a_method_of_ones_own_runs_through_the_pipeline(compose_cfg, tiny_ckpt: Path) -> None:
    result = _prune(compose_cfg, tiny_ckpt, "prune._target_=tests.test_prune.HalfRampPruning",
                    "prune.amount=0.6", "prune.sweep=[]")  # fmt: skip
    assert result["method"] == "half-ramp" and result["finetune"] == "half ramp"
    net = build_net(load_checkpoint(result["pruned_ckpt"]))
    assert unstructured.weight_sparsity(net).fraction == pytest.approx(0.6, abs=1e-4)


def test_las_model_finetunes_within_the_trained_runs_steps(compose_cfg, tmp_path: Path) -> None:
    """data=las loops its blocks 1000 times: fine-tuning takes the trained run's epoch
    (trainer.limit_train_batches) and at most its steps, not 1000 passes over the blocks."""
    import hydra

    from pointseg.prepare.las import prepare as prepare_las
    from pointseg.prune.run import prune
    from tests.test_prepare_las import make_tile

    make_tile(tmp_path / "raw" / "tile.las", n=1500, codes=(2, 5, 6))
    prepare_las(tmp_path / "raw", tmp_path / "data" / "las", split_by="x_median",
                block_size=30, hag_radius="5,15")  # fmt: skip
    data = [f"paths.data_dir={tmp_path / 'data'}", "data.feature_widths.hag=2"]
    cfg = compose_cfg("train", ["data=las", *data, *TINY_NET[:3], "trainer.max_epochs=2",
                                "trainer.limit_train_batches=3"])  # fmt: skip
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model)
    ckpt = save_checkpoint(
        weights_checkpoint(module.state_dict(), OmegaConf.to_container(cfg, resolve=True)),
        tmp_path / "las.ckpt",
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    assert len(datamodule.train_dataloader()) > 1000  # one pass of the looped blocks
    result = prune(compose_cfg("prune", [
        f"ckpt_path={ckpt}", "prune.epochs=6", "prune.sweep=[]", "report.latency_runs=1",
        "report.latency_warmup=0", "progress=false", "report.enabled=false",
    ]))  # fmt: skip
    steps = result["finetune_steps"]
    assert steps["steps_per_epoch"] == 3 and steps["trained_steps"] == 6  # 2 epochs x 3 steps
    assert steps["planned"] == 6 and steps["done"] == 6  # 6 epochs x 3 steps, capped at 6
