"""pointseg on a real airborne split (IGN Lidar HD 77050 + 77055 -> 77060), with the shipped
LAS defaults: a short training must learn far above chance on every point of the held-out
tile. Skipped where the real samples (../shared/data/real, or $POINTSEG_REAL_DATA) are absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pointseg.eval import evaluate
from pointseg.io import read_points
from pointseg.lit_module import frequency_weights, train_class_counts
from pointseg.prepare.las import prepare
from pointseg.train import train

REAL = Path(os.environ.get("POINTSEG_REAL_DATA", Path(__file__).resolve().parents[2] / "shared"
                           / "data" / "real"))  # fmt: skip
IGN = REAL / "ign"
TRAIN = ["test_data_77050_627755_LA93_IGN69.laz", "test_data_77055_627755_LA93_IGN69.laz"]
VAL = "test_data_77060_627755_LA93_IGN69.laz"

needs_real = pytest.mark.skipif(
    not all((IGN / n).is_file() for n in [*TRAIN, VAL]),
    reason=f"the real samples are not at {REAL} (set POINTSEG_REAL_DATA)",
)


def _split(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for sub, names in (("train", TRAIN), ("val", [VAL])):
        (src / sub).mkdir(parents=True)
        for name in names:
            (src / sub / name).symlink_to(IGN / name)
    return src


@needs_real
def test_val_tile_is_one_scene_with_the_raw_tiles_features(tmp_path: Path) -> None:
    dst = tmp_path / "data" / "las"
    prepare(_split(tmp_path), dst, split_by="folder", unknown="ignore")
    (scene,) = (dst / "val").iterdir()
    meta = json.loads((scene / "meta.json").read_text())
    # the stored options rebuild the scene's features from the raw file, read as predict does
    raw = read_points(IGN / VAL, format="las", las=meta["feature_options"])
    index = np.load(scene / "point_index.npy")
    assert np.array_equal(np.sort(index), np.arange(len(raw["coord"])))  # the whole tile, once
    for key in [k for k in ("hag", "strength", "returns", "geom", "color") if k in raw]:
        assert np.array_equal(np.load(scene / f"{key}.npy"), raw[key][index]), key
    # each 50 m training tile is one 50 m block: no sliver blocks of the points on its edges
    blocks = sorted((dst / "train").iterdir())
    assert [b.name.rsplit("_block_", 1)[1] for b in blocks] == ["0_0", "0_0"]
    sizes = sorted(len(np.load(b / "segment.npy")) for b in blocks)
    assert sizes == sorted(len(read_points(IGN / n, format="las")["coord"]) for n in TRAIN)


@needs_real
def test_short_training_learns_far_above_chance(compose_cfg, tmp_path: Path) -> None:
    prepare(_split(tmp_path), tmp_path / "data" / "las", split_by="folder", unknown="ignore")
    cfg = compose_cfg(
        "train",
        ["data=las", f"paths.data_dir={tmp_path / 'data'}", "logger=none", "trainer=cpu",
         "trainer.max_epochs=1", "trainer.limit_train_batches=50",
         "trainer.check_val_every_n_epoch=1", "callbacks.progress_bar.refresh_rate=0"],
    )  # fmt: skip
    result = train(cfg)
    ecfg = compose_cfg("eval", [f"ckpt_path={result['best_ckpt']}", "report.enabled=false"])
    ecfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(ecfg)
    cm = np.asarray(out["confusion_matrix"])
    assert cm.sum() == 79_055  # every labelled point of 77060 (codes 1 and 64 ignored)
    iou = out["val/iou"]
    # five classes present (ground 41 %, high vegetation 25 %, building 26 %): always
    # predicting the largest class scores mIoU ~0.08; a model that learned nothing ~0.1
    assert out["val/miou"] >= 0.35, out
    assert iou["ground"] >= 0.8 and iou["building"] >= 0.5 and iou["high_vegetation"] >= 0.5, iou


def test_sqrt_inverse_weights_from_training_scenes(tmp_path: Path) -> None:
    """The loss weights of model.class_weighting, counted from the scenes' segment.npy."""
    scenes = []
    for i, seg in enumerate([[0] * 90 + [1] * 9, [0] * 810 + [2] * 1 + [-1] * 5]):
        (tmp_path / f"s{i}").mkdir()
        np.save(tmp_path / f"s{i}" / "segment.npy", np.array(seg, dtype=np.int64))
        scenes.append(tmp_path / f"s{i}")

    class Folder:  # what train_class_counts reads of a SceneFolder
        def __init__(self) -> None:
            self.scenes, self.loop = scenes, 3

    counts = train_class_counts(Folder(), 4)
    assert counts.tolist() == [900, 9, 1, 0]
    w = frequency_weights(counts, "sqrt_inverse")
    share = np.array([900, 9, 1]) / 910
    expected = share**-0.5 / np.mean(share**-0.5)
    assert np.allclose(w[:3], expected) and w[3] == 1.0
    assert w[2] / w[1] == pytest.approx(3.0)  # sqrt(9 / 1): tempered, not 9x
    wi = frequency_weights(counts, "inverse")
    assert np.allclose(wi[:3] * [900, 9, 1], wi[0] * 900)  # 1 / count
