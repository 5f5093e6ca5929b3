"""LightningModule: cross-entropy on points, confusion-matrix metrics, optimiser set-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from pointseg.checkpoint import plain
from pointseg.guards import check_labels
from pointseg.metrics import ConfusionMatrix, SegmentationScores, scores
from pointseg.models.sparse_unet import forward_batch

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ScheduleError(ValueError):
    """An LR schedule that cannot be planned for this run (the message says what to do)."""


class SegmentationModule(pl.LightningModule):
    """Trains a voxel network with a point-level loss.

    The network labels voxels; ``logits[inverse]`` gives every point its voxel's logits,
    so loss and metrics are computed on points (the kept points in training, every
    original point in validation and test).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int = -1,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        class_weights: Sequence[float] | None = None,
        class_weighting: str | None = None,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}"
            )
        self.net = net
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        weight = None
        if class_weights is not None:
            if len(class_weights) != num_classes:
                raise ValueError(
                    f"class_weights has {len(class_weights)} entries, expected {num_classes}"
                )
            weight = torch.as_tensor(list(class_weights), dtype=torch.float32)
        if class_weighting is not None:
            if class_weighting not in CLASS_WEIGHTINGS:
                raise ValueError(
                    f"model.class_weighting={class_weighting!r}; use one of {CLASS_WEIGHTINGS} "
                    "or null"
                )
            if weight is not None:
                raise ValueError("set model.class_weights or model.class_weighting, not both")
            # filled from the training labels in setup("fit"); a buffer, so checkpoints keep it
            weight = torch.ones(num_classes, dtype=torch.float32)
        self.class_weighting = class_weighting
        self.criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.val_cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
        self.test_cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
        # the composed run config, stored in every checkpoint so eval rebuilds the model
        self.run_config: dict[str, Any] | None = None
        self.feature_recipe: dict[str, Any] | None = None  # pointseg.segmenter.FeatureRecipe
        self.last_scores: dict[str, SegmentationScores] = {}
        self._resumed_schedule: dict[str, Any] | None = None  # LR schedule state being resumed

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.class_weighting is None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "dataset"):
            raise ValueError("model.class_weighting needs a datamodule with a training dataset")
        counts = train_class_counts(datamodule.dataset("train"), self.num_classes)
        weight = frequency_weights(counts, self.class_weighting)
        self.criterion.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        names = ", ".join(f"{n} {w:.2f}" for n, w in zip(self.class_names, weight, strict=True))
        print(f"class weights ({self.class_weighting}): {names}")

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Point logits ``(N, K)`` for the points indexed by ``batch['inverse']``: the point
        branch's own (with ``batch['point_feat']``), or each point's voxel logits."""
        return forward_batch(self.net, batch)

    def model_step(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        # CrossEntropy would fail deep inside (or, on a GPU, with a device-side assert)
        check_labels(batch["segment"], num_classes=self.num_classes,
                     ignore_index=self.ignore_index, where="'segment' of a batch")  # fmt: skip
        logits = self(batch)
        loss = self.criterion(logits.float(), batch["segment"])
        return loss, logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, _ = self.model_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["batch_size"])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_cm)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_cm)

    def _eval_step(self, batch: dict[str, Any], stage: str, cm: ConfusionMatrix) -> None:
        loss, logits = self.model_step(batch)
        cm.update(logits.argmax(1), batch["segment"])
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=batch["batch_size"])

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_cm)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_cm)

    def _log_scores(self, stage: str, cm: ConfusionMatrix) -> None:
        confmat = cm.compute()  # all-reduced across processes
        cm.reset()
        sc = scores(confmat)
        self.last_scores[stage] = sc
        self.log(f"{stage}/miou", sc.miou, prog_bar=True)
        self.log(f"{stage}/macc", sc.macc)
        self.log(f"{stage}/allacc", sc.allacc)
        for name, iou in zip(self.class_names, sc.iou.tolist(), strict=True):
            self.log(f"{stage}/iou/{name}", iou)
        self.last_confmat = confmat.cpu()

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # norms and biases are not decayed (standard for AdamW/SGD on conv nets)
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        opt = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if not self.scheduler_factory:
            return opt
        total = self.trainer.estimated_stepping_batches
        if not 1 <= total < float("inf"):
            raise ScheduleError(
                f"the LR schedule needs a finite, positive number of optimizer steps, got {total}: "
                "set trainer.max_epochs and give the training set at least one batch"
            )
        self._check_resumed_schedule(int(total))
        sched = self.scheduler_factory(opt, total_steps=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _check_resumed_schedule(self, total: int) -> None:
        """A resumed run keeps the LR schedule it was planned with (OneCycle and poly store
        their length and would step past its end): refuse a run of another length."""
        state = self._resumed_schedule or {}
        planned = state.get("total_steps", state.get("total_iters"))
        if planned is None or int(planned) == total:
            return
        per_epoch = total / max(self.trainer.max_epochs or 1, 1)
        raise ScheduleError(
            f"resume: the run's LR schedule was planned for {planned} optimizer steps and this "
            f"run needs {total} (trainer.max_epochs={self.trainer.max_epochs} x {per_epoch:g} "
            "steps); a planned schedule cannot be stretched: resume with the run's own "
            "trainer.max_epochs and data, or start a new run planned for the longer schedule"
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("lr_schedulers") or [None]
        self._resumed_schedule = states[0]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:  # plain containers: loads with weights_only=True
            checkpoint["pointseg_config"] = plain(self.run_config, where="pointseg_config")
        if self.feature_recipe is not None:
            checkpoint["pointseg_recipe"] = plain(self.feature_recipe, where="pointseg_recipe")


CLASS_WEIGHTINGS = ("sqrt_inverse", "inverse")


def frequency_weights(counts: Sequence[int] | np.ndarray, scheme: str) -> np.ndarray:
    """Loss weights from training label counts: ``sqrt_inverse`` ``1 / sqrt(f_k)`` (rare
    classes count more, but a class of a few hundred points cannot swamp the loss),
    ``inverse`` ``1 / f_k``. Scaled to mean 1 over the classes present; absent classes get 1
    (they are never a target, so their weight only matters for later fine-tuning)."""
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or (n < 0).any() or not n.sum() > 0:
        raise ValueError(f"class counts must be >= 0 with a positive sum, got {n}")
    present = n > 0
    f = n[present] / n.sum()
    w = f**-0.5 if scheme == "sqrt_inverse" else 1.0 / f
    out = np.ones_like(n)
    out[present] = w / w.mean()
    return out


def train_class_counts(dataset: Any, num_classes: int, *, max_items: int = 2000) -> np.ndarray:
    """Labelled points per class in a training dataset: from the scene folders' ``segment.npy``
    when it has them (fast, no transform), else by reading each distinct item once."""
    counts = np.zeros(num_classes, dtype=np.int64)

    def add(segment: np.ndarray) -> None:
        seg = np.asarray(segment).reshape(-1)
        seg = seg[(seg >= 0) & (seg < num_classes)]
        counts[:] += np.bincount(seg, minlength=num_classes)[:num_classes]

    scenes = getattr(dataset, "scenes", None)
    if scenes and all((Path(s) / "segment.npy").is_file() for s in scenes):
        for scene in scenes:
            add(np.load(Path(scene) / "segment.npy", mmap_mode="r"))
        return counts
    items = len(dataset) // max(int(getattr(dataset, "loop", 1)), 1)
    if items > max_items:
        raise ValueError(
            f"model.class_weighting would read {items} training items to count labels; give "
            "model.class_weights explicitly for a dataset this large"
        )
    for i in range(items):
        add(dataset[i]["segment"])
    return counts


def poly_lr(
    optimizer: torch.optim.Optimizer, *, total_steps: int, power: float = 0.9
) -> torch.optim.lr_scheduler.LRScheduler:
    """Polynomial decay ``lr * (1 - step / total_steps) ** power`` over the whole run (the
    "poly" schedule of SemanticKITTI and S3DIS recipes), stepped every optimizer step."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if power <= 0:
        raise ValueError(f"model.scheduler.power must be positive, got {power}")
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=power)


def one_cycle_lr(
    optimizer: torch.optim.Optimizer, *, total_steps: int, pct_start: float = 0.3, **options: Any
) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's ``OneCycleLR`` with at least one warm-up step whatever the run's length: a short
    run (``trainer.max_steps=20``) would leave ``pct_start * total_steps`` at one step or less,
    where torch divides by zero. ``options``: the other ``OneCycleLR`` arguments."""
    # the warm-up ends at step pct_start * total_steps - 1, which must lie past step 0 and
    # before the last step; a 1-step run has no room for one (its step takes the final lr)
    if total_steps < 2:
        pct = 0.5
    else:
        pct = max(float(pct_start), min(2.0 / total_steps, (total_steps - 0.5) / total_steps))
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, total_steps=total_steps, pct_start=pct, **options
    )
