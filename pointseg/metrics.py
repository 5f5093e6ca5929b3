"""Confusion-matrix segmentation metrics.

``ConfusionMatrix`` is a torchmetrics ``Metric`` whose state is summed across processes,
so under DDP the scores are those of the whole validation set, not of one rank's shard.
The score functions are pure: they read a confusion matrix and mutate nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric


class SegmentationScores(NamedTuple):
    miou: float
    macc: float
    allacc: float
    iou: Tensor  # (K,) NaN for classes absent from both targets and predictions
    acc: Tensor  # (K,) per-class recall, NaN for classes absent from targets


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """``(K, K)`` int64 counts, rows = target, columns = prediction; ignored targets skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    keep = target != ignore_index
    t, p = target[keep], pred[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise ValueError(
            f"target label {bad} is outside 0..{num_classes - 1} and is not the ignore index "
            f"{ignore_index}; check the dataset's class map or data.num_classes"
        )
    flat = t.long() * num_classes + p.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(confmat: Tensor) -> SegmentationScores:
    """IoU, accuracy and their means from a confusion matrix (rows = target).

    Means are over classes present in the targets (or predicted), like Pointcept and
    ScanNet's evaluator: a class absent from both has IoU NaN and is left out of mIoU.
    """
    cm = confmat.to(torch.float64)
    tp = cm.diagonal()
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    total = cm.sum()
    allacc = float(tp.sum() / total) if total > 0 else float("nan")
    return SegmentationScores(
        miou=float(torch.nanmean(iou)) if (union > 0).any() else float("nan"),
        macc=float(torch.nanmean(acc)) if (gt > 0).any() else float("nan"),
        allacc=allacc,
        iou=iou,
        acc=acc,
    )


class ConfusionMatrix(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, *, ignore_index: int = -1) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.confmat += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> Tensor:
        return self.confmat.clone()


def format_table(sc: SegmentationScores, class_names: Sequence[str]) -> str:
    """Plain-text per-class table, for terminals and logs."""
    width = max(12, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}", "-" * (width + 18)]
    for name, i, a in zip(class_names, sc.iou.tolist(), sc.acc.tolist(), strict=True):
        lines.append(f"{name:<{width}}  {i:7.4f}  {a:7.4f}")
    lines.append("-" * (width + 18))
    lines.append(f"{'mIoU':<{width}}  {sc.miou:7.4f}")
    lines.append(f"{'mAcc':<{width}}  {sc.macc:7.4f}")
    lines.append(f"{'allAcc':<{width}}  {sc.allacc:7.4f}")
    return "\n".join(lines)
