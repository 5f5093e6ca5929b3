"""Lightning callbacks of every run: crash-safe checkpoints (a periodic ``last.ckpt``, written
atomically) and a CPU thread count that follows the machine's load (``FollowLoad``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from pointseg.checkpoint import save_checkpoint
from pointseg.threads import ThreadGovernor, set_threads

log = logging.getLogger(__name__)


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


class FollowLoad(pl.Callback):
    """Between batches, lowers torch's CPU thread count while other processes keep CPUs busy,
    and raises it back, up to the run's count (``pointseg.threads.ThreadGovernor``); at the end
    of each stage (fit, validate, test, predict) the run's count is set again.

    It changes no result: every CPU op of a training step, eval forward and prediction gives the
    same bits on any thread count (``tests/test_thread_invariance.py``), so a run next to busy
    neighbours trains the same model as on a quiet machine. Inactive on accelerators. The entry
    points add it unless ``follow_load=false``.
    """

    def __init__(self, *, interval: float = 1.0) -> None:
        # the first sample now: the load is known by the first batch, after the set-up
        self.governor: ThreadGovernor | None = ThreadGovernor(
            torch.get_num_threads(), interval=interval
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type != "cpu":
            self.governor = None
        elif self.governor is not None:
            # the run's count as the strategy left it (Lightning's DDP launcher gives each rank
            # its share), and DDP ranks on this machine share what is free
            self.governor.limit = self.governor.threads = torch.get_num_threads()
            self.governor.ranks = max(1, int(trainer.num_devices))

    def update(self) -> None:
        """Follow the load now (cheap: samples at most once per ``interval`` seconds)."""
        if self.governor is not None:
            self.governor.update()

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.update()

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.update()

    def on_test_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.update()

    def on_predict_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.update()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.governor is not None:
            self.governor.reset()


def thread_invariant_gemm() -> bool:
    """Whether torch's CPU GEMMs give the same bits on any thread count here: MKL in its strict
    mode (``MKL_CBWR`` with ``STRICT``), which covers its AVX2 and AVX-512 code paths only."""
    if "STRICT" not in os.environ.get("MKL_CBWR", "").upper():
        return False
    if "blas_info=mkl" not in torch.__config__.show().lower().replace(" ", ""):
        return False
    try:
        return " avx2 " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


def entry_callbacks(cfg: Any) -> list[pl.Callback]:
    """The thread policy of an entry point (pointseg-train, -eval, -predict), once, before any
    tensor work: sets the run's count (``set_threads``) and returns the callbacks to add to its
    library call, ``FollowLoad`` unless ``follow_load=false`` or where the GEMMs are not
    thread-invariant (``thread_invariant_gemm``: the count then stays fixed, so results stay
    reproducible). Library callers add it themselves, if at all."""
    follow = bool(cfg.get("follow_load", True))
    if follow and not thread_invariant_gemm():
        log.warning(
            "follow_load: off, because this CPU's BLAS is not thread-invariant (MKL's strict "
            "mode needs an AVX2 CPU): the thread count stays fixed for the run"
        )
        follow = False
    set_threads(cfg.get("threads"), follow_load=follow)
    return [FollowLoad()] if follow else []


def block_hook(callbacks: Sequence[pl.Callback]) -> Callable[[], None] | None:
    """What a ``Segmenter`` calls between blocks: the ``FollowLoad`` among ``callbacks``."""
    return next((cb.update for cb in callbacks if isinstance(cb, FollowLoad)), None)
