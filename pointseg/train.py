"""``pointseg-train``: fit a segmentation model from a Hydra config.

``train(cfg)`` does the work and is what tests call; ``main`` is the thin Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from pointseg.guards import guard_task, run_hydra
from pointseg.metrics import format_table
from pointseg.segmenter import feature_recipe
from pointseg.threads import set_threads
from pointseg.utils import CONF_DIR, find_last_checkpoint, reuse_freed_memory, write_json

log = logging.getLogger(__name__)


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Callbacks/loggers given as a mapping name -> config (null entries skipped)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None]


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, module


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then report the best checkpoint's ``val/miou``; returns what metrics.json holds."""
    set_threads(cfg.get("threads"))  # pointseg/threads.py: null = the CPUs available
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    datamodule, module = build(cfg)
    # how raw files become this model's input, for every command that labels points later
    module.feature_recipe = feature_recipe(module.run_config, datamodule).to_dict()
    log.info("model: %s parameters", f"{sum(p.numel() for p in module.parameters()):,}")

    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    if not loggers:  # logger=none: a learning-rate monitor would have nowhere to write
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = str(find_last_checkpoint(cfg.paths.log_dir, cfg.task_name))
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    result: dict[str, Any] = {"run_dir": str(run_dir.resolve())}
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
    if best:
        result["best_ckpt"] = str(Path(best).resolve())
        result["val/miou"] = float(ckpt_cb.best_model_score)
    elif "val" in module.last_scores:
        result["val/miou"] = module.last_scores["val"].miou
    if "val" in module.last_scores:
        # the table of the last validation; the best checkpoint's is in its eval
        result["last_val"] = _scores_dict(module.last_scores["val"], module.class_names)
        if trainer.is_global_zero:
            print(format_table(module.last_scores["val"], module.class_names))
    if cfg.get("test") and not trainer.fast_dev_run:
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        result["test"] = _scores_dict(module.last_scores["test"], module.class_names)
    if not trainer.fast_dev_run and trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result


def _scores_dict(sc: Any, class_names: list[str]) -> dict[str, Any]:
    return {
        "miou": sc.miou,
        "macc": sc.macc,
        "allacc": sc.allacc,
        "iou": dict(zip(class_names, sc.iou.tolist(), strict=True)),
    }


def print_summary(result: dict[str, Any]) -> None:
    if "val/miou" in result:
        print(f"best val/miou: {result['val/miou']:.4f}")
    if "best_ckpt" in result:
        print(f"best_ckpt: {result['best_ckpt']}")
    print(f"run_dir: {result['run_dir']}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@guard_task("pointseg-train")
def _hydra_main(cfg: DictConfig) -> None:
    reuse_freed_memory()  # the console script only: a library call leaves the allocator alone
    result = train(cfg)
    if rank_zero_only.rank == 0:  # under DDP every rank returns here; one summary is enough
        print_summary(result)


def main() -> None:
    run_hydra(_hydra_main, "train")


if __name__ == "__main__":
    main()
