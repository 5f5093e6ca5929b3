"""Evaluation report: confusion-matrix heatmap, per-class IoU chart and ``report.md``.

Figures are drawn with matplotlib's Agg backend (no display needed) and written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointseg.io import atomic_path
from pointseg.metrics import SegmentationScores
from pointseg.utils import atomic_write_text


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def row_normalised(confmat: np.ndarray) -> np.ndarray:
    """Each row (target class) divided by its count; rows without points stay 0."""
    cm = np.asarray(confmat, dtype=np.float64)
    total = cm.sum(1, keepdims=True)
    return np.divide(cm, total, out=np.zeros_like(cm), where=total > 0)


def confusion_figure(path: str | Path, confmat: np.ndarray, class_names: Sequence[str]) -> Path:
    """Heatmap of the row-normalised confusion matrix (rows: truth, columns: prediction)."""
    plt = _pyplot()
    k = len(class_names)
    norm = row_normalised(confmat)
    side = max(5.0, 0.55 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (each row sums to 1)")
    if k <= 25:  # numbers stay readable up to about this many classes
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color=color)  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, Path(path))


def iou_figure(path: str | Path, sc: SegmentationScores, class_names: Sequence[str]) -> Path:
    """Horizontal bars of per-class IoU with the mIoU as a line; absent classes marked n/a."""
    plt = _pyplot()
    iou = sc.iou.tolist()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.35 * k + 1.2)))
    values = [0.0 if math.isnan(v) else v for v in iou]
    bars = ax.barh(range(k), values, color="tab:blue")
    for bar, v in zip(bars, iou, strict=True):
        label = "n/a" if math.isnan(v) else f"{v:.3f}"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, label, va="center",
                fontsize=8)  # fmt: skip
    ax.axvline(sc.miou, color="tab:red", linestyle="--", label=f"mIoU {sc.miou:.3f}")
    ax.set_yticks(range(k), class_names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("IoU")
    ax.legend(loc="lower right")
    ax.set_title("per-class IoU")
    fig.tight_layout()
    return _save(fig, Path(path))


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.4f}"


def write_report(
    run_dir: str | Path,
    *,
    confmat: np.ndarray | torch.Tensor,
    sc: SegmentationScores,
    class_names: Sequence[str],
    split: str,
    ckpt_path: str,
    tta: bool = False,
    per_scene: Sequence[dict[str, Any]] | None = None,
    worst: Sequence[tuple[dict[str, Any], Path]] = (),
) -> Path:
    """``confusion.png``, ``iou.png`` and ``report.md`` in ``run_dir``; returns the .md path.

    ``per_scene``: dicts with ``scene``, ``points``, ``miou``, ``allacc``; ``worst``: (scene
    dict, rendered image) pairs, shown at the end.
    """
    run_dir = Path(run_dir)
    cm = np.asarray(confmat.cpu() if isinstance(confmat, torch.Tensor) else confmat)
    confusion_figure(run_dir / "confusion.png", cm, class_names)
    iou_figure(run_dir / "iou.png", sc, class_names)
    truth, predicted = cm.sum(1), cm.sum(0)
    lines = [
        f"# Evaluation on the {split} split",
        "",
        f"- checkpoint: `{ckpt_path}`",
        f"- test-time augmentation: {'on' if tta else 'off'}",
        f"- labelled points: {int(cm.sum()):,}",
        f"- **mIoU {_fmt(sc.miou)}**, mAcc {_fmt(sc.macc)}, allAcc {_fmt(sc.allacc)}",
        "",
        "| class | IoU | Acc | true points | predicted points |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(class_names):
        lines.append(
            f"| {name} | {_fmt(float(sc.iou[i]))} | {_fmt(float(sc.acc[i]))} | "
            f"{int(truth[i]):,} | {int(predicted[i]):,} |"
        )
    lines += [
        "",
        "![per-class IoU](iou.png)",
        "",
        "Confusion matrix, rows normalised: row *i* shows where the points of true class *i* went.",
        "",
        "![confusion matrix](confusion.png)",
    ]
    if per_scene:
        ranked = sorted(per_scene, key=lambda s: (np.nan_to_num(s["miou"], nan=2.0), s["scene"]))
        lines += ["", "## Scenes, worst first", "", "| scene | points | mIoU | allAcc |"]
        lines.append("|---|---:|---:|---:|")
        for s in ranked[:20]:
            lines.append(
                f"| {s['scene']} | {s['points']:,} | {_fmt(s['miou'])} | {_fmt(s['allacc'])} |"
            )
        if len(ranked) > 20:
            lines.append(f"| ... {len(ranked) - 20} more | | | |")
    if worst:
        lines += ["", "## Worst scenes: ground truth | prediction | errors (magenta)", ""]
        for s, image in worst:
            rel = image.relative_to(run_dir) if image.is_relative_to(run_dir) else image
            lines += [f"### scene {s['scene']} (mIoU {_fmt(s['miou'])})", "", f"![]({rel})", ""]
    return atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
