"""``pointseg-train``: fit a segmentation model from a Hydra config.

``train(cfg)`` does the work and is what tests call; ``main`` is the thin Hydra wrapper.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from pointseg.callbacks import entry_callbacks
from pointseg.guards import INPUT_ERROR_EXIT, guard_task, run_hydra
from pointseg.lit_module import ScheduleError
from pointseg.metrics import format_table
from pointseg.recipe import feature_recipe
from pointseg.resume import (
    ResumeError,
    check_not_multirun,
    command_line_overrides,
    keep_csv_history,
    resume_config,
)
from pointseg.utils import CONF_DIR, reuse_freed_memory, write_json

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


class ValidateAtEnd(Callback):
    """Validate after the last epoch too, whatever ``check_val_every_n_epoch`` says, and after
    the last step of a run that ``trainer.max_steps`` stops mid-epoch, so every run ends with
    scores and a best checkpoint."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        if last and trainer.check_val_every_n_epoch is not None:
            trainer.check_val_every_n_epoch = 1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if trainer.max_steps is None or trainer.max_steps < 0 or trainer.fast_dev_run:
            return
        if trainer.global_step >= trainer.max_steps and not trainer.should_stop:
            # the loop ends after this batch without reaching the epoch's end: stopping here
            # the Lightning way makes it validate first (as early stopping would)
            if trainer.check_val_every_n_epoch is not None:
                trainer.check_val_every_n_epoch = 1
            trainer.should_stop = True


def _warn_validation_schedule(cfg: DictConfig) -> None:
    every = cfg.trainer.get("check_val_every_n_epoch")
    epochs = cfg.trainer.get("max_epochs")
    if cfg.trainer.get("fast_dev_run") or not every or not epochs or epochs < 0:
        return
    if epochs < every:
        log.warning(
            "trainer.max_epochs=%s < trainer.check_val_every_n_epoch=%s: validating only after "
            "the last epoch", epochs, every,
        )  # fmt: skip


def train(
    cfg: DictConfig,
    overrides: Sequence[str] | None = None,
    *,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fit, then report the best checkpoint's ``val/miou``; returns what metrics.json holds.

    With ``ckpt_path`` (a file or ``last``) the checkpoint's run continues in its own folder
    with its stored config; ``overrides`` (by default this Hydra run's command line) apply on
    top of it. ``callbacks`` are added to the config's (the console script adds
    ``FollowLoad``: ``pointseg.callbacks.entry_callbacks``).
    """
    ckpt_path = cfg.get("ckpt_path")
    file_log: logging.Handler | None = None
    if ckpt_path:
        check_not_multirun(ckpt_path)
        typed = command_line_overrides() if overrides is None else list(overrides)
        resumed = resume_config(cfg, ckpt_path, typed, conf_dir=CONF_DIR)
        cfg, ckpt_path = resumed.cfg, str(resumed.ckpt_path)
        # the log goes on in the run's own folder (Hydra's folder of this call keeps a copy)
        file_log = logging.FileHandler(resumed.run_dir / f"{cfg.task_name}.log")
        file_log.setFormatter(
            logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        )
        logging.getLogger().addHandler(file_log)
        log.info("resuming %s from %s with its stored config", resumed.run_dir, ckpt_path)
        if resumed.applied:
            log.warning(
                "resume: the run's stored config is used, with these command-line overrides "
                "on top: %s", " ".join(resumed.applied),
            )  # fmt: skip
    try:
        return _fit(cfg, ckpt_path, callbacks)
    finally:
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()


def _fit(cfg: DictConfig, ckpt_path: str | None, extra: Sequence[Callback]) -> dict[str, Any]:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    _warn_validation_schedule(cfg)
    datamodule, module = build(cfg)
    # how raw files become this model's input, for every command that labels points later
    module.feature_recipe = feature_recipe(module.run_config, datamodule).to_dict()
    log.info("model: %s parameters", f"{sum(p.numel() for p in module.parameters()):,}")

    callbacks = [*instantiate_list(cfg.get("callbacks")), ValidateAtEnd(), *extra]
    loggers = instantiate_list(cfg.get("logger"))
    if not loggers:  # logger=none: a learning-rate monitor would have nowhere to write
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    if ckpt_path and trainer.is_global_zero:
        keep_csv_history(loggers)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    result: dict[str, Any] = {"run_dir": str(run_dir.resolve())}
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
    if best and ckpt_cb.best_model_score is not None:
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
    callbacks = entry_callbacks(cfg)  # the thread count, once, for the run: pointseg/threads.py
    try:
        result = train(cfg, callbacks=callbacks)
    except (ResumeError, ScheduleError) as err:
        print(f"pointseg-train: error: {err}", file=sys.stderr)
        sys.exit(INPUT_ERROR_EXIT)
    if rank_zero_only.rank == 0:  # under DDP every rank returns here; one summary is enough
        print_summary(result)


def main() -> None:
    run_hydra(_hydra_main, "train")


if __name__ == "__main__":
    main()
