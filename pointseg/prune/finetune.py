"""Fine-tuning a pruned model through Lightning, and BatchNorm re-calibration."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm


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
) -> None:
    """``epochs`` epochs of Lightning training with the checkpoint's optimizer (``optimizer``:
    its config) at peak learning rate ``lr`` on a one-cycle schedule, without validation (the
    caller scores the result). Metrics go to ``<run_dir>/csv/<stage>/metrics.csv``."""
    if epochs <= 0:
        return
    from pytorch_lightning.callbacks import TQDMProgressBar

    opt_cfg = OmegaConf.to_container(OmegaConf.create(dict(optimizer)), resolve=True)
    opt_cfg["lr"] = lr
    module.optimizer_factory = hydra.utils.instantiate(opt_cfg)
    module.scheduler_factory = functools.partial(
        torch.optim.lr_scheduler.OneCycleLR,
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


@torch.no_grad()
def recalibrate_bn(module: nn.Module, loader: Any, *, progress: bool = False) -> int:
    """Recompute every BatchNorm's running mean/var as the plain average over ``loader``
    (train-mode forward passes, no gradient, weights untouched). Returns the batch count.

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
        for batch in tqdm(loader, desc="BN recalibration", disable=not progress, leave=False):
            module(batch)
            n += 1
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        module.train(was_training)
    return n
