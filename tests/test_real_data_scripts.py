"""The real-data scripts run on tiny splits: ``scripts/real_data.py`` reads every kind of
sample (its SemanticKITTI path included) and fits its baselines; ``scripts/baselines.py``'s
voxel ceiling and CSF baseline score what they claim."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import baselines  # noqa: E402
import real_data  # noqa: E402


def _fake_kitti(root: Path, scans: int = 5, n: int = 600) -> None:
    """Raw-layout scans: road (40) on a plane, building (50) as a wall, vegetation (70) above."""
    rng = np.random.default_rng(0)
    seq = root / "semantickitti" / "sequences" / "00"
    (seq / "velodyne").mkdir(parents=True)
    (seq / "labels").mkdir(parents=True)
    for i in range(scans):
        xy = rng.uniform(-20, 20, (n, 2))
        label = rng.choice([40, 50, 70], n)
        z = np.where(label == 40, 0.0, np.where(label == 50, 3.0, 6.0)) + rng.normal(0, 0.1, n)
        pts = np.c_[xy, z, np.zeros(n)].astype(np.float32)
        pts.tofile(seq / "velodyne" / f"{i:06d}.bin")
        label.astype(np.uint32).tofile(seq / "labels" / f"{i:06d}.label")


def test_real_data_baselines_on_a_tiny_kitti_split(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("sklearn")
    data = tmp_path / "real"
    _fake_kitti(data)
    monkeypatch.setenv("POINTSEG_REAL_DATA", str(data))
    out = tmp_path / "report.md"
    real_data.main(["--only", "semantickitti", "--baselines-only", "--work",
                    str(tmp_path / "work"), "--out", str(out)])  # fmt: skip
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| road |"))
    hgb_road = float(row.split("|")[4])
    assert hgb_road > 0.9, row  # three classes at three heights: the trees separate them


def test_voxel_ceiling_gives_each_voxel_its_majority() -> None:
    # voxel A (3 points: 2 x class 0, 1 x class 1), voxel B (2 points of class 1), one ignored
    xyz = np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3],
                    [1.5, 0.1, 0.1], [1.6, 0.2, 0.2], [1.7, 0.3, 0.3]])  # fmt: skip
    seg = np.array([0, 0, 1, 1, 1, -1])
    cm = baselines.voxel_ceiling([baselines.Points(xyz, np.zeros((6, 1)), seg)], 2, 1.0)
    assert cm.tolist() == [[2, 0], [1, 2]]  # the minority point of A is the only error


def test_csf_separates_ground_from_a_box() -> None:
    pytest.importorskip("CSF")
    rng = np.random.default_rng(1)
    ground = np.c_[rng.uniform(0, 40, (3000, 2)), rng.normal(0, 0.05, 3000)]
    box = np.c_[rng.uniform(15, 25, (800, 2)), rng.uniform(3, 8, 800)]
    pts = baselines.Points(np.r_[ground, box], np.zeros((3800, 1)), np.r_[[0] * 3000, [1] * 800])
    params = {"cloth_resolution": 1.0, "rigidness": 2, "class_threshold": 0.5,
              "bSloopSmooth": False}  # fmt: skip
    pred = baselines.csf_labels(pts, params)
    assert (pred == pts.segment).mean() > 0.97
