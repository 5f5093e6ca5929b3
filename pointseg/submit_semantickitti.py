"""SemanticKITTI benchmark submissions: predicted classes as raw-id ``.label`` files.

The benchmark scores ``sequences/NN/predictions/XXXXXX.label`` files, one uint32 per point
of the scan holding the *raw* label id (``learning_map_inv``), for every scan of the test
sequences 11-21. ``write_submission`` turns one scan's predicted classes (0..18, the
``segment`` order of :class:`~pointseg.data.datasets.semantickitti.SemanticKITTI`) into
such a file; ``predict_submission`` runs a trained checkpoint over whole sequences:

    python -m pointseg.submit_semantickitti ckpt=<best.ckpt> root=<.../dataset> out=<dir>
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pointseg.data.datasets.semantickitti import kitti_labels, list_scans, load_scan, sequence_names
from pointseg.guards import guard_task
from pointseg.utils import public_mode


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
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw.astype("<u4").tobytes())
        public_mode(tmp)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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

    Scans go through the checkpoint's validation transforms one at a time, so every point
    gets its voxel's class. Existing prediction files are kept unless ``overwrite``, so an
    interrupted run continues where it stopped.
    """
    import hydra
    import torch
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from pointseg.data.collate import collate
    from pointseg.data.transforms import Compose
    from pointseg.eval import load_checkpoint

    ckpt = load_checkpoint(ckpt_path, trust=trust)  # trust: see pointseg.checkpoint
    stored = OmegaConf.create(ckpt["pointseg_config"])
    if list(stored.data.class_names) != kitti_labels().class_names:
        raise ValueError(
            f"{ckpt_path} was trained on other classes ({list(stored.data.class_names)}), not "
            "the 19 SemanticKITTI classes; use a checkpoint of experiment=semantickitti_spunet"
        )
    module = hydra.utils.instantiate(stored.model)
    module.load_state_dict(ckpt["state_dict"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device).eval()
    transform = Compose(hydra.utils.instantiate(stored.data.val_transforms))
    scans = list_scans(root, sequence_names(split, sequences))
    written = 0
    for files in tqdm(scans, desc="predicting", unit="scan"):
        out = prediction_path(out_dir, files.name)
        if out.exists() and not overwrite:
            continue
        sample = load_scan(files)
        batch = collate([transform(sample)])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.inference_mode():
            pred = module(batch).argmax(1).cpu().numpy()  # (N,)
        write_submission(pred, out, num_points=len(sample["coord"]))
        written += 1
    return written


USAGE = (
    "usage: python -m pointseg.submit_semantickitti ckpt=<best.ckpt> root=<.../dataset> "
    "out=<dir> [split=test] [device=cuda] [trust_checkpoint=true]"
)


@guard_task("pointseg.submit_semantickitti")
def main(argv: list[str] | None = None) -> None:
    args: dict[str, str] = {}
    for item in sys.argv[1:] if argv is None else argv:
        key, sep, value = item.partition("=")
        if not sep or key not in ("ckpt", "root", "out", "split", "device", "trust_checkpoint"):
            raise SystemExit(f"unknown argument {item!r}; {USAGE}")
        args[key] = value
    missing = [k for k in ("ckpt", "root", "out") if k not in args]
    if missing:
        raise SystemExit(f"missing {missing}; {USAGE}")
    split, device = args.get("split", "test"), args.get("device")
    trust = args.get("trust_checkpoint", "false").lower() == "true"
    n = predict_submission(
        args["ckpt"], args["root"], args["out"], split=split, device=device, trust=trust
    )
    print(f"wrote {n} prediction file(s) under {Path(args['out']) / 'sequences'}")


if __name__ == "__main__":
    main()
