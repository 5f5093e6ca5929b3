"""Fine-tuning a pruned model through Lightning, and BatchNorm re-calibration."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from pointseg.lit_module import one_cycle_lr


def finetune(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    callbacks: list[pl.Callback],
    *,
    optimizer: Mapping[str, Any],
    lr: float,
    epochs: int,
    stage: str,
    run_dir: str | Path,
    trainer_cfg: Mapping[str, Any],
    progress: bool = True,
    steps_per_epoch: int | None = None,
    max_steps: int = -1,
) -> int:
    """``epochs`` epochs of Lightning training with the checkpoint's optimizer (``optimizer``:
    its config) at peak learning rate ``lr`` on a one-cycle schedule, without validation (the
    caller scores the result); an epoch is ``steps_per_epoch`` batches (None: the whole
    loader) and the run stops after ``max_steps`` (-1: no limit). Metrics go to
    ``<run_dir>/csv/<stage>/metrics.csv``. Returns the optimizer steps taken."""
    if epochs <= 0 or max_steps == 0:
        return 0
    from pytorch_lightning.callbacks import TQDMProgressBar

    opt_cfg = OmegaConf.to_container(OmegaConf.create(dict(optimizer)), resolve=True)
    opt_cfg["lr"] = lr
    module.optimizer_factory = hydra.utils.instantiate(opt_cfg)
    module.scheduler_factory = functools.partial(
        one_cycle_lr,
        max_lr=lr,
        pct_start=0.1,
        div_factor=10.0,
        final_div_factor=100.0,
    )
    trainer = pl.Trainer(
        accelerator=trainer_cfg.get("accelerator", "cpu"),
        devices=1,
        precision=trainer_cfg.get("precision", "32-true"),
        max_epochs=epochs,
        max_steps=max_steps,
        limit_train_batches=steps_per_epoch,
        logger=pl.loggers.CSVLogger(Path(run_dir), name="csv", version=stage),
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
        callbacks=[*callbacks, *([TQDMProgressBar(refresh_rate=1)] if progress else [])],
        enable_progress_bar=progress,
        default_root_dir=str(run_dir),
    )
    trainer.fit(module, datamodule=datamodule)
    return int(trainer.global_step)


@torch.no_grad()
def recalibrate_bn(
    module: nn.Module, loader: Any, *, progress: bool = False, max_batches: int | None = None
) -> int:
    """Recompute every BatchNorm's running mean/var as the plain average over ``loader``
    (its first ``max_batches`` batches; train-mode forward passes, no gradient, weights
    untouched). Returns the batch count.

    Pruning changes what each BN sees, but its running statistics, averaged with a small
    momentum, still mostly describe the weights before pruning; evaluated with those, a
    pruned network scores far below what its weights can do.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    was_training = module.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts the same
    module.train()
    n = 0
    try:
        batches = loader if max_batches is None else itertools.islice(loader, max_batches)
        total = None if max_batches is None else min(max_batches, len(loader))
        for batch in tqdm(batches, desc="BN recalibration", total=total, disable=not progress,
                          leave=False):  # fmt: skip
            module(batch)
            n += 1
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        module.train(was_training)
    return n
