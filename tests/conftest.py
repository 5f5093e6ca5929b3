from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import pointseg  # noqa: F401  (registers the config resolvers, pointseg.utils)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# small enough for a CPU smoke run, but through the real configs
TINY = [
    "data.train_dataset.num_scenes=2",
    "data.val_dataset.num_scenes=2",
    "data.test_dataset.num_scenes=2",
    "data.batch_size=2",
    "data.val_batch_size=2",
]

# One CPU epoch of an 8-channel network: lets a full experiment config train in seconds.
TINY_MODEL = [
    "trainer=cpu",
    "trainer.precision=32-true",
    "trainer.max_epochs=1",
    "model.net.stem_channels=8",
    "model.net.channels=[8,8,8,8,8,8,8,8]",
    "model.net.layers=[1,1,1,1,1,1,1,1]",
    "data.batch_size=1",
    "data.num_workers=0",
]


def compose_config(name: str, overrides: list[str] | None, root: Path) -> DictConfig:
    """Compose a real config (train, eval, predict, ...) with run paths inside ``root``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides or [])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(root / "run")
        cfg.paths.log_dir = str(root / "logs")
    return cfg


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """``compose_config`` with run paths inside ``tmp_path``."""

    def _compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
        return compose_config(config_name, overrides, tmp_path)

    yield _compose
    GlobalHydra.instance().clear()
