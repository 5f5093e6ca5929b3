from __future__ import annotations

import hydra
import pytest
from omegaconf import DictConfig, OmegaConf

from pointseg.train import build, instantiate_list
from tests.conftest import CONF_DIR, TINY


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_configs() -> None:
    for group in ["data", "model", "trainer", "callbacks", "logger", "paths", "debug"]:
        assert group_options(group), group


@pytest.mark.parametrize("model", group_options("model"))
def test_models_compose_and_instantiate(compose_cfg, model: str) -> None:
    cfg: DictConfig = compose_cfg("train", [f"model={model}", *TINY])
    dm, module = build(cfg)
    assert module.num_classes == cfg.data.num_classes
    assert module.run_config["model"]["net"] == OmegaConf.to_container(cfg.model.net, resolve=True)
    assert module.net.num_classes == cfg.data.num_classes
    assert dm.num_classes == module.num_classes


@pytest.mark.parametrize("optimizer", group_options("model/optimizer"))
@pytest.mark.parametrize("scheduler", group_options("model/scheduler"))
def test_optimizers_and_schedulers(compose_cfg, optimizer: str, scheduler: str) -> None:
    cfg = compose_cfg("train", [f"model/optimizer={optimizer}", f"model/scheduler={scheduler}"])
    module = hydra.utils.instantiate(cfg.model)
    opt = module.optimizer_factory([p for p in module.parameters()])
    assert opt.defaults["lr"] == cfg.model.optimizer.lr
    if scheduler != "none":
        sched = module.scheduler_factory(opt, total_steps=10)
        assert sched is not None


@pytest.mark.parametrize("group", ["trainer", "callbacks", "logger", "debug", "data"])
def test_groups_compose(compose_cfg, group: str) -> None:
    for option in group_options(group):
        cfg = compose_cfg("train", [f"{group}={option}"])
        if group == "trainer" and option in ("gpu", "ddp"):
            assert cfg.trainer.accelerator == "gpu"
            continue  # needs a GPU to instantiate
        if group in ("callbacks", "logger"):
            assert all(obj is not None for obj in instantiate_list(cfg.get(group)))
        if group == "trainer" or group == "debug":
            trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
            assert trainer.max_epochs == cfg.trainer.max_epochs


def test_experiments_compose(compose_cfg) -> None:
    for option in group_options("experiment"):
        cfg = compose_cfg("train", [f"experiment={option}"])
        dm, module = build(cfg)
        assert dm.num_classes == module.num_classes


def test_eval_config_composes(compose_cfg) -> None:
    cfg = compose_cfg("eval", ["ckpt_path=some.ckpt", "split=test"])
    assert cfg.ckpt_path == "some.ckpt" and cfg.split == "test"


def test_misspelt_override_is_refused(compose_cfg) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_cfg("train", ["data.voxelsize=0.1"])


def test_precision_is_amp_on_cuda_and_fp32_on_cpu(compose_cfg, monkeypatch) -> None:
    import torch

    cfg = compose_cfg("train")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cfg.trainer.precision == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cfg.trainer.precision == "16-mixed"
    cpu = compose_cfg("train", ["trainer=cpu"])
    assert cpu.trainer.accelerator == "cpu" and cpu.trainer.precision == "32-true"
    assert compose_cfg("train", ["trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"


def test_poly_schedule_decays_to_zero(compose_cfg) -> None:
    import torch

    cfg = compose_cfg("train", ["model/scheduler=poly", "model/optimizer=sgd"])
    module = hydra.utils.instantiate(cfg.model)
    opt = module.optimizer_factory([torch.nn.Parameter(torch.zeros(2))])
    sched = module.scheduler_factory(opt, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    base = cfg.model.optimizer.lr
    assert lrs[0] == pytest.approx(base)
    assert lrs[5] == pytest.approx(base * (1 - 5 / 10) ** 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)
