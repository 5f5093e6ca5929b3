"""Checkpointing that survives crashes: periodic ``last.ckpt``, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from pointseg.checkpoint import save_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writes through ``pointseg.checkpoint.save_checkpoint``: plain
    containers only, a temporary file, fsync, then rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        save_checkpoint(checkpoint, path)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps and at the end of every epoch.

    The best-model checkpoint is a separate callback; this one only keeps the newest state
    (weights, optimizer, LR schedule, loops, RNG) so ``ckpt_path=last`` loses at most one
    interval of work.
    """

    def __init__(self, dirpath: str | Path, *, every_n_train_steps: int = 100) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @property
    def state_key(self) -> str:  # distinct from the best-model callback's key
        return f"LastCheckpoint{{dirpath={self.dirpath}}}"
