"""Classical baselines for pointseg's real-data reports, fitted on the same training points:
the height rule, HistGradientBoosting on hand-made per-point features, the Cloth Simulation
Filter (PyPI ``cloth-simulation-filter``, lazily imported: ``pip install pointseg[dev]``) and
the voxel ceiling (a perfect voxel classifier); ``fit_baselines`` fits every one of them on a
split. Used by ``real_data.py`` and ``crossval.py``; confusion matrices and IoU come from
``pointseg.metrics``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pointseg.io import read_points  # noqa: E402
from pointseg.io.hag import height_above_local_min  # noqa: E402
from pointseg.io.las import load_class_map  # noqa: E402
from pointseg.io.las_features import local_geometry  # noqa: E402
from pointseg.metrics import confusion_matrix, scores  # noqa: E402

RULE_RADII = (2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 80.0)
RULE_THRESHOLDS = tuple(np.round(np.arange(0.1, 3.01, 0.1), 2))
HGB_MAX_TRAIN = 300_000  # training points for the boosted trees (a random subset beyond)
# CSF's four parameters, tuned on the training tiles (ground vs rest mIoU)
CSF_GRID = {
    "cloth_resolution": (0.5, 1.0, 2.0),
    "rigidness": (1, 2, 3),
    "class_threshold": (0.3, 0.5, 1.0),
    "bSloopSmooth": (False, True),
}


def confusion(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` counts (rows = target) of ``pointseg.metrics.confusion_matrix``; label -1
    is ignored."""
    pred_t, target_t = torch.as_tensor(pred), torch.as_tensor(target)
    return confusion_matrix(pred_t, target_t, k, ignore_index=-1).numpy()


def iou_of(cm: np.ndarray) -> np.ndarray:
    """``pointseg.metrics.scores``' per-class IoU of a numpy (or JSON list) confusion matrix
    (rows = target), NaN for a class neither present nor predicted."""
    return scores(torch.as_tensor(np.asarray(cm, dtype=np.int64))).iou.numpy()


def miou_of(cm: np.ndarray) -> float:
    """``pointseg.metrics.scores``' mIoU of a numpy (or JSON list) confusion matrix."""
    return scores(torch.as_tensor(np.asarray(cm, dtype=np.int64))).miou


def ground_vs_rest(cm: np.ndarray, ground: int) -> np.ndarray:
    """The 2 x 2 matrix (ground, rest) of a multi-class confusion matrix."""
    cm = np.asarray(cm)
    is_g = np.zeros(len(cm), dtype=bool)
    is_g[ground] = True
    return np.array(
        [
            [cm[is_g][:, is_g].sum(), cm[is_g][:, ~is_g].sum()],
            [cm[~is_g][:, is_g].sum(), cm[~is_g][:, ~is_g].sum()],
        ]
    )


@dataclass
class Points:
    xyz: np.ndarray
    feat: np.ndarray
    segment: np.ndarray


def las_points(paths: list[Path], prepare: Sequence[str]) -> list[Points]:
    """Points of LAS tiles with the preparer's features and labels (``prepare``: the
    ``key=value`` options of ``pointseg-prepare las``, for the class map)."""
    opts = {p.split("=", 1)[0]: p.split("=", 1)[1] for p in prepare}
    cmap = load_class_map(opts.get("class_map"), unknown=opts.get("unknown"))
    out = []
    for path in paths:
        # read as pointseg-prepare reads it: the preparer's default las_features options
        arrays = read_points(path, format="las", las={})
        keys = ["hag", "strength", "returns", "geom"] + (["color"] if "color" in arrays else [])
        feat = np.concatenate([arrays[k] for k in keys], 1)
        target = cmap.apply(arrays["classification"], source=str(path))
        out.append(Points(arrays["coord"].astype(np.float64), feat, target))
    return out


def scannet_points(folders: list[Path]) -> list[Points]:
    from pointseg.data.datasets.scannet_meta import VALID_IDS_20

    lut = np.full(2048, -1, dtype=np.int64)
    lut[list(VALID_IDS_20)] = np.arange(len(VALID_IDS_20))
    out = []
    for folder in folders:
        vert = np.load(folder / f"{folder.name}_vert_all.npy").astype(np.float64)
        label = np.load(folder / f"{folder.name}_sem_label_all.npy").astype(np.int64)
        xyz, rgb = vert[:, :3], vert[:, 3:6] / 255.0
        height = xyz[:, 2:3] - xyz[:, 2].min()
        feat = np.concatenate(
            [height, rgb, local_geometry(xyz, k=16), local_geometry(xyz, k=48)], 1
        )
        out.append(Points(xyz, feat.astype(np.float32), lut[label]))
    return out


def kitti_points(scans: list[Path]) -> list[Points]:
    from pointseg.data.datasets.semantickitti import map_labels, read_labels, read_scan_points

    out = []
    for scan in scans:
        pts = read_scan_points(scan)
        xyz = pts["coord"].astype(np.float64)
        label_path = scan.parent.parent / "labels" / (scan.stem + ".label")
        raw, _ = read_labels(label_path, num_points=len(xyz), scan=scan)
        hag = height_above_local_min(xyz, cell=0.5, radii=(2.0, 5.0, 10.0))
        feat = np.concatenate([xyz[:, 2:3] - xyz[:, 2].min(), hag, local_geometry(xyz, k=16)], 1)
        out.append(Points(xyz, feat.astype(np.float32), map_labels(raw, source=label_path)))
    return out


def load_points(kind: str, paths: list[Path], prepare: Sequence[str] = ()) -> list[Points]:
    """The points of samples of one ``kind`` (las, scannet or semantickitti) as the baselines
    see them; ``prepare`` (LAS only): the ``pointseg-prepare las`` options."""
    if kind == "las":
        return las_points(paths, prepare)
    return {"scannet": scannet_points, "semantickitti": kitti_points}[kind](paths)


def tune_rule(train: list[Points], ground: int) -> tuple[float, float, float]:
    """(r, t, train mIoU) maximising ground-vs-rest mIoU over the pooled training points."""
    best = (0.0, 0.0, -1.0)
    hags = {r: [height_above_local_min(p.xyz, cell=1.0, radii=[r])[:, 0] for p in train]
            for r in RULE_RADII}  # fmt: skip
    target = np.concatenate([np.where(p.segment < 0, -1, (p.segment != ground).astype(int))
                             for p in train])  # fmt: skip
    for r in RULE_RADII:
        h = np.concatenate(hags[r])
        for t in RULE_THRESHOLDS:
            m = miou_of(confusion((h > t).astype(np.int64), target, 2))
            if m > best[2]:
                best = (r, float(t), m)
    return best


def rule_confusion(val: list[Points], ground: int, r: float, t: float) -> np.ndarray:
    cm = np.zeros((2, 2), dtype=np.int64)
    for p in val:
        pred = (height_above_local_min(p.xyz, cell=1.0, radii=[r])[:, 0] > t).astype(np.int64)
        cm += confusion(pred, np.where(p.segment < 0, -1, (p.segment != ground).astype(int)), 2)
    return cm


def hgb_confusion(train: list[Points], val: list[Points], k: int, seed: int = 0) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = np.concatenate([p.feat for p in train])
    y = np.concatenate([p.segment for p in train])
    x, y = x[y >= 0], y[y >= 0]
    rng = np.random.default_rng(seed)
    if len(y) > HGB_MAX_TRAIN:
        keep = rng.choice(len(y), HGB_MAX_TRAIN, replace=False)
        x, y = x[keep], y[keep]
    clf = HistGradientBoostingClassifier(max_iter=200, class_weight="balanced", random_state=seed)
    clf.fit(x, y)
    cm = np.zeros((k, k), dtype=np.int64)
    for p in val:
        cm += confusion(clf.predict(p.feat).astype(np.int64), p.segment, k)
    return cm


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def csf_labels(p: Points, params: dict[str, Any]) -> np.ndarray:
    """1 for points the cloth leaves above it (not ground), 0 for ground."""
    import CSF

    csf = CSF.CSF()
    for key, value in params.items():
        setattr(csf.params, key, value)
    csf.params.time_step, csf.params.interations = 0.65, 500
    xyz = p.xyz - p.xyz.min(0)
    ground, rest = CSF.VecInt(), CSF.VecInt()
    with _quiet_stdout():  # CSF prints its progress from C++
        csf.setPointCloud(xyz)
        csf.do_filtering(ground, rest, exportCloth=False)
    out = np.ones(len(xyz), dtype=np.int64)
    out[np.asarray(ground, dtype=np.int64)] = 0
    return out


def _binary(p: Points, ground: int) -> np.ndarray:
    return np.where(p.segment < 0, -1, (p.segment != ground).astype(np.int64))


def csf_binary(points: list[Points], ground: int, params: dict[str, Any]) -> np.ndarray:
    """The 2 x 2 (ground, rest) confusion matrix of CSF with ``params`` over ``points``."""
    cm = np.zeros((2, 2), dtype=np.int64)
    for p in points:
        cm += confusion(csf_labels(p, params), _binary(p, ground), 2)
    return cm


def tune_csf(train: list[Points], ground: int) -> tuple[dict[str, Any], float]:
    """(CSF parameters, train mIoU) maximising ground-vs-rest mIoU over ``CSF_GRID``."""
    best: tuple[dict[str, Any], float] = ({}, -1.0)
    for values in itertools.product(*CSF_GRID.values()):
        params = dict(zip(CSF_GRID, values, strict=True))
        m = miou_of(csf_binary(train, ground, params))
        if m > best[1]:
            best = (params, m)
    return best


def voxel_ceiling(val: list[Points], k: int, voxel_size: float) -> np.ndarray:
    """The confusion matrix of a perfect voxel classifier: every point gets its voxel's true
    majority class (pointseg's labels before the point branch)."""
    from pointseg.data.voxelize import voxelize

    cm = np.zeros((k, k), dtype=np.int64)
    for p in val:
        vox = voxelize(p.xyz, voxel_size=voxel_size)
        lab = np.where(p.segment >= 0, p.segment, k)  # ignore is its own bin
        votes = np.zeros((len(vox.grid_coord), k + 1), dtype=np.int64)
        np.add.at(votes, (vox.inverse, lab), 1)
        majority = votes[:, :k].argmax(1)
        cm += confusion(majority[vox.inverse], p.segment, k)
    return cm


def fit_baselines(
    train: list[Points], val: list[Points], k: int, *, ground: int | None = None,
    voxel_size: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every baseline of one split, fitted on ``train`` and scored on ``val``, JSON-ready
    (arrays as lists): the val class counts and HGB's confusion matrix (``hgb_s``: seconds of
    its fit and predict); with a ``ground`` class the height rule and CSF tuned on ``train``
    (ground vs rest) and, given ``voxel_size``, the voxel ceiling."""
    labels = np.concatenate([p.segment for p in val])
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "val_counts": np.bincount(labels[labels >= 0], minlength=k)[:k].tolist(),
        "hgb": hgb_confusion(train, val, k).tolist(),
        "hgb_s": time.perf_counter() - t0,
    }
    if ground is not None:
        r, t, train_miou = tune_rule(train, ground)
        cm = rule_confusion(val, ground, r, t)
        out["rule"] = {"r": r, "t": t, "train": train_miou, "cm": cm.tolist()}
        params, _ = tune_csf(train, ground)
        out["csf"] = {"params": params, "cm": csf_binary(val, ground, params).tolist()}
        if voxel_size is not None:
            out["ceiling"] = voxel_ceiling(val, k, voxel_size).tolist()
    return out
