"""SemanticKITTI benchmark submissions: predicted classes as raw-id ``.label`` files.

The benchmark scores ``sequences/NN/predictions/XXXXXX.label`` files, one uint32 per point
of the scan holding the *raw* label id (``learning_map_inv``), for every scan of the test
sequences 11-21. ``write_submission`` turns one scan's predicted classes (0..18, the
``segment`` order of :class:`~pointseg.data.datasets.semantickitti.SemanticKITTI`) into
such a file; ``predict_submission`` runs a trained checkpoint over whole sequences:

    pointseg-submit ckpt=<best.ckpt> root=<.../dataset> out=<dir>
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from pointseg.data.datasets.semantickitti import kitti_labels, list_scans, load_scan, sequence_names
from pointseg.guards import guard_task, run_hydra
from pointseg.threads import set_threads
from pointseg.utils import CONF_DIR, atomic_path


def prediction_path(out_dir: str | Path, name: str) -> Path:
    """Where the prediction of scan ``name`` ("11/000042", the dataset's ``name`` key) goes."""
    seq, _, frame = name.partition("/")
    if not (seq.isdigit() and frame):
        raise ValueError(f"scan name must look like '11/000042', got {name!r}")
    return Path(out_dir) / "sequences" / f"{int(seq):02d}" / "predictions" / f"{frame}.label"


def to_raw_ids(pred: np.ndarray) -> np.ndarray:
    """Predicted classes ``(N,)`` 0..18 -> raw SemanticKITTI ids ``(N,) uint32``."""
    pred = np.asarray(pred)
    labels = kitti_labels()
    num_classes = len(labels.class_names)
    if pred.ndim != 1 or not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(
            f"predictions must be a 1-D integer array of class indices (N,), got shape "
            f"{pred.shape} dtype {pred.dtype}; take logits.argmax(1) first"
        )
    bad = (pred < 0) | (pred >= num_classes)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} prediction(s) outside 0..{num_classes - 1} (e.g. "
            f"{np.unique(pred[bad])[:5].tolist()}); the benchmark has no ignore class, so "
            "every point needs one of the 19 classes"
        )
    inv = np.array([labels.learning_map_inv[k] for k in range(num_classes + 1)], dtype=np.uint32)
    return inv[pred + 1]


def write_submission(
    pred: np.ndarray, out_path: str | Path, *, num_points: int | None = None
) -> Path:
    """Write one scan's predicted classes ``(N,)`` as a raw-id ``.label`` file, atomically.

    ``num_points``, if given, is checked against ``N`` (the benchmark rejects a file whose
    length differs from its scan). Use :func:`prediction_path` for ``out_path``.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".label":
        raise ValueError(f"{out_path}: prediction files must end in .label")
    raw = to_raw_ids(pred)
    if num_points is not None and len(raw) != num_points:
        raise ValueError(
            f"{len(raw)} predictions for {out_path} but the scan has {num_points} points; "
            "predict every point of the scan (map voxel logits back with logits[inverse])"
        )
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(raw.astype("<u4").tobytes())
    return out_path


def predict_submission(
    ckpt_path: str | Path,
    root: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    sequences: Sequence[int | str] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    trust: bool = False,
) -> int:
    """Label every scan of ``split`` (or ``sequences``) under ``root`` with a pointseg
    checkpoint and write the predictions under ``out_dir``; returns how many were written.

    Scans go through the checkpoint's ``Segmenter`` one at a time, so every point gets its
    voxel's class; ``trust`` loads a checkpoint that needs more than plain data. Existing
    prediction files are kept unless ``overwrite``, so an interrupted run continues where
    it stopped.
    """
    from tqdm import tqdm

    from pointseg.segmenter import Segmenter

    segmenter = Segmenter.from_checkpoint(ckpt_path, device=device or "auto", trust=trust)
    if segmenter.class_names != kitti_labels().class_names:
        raise ValueError(
            f"{ckpt_path} was trained on other classes ({segmenter.class_names}), not "
            "the 19 SemanticKITTI classes; use a checkpoint of experiment=semantickitti_spunet"
        )
    scans = list_scans(root, sequence_names(split, sequences))
    written = 0
    for files in tqdm(scans, desc="predicting", unit="scan"):
        out = prediction_path(out_dir, files.name)
        if out.exists() and not overwrite:
            continue
        sample = load_scan(files)
        pred = segmenter.predict(sample).labels  # (N,), block inference as pointseg-predict
        write_submission(pred, out, num_points=len(sample["coord"]))
        written += 1
    return written


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="submit")
@guard_task("pointseg-submit")
def _hydra_main(cfg: DictConfig) -> None:
    set_threads(cfg.get("threads"))  # once, for the run: pointseg/threads.py
    n = predict_submission(
        cfg.ckpt_path, cfg.root, cfg.output, split=cfg.split, sequences=cfg.sequences,
        device=None if cfg.device == "auto" else cfg.device, overwrite=bool(cfg.overwrite),
        trust=bool(cfg.trust_checkpoint),
    )  # fmt: skip
    print(f"wrote {n} prediction file(s) under {Path(cfg.output) / 'sequences'}")


def main() -> None:
    run_hydra(_hydra_main, "submit")


if __name__ == "__main__":
    main()
