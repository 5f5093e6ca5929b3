"""Bad input at every entry point: one test per row of docs/bad_input.md."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from pointseg.data.collate import collate
from pointseg.data.datasets.scene_folder import SceneFolder
from pointseg.data.scenes import write_scene
from pointseg.data.transforms import Voxelize
from pointseg.data.voxelize import voxelize
from pointseg.guards import (
    CheckpointMismatchError,
    LabelRangeError,
    added_key_warnings,
    key_hints,
)
from pointseg.io import MissingFeatureError, PointFileError, read_points
from pointseg.predict import predict
from pointseg.segmenter import Segmenter
from tests.conftest import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]
N = 400  # points of the small test scans


def _compose(name: str, overrides: list[str], root: Path) -> DictConfig:
    return compose_config(name, overrides, root)


def _save_ckpt(path: Path, overrides: list[str], state_overrides: list[str] | None = None) -> Path:
    """An untrained checkpoint as pointseg-train writes it; ``state_overrides`` build the
    weights from another config than the one stored (a mismatched file)."""
    import hydra

    cfg = _compose("train", overrides, path.parent)
    torch.manual_seed(0)
    weights_cfg = _compose("train", state_overrides, path.parent) if state_overrides else cfg
    module = hydra.utils.instantiate(weights_cfg.model)
    for layer in module.modules():  # untrained heads give one class everywhere: spread them
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=1.0)
            if layer.bias is not None:
                torch.nn.init.zeros_(layer.bias)
    torch.save({"state_dict": module.state_dict(),
                "pointseg_config": OmegaConf.to_container(cfg, resolve=True)}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The default model (9 classes, colour + height = 4 channels) at 10 cm voxels."""
    return _save_ckpt(tmp_path_factory.mktemp("ckpt") / "model.ckpt", ["data.voxel_size=0.1"])


@pytest.fixture(scope="module")
def cloud() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    xyz = rng.uniform([0, 0, 0], [4.0, 3.0, 2.5], (N, 3))  # float64, metres
    return {"xyz": xyz, "rgb": rng.integers(0, 256, (N, 3)).astype(np.uint8)}


def _ply(path: Path, xyz: np.ndarray, rgb: np.ndarray, *, dtype: str = "f8") -> Path:
    from plyfile import PlyData, PlyElement

    v = np.empty(len(xyz), [("x", dtype), ("y", dtype), ("z", dtype), ("red", "u1"),
                            ("green", "u1"), ("blue", "u1")])  # fmt: skip
    for i, c in enumerate("xyz"):
        v[c] = xyz[:, i]
    v["red"], v["green"], v["blue"] = rgb.T
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))
    return path


def _las(path: Path, xyz: np.ndarray) -> Path:
    import laspy

    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales = np.full(3, 0.001)
    header.offsets = np.floor(xyz.min(0)) if len(xyz) else np.zeros(3)
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz.T
    las.write(str(path))
    return path


def _predict_cfg(ckpt: Path, inp: Path | str, out: Path, *extra: str) -> DictConfig:
    args = [f"ckpt_path={ckpt}", f"input={inp}", f"output={out}", "progress=false", *extra]
    return _compose("predict", args, out.parent)


def _scene(root: Path, name: str, **arrays: np.ndarray) -> Path:
    """A scene folder written by hand (np.save), as a damaged or foreign preparer might."""
    folder = root / name
    folder.mkdir(parents=True)
    for key, arr in arrays.items():
        np.save(folder / f"{key}.npy", arr)
    return folder


def _run_cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


# ---- empty and non-finite clouds --------------------------------------------------------------
def test_empty_cloud(ckpt: Path, tmp_path: Path) -> None:
    empty = np.zeros((0, 3))
    files = [
        _ply(tmp_path / "empty.ply", empty, np.zeros((0, 3), np.uint8)),
        _las(tmp_path / "empty.las", empty),
    ]
    (tmp_path / "empty.bin").write_bytes(b"")
    files.append(tmp_path / "empty.bin")
    for f in files:
        with pytest.raises(PointFileError, match="no points|empty") as err:
            read_points(f)
        assert str(f) in str(err.value)
    with pytest.raises(PointFileError, match=r"empty\.ply holds no points"):
        predict(_predict_cfg(ckpt, files[0], tmp_path / "out"))
    # skip_errors: the empty file is listed as failed, nothing is written for it
    summary = predict(_predict_cfg(ckpt, files[0], tmp_path / "o2", "skip_errors=true"))
    assert summary["failed"][0]["input"] == str(files[0]) and not summary["files"]
    assert not (tmp_path / "o2" / "empty.labels.npy").exists()
    with pytest.raises(ValueError, match="coord is empty"):
        voxelize(np.zeros((0, 3), np.float32), voxel_size=0.1)
    with pytest.raises(ValueError, match="no points"):  # a preparer writing an empty scene
        write_scene(tmp_path / "scenes" / "a" / "s0", {"coord": np.zeros((0, 3), np.float32)})
    folder = _scene(tmp_path / "scenes", "a/s1", coord=np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="coord.npy holds no points") as err:
        SceneFolder(tmp_path / "scenes", "a", keys=("coord",))[0]
    assert str(folder) in str(err.value) and "pointseg-prepare" in str(err.value)


def test_all_coordinates_nonfinite(ckpt: Path, tmp_path: Path, cloud: dict) -> None:
    xyz = np.full((5, 3), np.nan)
    xyz[1] = np.inf
    path = _ply(tmp_path / "void.ply", xyz, cloud["rgb"][:5])
    for mode in ("error", "drop"):
        with pytest.raises(PointFileError, match="all 5 points have NaN/Inf") as err:
            read_points(path, nonfinite=mode)
        assert "void.ply" in str(err.value)
    with pytest.raises(PointFileError, match="all 5 points have NaN/Inf"):
        predict(_predict_cfg(ckpt, path, tmp_path / "out"))
    assert not (tmp_path / "out" / "void.labels.npy").exists()
    with pytest.raises(ValueError, match="5 point"):
        voxelize(xyz.astype(np.float32), voxel_size=0.1)


def test_some_coordinates_nonfinite_predict_drops_and_counts(
    ckpt: Path, tmp_path: Path, cloud: dict, caplog: pytest.LogCaptureFixture
) -> None:
    from plyfile import PlyData

    bad_rows = [3, 17, 250]
    xyz = cloud["xyz"].copy()
    xyz[3, 0], xyz[17, 2], xyz[250] = np.nan, np.inf, -np.inf
    path = _ply(tmp_path / "holes.ply", xyz, cloud["rgb"])
    keep = np.ones(N, bool)
    keep[bad_rows] = False
    clean = _ply(tmp_path / "clean.ply", cloud["xyz"][keep], cloud["rgb"][keep])
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        summary = predict(_predict_cfg(ckpt, f"[{path},{clean}]", out, "save_probs=true"))
    assert "3 of 400 point(s) have NaN/Inf coordinates (first at row 3)" in caplog.text
    assert "3 point(s) with NaN/Inf coordinates not labelled: label 255" in caplog.text
    entry = summary["files"][0]
    assert entry["points"] == N and entry["nonfinite_points"] == 3
    assert summary["files"][1]["nonfinite_points"] == 0
    assert json.loads((out / "predict.json").read_text())["files"][0]["nonfinite_points"] == 3
    labels = np.load(out / "holes.labels.npy")
    assert labels.shape == (N,) and labels.dtype == np.uint8  # a label for every input point
    assert (labels[bad_rows] == 255).all() and (labels[keep] < 9).all()
    # the finite points are labelled exactly as the same scan without the bad rows
    np.testing.assert_array_equal(labels[keep], np.load(out / "clean.labels.npy"))
    probs = np.load(out / "holes.probs.npy")
    assert probs.shape == (N, 9) and np.isnan(probs[bad_rows]).all()
    assert not np.isnan(probs[keep]).any()
    ply = PlyData.read(str(out / "holes.ply"))["vertex"].data
    assert len(ply) == N - 3 and np.isfinite(ply["x"]).all()
    # refused everywhere else: the reader by default, predict with nonfinite=error, the
    # voxelizer, the scan voxelizer, preparers and prepared scenes
    with pytest.raises(PointFileError, match=r"3 of 400 point\(s\) have NaN/Inf.*row 3"):
        read_points(path)
    with pytest.raises(PointFileError, match="holes.ply: 3 of 400"):
        predict(_predict_cfg(ckpt, path, tmp_path / "o2", "nonfinite=error"))
    with pytest.raises(ValueError, match=r"3 point\(s\) with NaN/Inf coordinates \(first at row 3"):
        voxelize(xyz, voxel_size=0.1)
    predictor = Segmenter.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(ValueError, match="nonfinite='drop'"):
        predictor.predict({"coord": xyz.astype(np.float32), "color": np.ones((N, 3), np.float32)})
    with pytest.raises(ValueError, match="NaN/Inf"):
        write_scene(tmp_path / "scenes" / "a" / "s0", {"coord": xyz.astype(np.float32)})
    _scene(tmp_path / "scenes", "a/s1", coord=xyz.astype(np.float32))
    with pytest.raises(ValueError, match=r"s1/coord.npy has 3 point\(s\) with NaN/Inf"):
        SceneFolder(tmp_path / "scenes", "a", keys=("coord",))[0]


# ---- labels outside the class map -------------------------------------------------------------
def test_labels_outside_class_map_in_prepared_segment(tmp_path: Path) -> None:
    import hydra

    root = tmp_path / "data" / "s3dis"
    rng = np.random.default_rng(1)
    coord = rng.uniform(0, 2, (200, 3)).astype(np.float32)
    segment = rng.integers(0, 13, 200)
    segment[[5, 6, 7]] = 13  # S3DIS has 13 classes, 0..12
    segment[9] = -3
    for area in ("Area_1", "Area_2", "Area_3", "Area_4", "Area_5", "Area_6"):
        _scene(root, f"{area}/room_1", coord=coord, color=np.full((200, 3), 0.5, np.float32),
               segment=segment)  # fmt: skip
    cfg = _compose("train", ["data=s3dis", f"paths.data_dir={tmp_path / 'data'}",
                             "data.num_workers=0"], tmp_path)  # fmt: skip
    dm = hydra.utils.instantiate(cfg.data)
    with pytest.raises(LabelRangeError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(root / "Area_1" / "room_1" / "segment.npy") in msg
    assert "4 label(s) outside the 13 classes 0..12" in msg
    assert "-3 (1 points)" in msg and "13 (3 points)" in msg
    assert "pointseg-prepare s3dis" in msg and "--overwrite" in msg


def test_labels_outside_class_map_in_loss(ckpt: Path) -> None:
    from pointseg.lit_module import SegmentationModule

    stored = torch.load(ckpt, weights_only=False)
    import hydra

    module: SegmentationModule = hydra.utils.instantiate(stored["pointseg_config"]["model"])
    rng = np.random.default_rng(2)
    sample = {"coord": rng.uniform(0, 2, (100, 3)).astype(np.float32),
              "color": rng.uniform(0, 1, (100, 3)).astype(np.float32),
              "height": rng.uniform(0, 1, (100, 1)).astype(np.float32),
              "segment": rng.integers(0, 9, 100)}  # fmt: skip
    vox = Voxelize(voxel_size=0.1, feat_keys=("color", "height"), mode="mean")
    loss, _ = module.model_step(collate([vox(dict(sample))]))  # valid labels: a loss
    assert torch.isfinite(loss)
    for bad, count in ((9, 4), (-2, 1)):
        seg = sample["segment"].copy()
        seg[:count] = bad
        batch = collate([vox({**sample, "segment": seg})])
        with pytest.raises(LabelRangeError, match=rf"{count} label\(s\) outside the 9 classes"):
            module.model_step(batch)
    seg = sample["segment"].copy()
    seg[:10] = -1  # the ignore index is fine
    module.model_step(collate([vox({**sample, "segment": seg})]))


# ---- arrays of different lengths --------------------------------------------------------------
def test_array_lengths_differ(ckpt: Path, tmp_path: Path) -> None:
    coord = np.random.default_rng(3).uniform(0, 2, (50, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="features have 40 rows but coord has 50 points"):
        voxelize(coord, np.ones((40, 3), np.float32), voxel_size=0.1)
    with pytest.raises(ValueError, match="segment has 49 labels but coord has 50 points"):
        Voxelize(voxel_size=0.1, feat_keys=("color",))(
            {"coord": coord, "color": np.ones((50, 3), np.float32), "segment": np.zeros(49, int)}
        )
    predictor = Segmenter.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(ValueError, match="feature 'color' has 40 rows but coord has 50 points"):
        predictor.predict({"coord": coord, "color": np.ones((40, 3), np.float32)})
    np.savez(tmp_path / "odd.npz", coord=coord, color=np.ones((45, 3), np.float32))
    with pytest.raises(PointFileError, match="odd.npz: 'color' has 45 rows for 50 points"):
        read_points(tmp_path / "odd.npz")
    with pytest.raises(ValueError, match="'segment' has 3 rows but 'coord' has 50"):
        write_scene(tmp_path / "scenes" / "a" / "s0", {"coord": coord, "segment": np.zeros(3)})
    _scene(tmp_path / "scenes", "a/s1", coord=coord, segment=np.zeros(48, np.int64))
    with pytest.raises(ValueError, match=r"s1/segment.npy has 48 rows but coord.npy has 50"):
        SceneFolder(tmp_path / "scenes", "a", keys=("coord", "segment"))[0]


# ---- damaged files ----------------------------------------------------------------------------
def test_truncated_or_corrupt_files(
    tmp_path: Path, cloud: dict, capsys: pytest.CaptureFixture
) -> None:
    ply = _ply(tmp_path / "a.ply", cloud["xyz"], cloud["rgb"])
    data = ply.read_bytes()
    (tmp_path / "body.ply").write_bytes(data[:-100])
    (tmp_path / "head.ply").write_bytes(data[:60])
    las = _las(tmp_path / "a.las", cloud["xyz"])
    laz = _las(tmp_path / "a.laz", cloud["xyz"])
    (tmp_path / "body.las").write_bytes(las.read_bytes()[:-200])
    (tmp_path / "body.laz").write_bytes(laz.read_bytes()[:-200])
    (tmp_path / "head.las").write_bytes(las.read_bytes()[:100])
    raw = bytearray(laz.read_bytes())
    raw[400:440] = b"\xff" * 40  # compressed chunk bytes garbled
    (tmp_path / "garbled.laz").write_bytes(bytes(raw))
    scan = np.c_[cloud["xyz"], np.ones(N)].astype("<f4").tobytes()
    (tmp_path / "body.bin").write_bytes(scan[:-6])
    for name in ("body.ply", "head.ply", "body.las", "body.laz", "head.las", "garbled.laz",
                 "body.bin"):  # fmt: skip
        with pytest.raises(PointFileError) as err:
            read_points(tmp_path / name)
        msg = str(err.value)
        assert str(tmp_path / name) in msg, msg
        assert "truncated" in msg and "re-export" in msg, msg
    # pointseg-prepare las: exit status 2 and one line naming the file, no traceback
    from pointseg.prepare import main as prepare_main

    src = tmp_path / "tiles"
    src.mkdir()
    shutil.copy(tmp_path / "body.laz", src / "tile.laz")
    with pytest.raises(SystemExit) as stop:
        prepare_main(["las", f"src={src}", f"dst={tmp_path / 'prepared'}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"pointseg-prepare las: error: cannot read {src / 'tile.laz'}" in err
    assert "re-export" in err and "Traceback" not in err


def test_wrong_extension(tmp_path: Path, cloud: dict) -> None:
    ply = _ply(tmp_path / "scan.ply", cloud["xyz"], cloud["rgb"])
    las = _las(tmp_path / "tile.las", cloud["xyz"])
    cases = {"scan.las": (ply, "PLY", "scan.ply", "ply"), "scan.bin": (ply, "PLY", "scan.ply",
             "ply"), "tile.ply": (las, "LAS", "tile.las", "las")}  # fmt: skip
    for name, (src, kind, rename, fmt) in cases.items():
        shutil.copy(src, tmp_path / name)
        with pytest.raises(PointFileError) as err:
            read_points(tmp_path / name)
        msg = str(err.value)
        assert f"{tmp_path / name} is a {kind} file" in msg
        assert f"rename it to {rename} or pass format={fmt}" in msg
        assert len(read_points(tmp_path / name, format=fmt)["coord"]) == N  # the fix works


# ---- georeferenced offsets --------------------------------------------------------------------
def test_large_offsets_same_labels(ckpt: Path, tmp_path: Path, cloud: dict) -> None:
    from plyfile import PlyData

    offset = np.array([1.0e6, 2.0e6, 100.0])
    local = _ply(tmp_path / "local.ply", cloud["xyz"], cloud["rgb"])
    geo = _ply(tmp_path / "geo.ply", cloud["xyz"] + offset, cloud["rgb"])
    out = tmp_path / "out"
    predict(_predict_cfg(ckpt, f"[{local},{geo}]", out))
    labels = np.load(out / "local.labels.npy")
    assert len(np.unique(labels)) > 1  # a real comparison, not a constant
    np.testing.assert_array_equal(np.load(out / "geo.labels.npy"), labels)
    v = PlyData.read(str(out / "geo.ply"))["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    assert v["x"].dtype == np.float64
    np.testing.assert_allclose(xyz, cloud["xyz"] + offset, rtol=0, atol=1e-6)  # < 1 um
    # the voxelizer works in float64: the same cells with or without the offset
    a = voxelize(cloud["xyz"], voxel_size=0.05)
    b = voxelize(cloud["xyz"] + offset, voxel_size=0.05)
    np.testing.assert_array_equal(a.grid_coord, b.grid_coord)
    np.testing.assert_array_equal(a.inverse, b.inverse)


# ---- one point --------------------------------------------------------------------------------
def test_single_point(ckpt: Path, tmp_path: Path, cloud: dict) -> None:
    vox = voxelize(np.array([[3.2, -1.0, 7.5]]), np.ones((1, 2), np.float32), voxel_size=0.1)
    assert vox.grid_coord.tolist() == [[0, 0, 0]] and vox.inverse.tolist() == [0]
    one = _ply(tmp_path / "one.ply", cloud["xyz"][:1] + 5e5, cloud["rgb"][:1])
    summary = predict(_predict_cfg(ckpt, one, tmp_path / "out"))
    assert summary["files"][0]["points"] == 1
    labels = np.load(tmp_path / "out" / "one.labels.npy")
    assert labels.shape == (1,) and labels[0] < 9


# ---- a checkpoint used with other data --------------------------------------------------------
def test_checkpoint_other_class_count_or_features(ckpt: Path, tmp_path: Path) -> None:
    from pointseg.eval import evaluate

    names = ",".join(f"c{i}" for i in range(13))
    cfg = _compose("eval", [f"ckpt_path={ckpt}", "+data.num_classes=13",
                            f"+data.class_names=[{names}]"], tmp_path)  # fmt: skip
    with pytest.raises(CheckpointMismatchError) as err:
        evaluate(cfg)
    msg = str(err.value)
    assert "data.num_classes=13" in msg and "predicts 9 classes" in msg and str(ckpt) in msg
    assert "pointseg-train data=" in msg
    cfg = _compose("eval", [f"ckpt_path={ckpt}", "+data.in_channels=3",
                            "+data.feat_keys=[color]"], tmp_path)  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match=r"data.in_channels=3 .* takes 4 input"):
        evaluate(cfg)
    # weights of another class count than the stored config: no raw state-dict listing
    bad = _save_ckpt(tmp_path / "bad.ckpt", [], ["data.num_classes=5",
                     "data.class_names=[a,b,c,d,e]"])  # fmt: skip
    with pytest.raises(CheckpointMismatchError) as err:
        evaluate(_compose("eval", [f"ckpt_path={bad}"], tmp_path))
    msg = str(err.value)
    assert "size mismatch for" not in msg and "[5" in msg and "[9" in msg and "bad.ckpt" in msg
    # predict with a file that lacks a feature the model takes
    scan = tmp_path / "scan.bin"
    np.ones((10, 4), "<f4").tofile(scan)
    with pytest.raises(MissingFeatureError) as err:
        predict(_predict_cfg(ckpt, scan, tmp_path / "out"))
    msg = str(err.value)
    assert "scan.bin has no 'color'" in msg and "data.feat_keys=[height] data.in_channels=1" in msg


# ---- configuration ----------------------------------------------------------------------------
def test_misspelt_config_key_hint(tmp_path: Path) -> None:
    hints = key_hints("train", ["trainer.max_epoch=3", "data.voxel_sise=0.1", "seed=1",
                                "modle.optimizer.lr=0.1"], str(CONF_DIR))  # fmt: skip
    assert hints == [
        "hint: 'trainer.max_epoch' is not a config key; did you mean trainer.max_epochs?",
        "hint: 'data.voxel_sise' is not a config key; did you mean data.voxel_size?",
        "hint: 'modle.optimizer.lr' is not a config key; did you mean model.optimizer.lr?",
    ]
    run = _run_cli("pointseg.train", "trainer.max_epoch=3", cwd=tmp_path)
    assert run.returncode == 1
    assert "Key 'max_epoch' is not in struct" in run.stderr  # Hydra's own message
    assert "did you mean trainer.max_epochs?" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_added_key_close_to_an_existing_one_warns() -> None:
    """``+key`` adds any key without error in Hydra, so a typo after ``+`` would go unnoticed."""
    warnings = added_key_warnings("train", ["+trainer.max_epoch=3", "+data.voxel_sise=0.1",
                                            "+trainer.num_sanity_val_steps=0", "+my_tag=x",
                                            "trainer.max_epochs=2"], str(CONF_DIR))  # fmt: skip
    assert warnings == [
        "warning: '+trainer.max_epoch' adds a new config key; did you mean trainer.max_epochs? "
        "(to change it, write trainer.max_epochs=3)",
        "warning: '+data.voxel_sise' adds a new config key; did you mean data.voxel_size? "
        "(to change it, write data.voxel_size=0.1)",
    ]
    assert added_key_warnings("train", ["trainer.max_epochs=2"], str(CONF_DIR)) == []


def test_missing_dataset_root(tmp_path: Path) -> None:
    import hydra

    nowhere = tmp_path / "nowhere"
    for data, command in (("s3dis", "pointseg-prepare s3dis src="),
                          ("scannet", "pointseg-prepare scannet src="),
                          ("las", "pointseg-prepare las src="),
                          ("semantickitti", "pointseg-prepare semantickitti src=")):  # fmt: skip
        cfg = _compose("train", [f"data={data}", f"paths.data_dir={nowhere}"], tmp_path)
        dm = hydra.utils.instantiate(cfg.data)
        with pytest.raises(FileNotFoundError) as err:
            dm.setup("fit")
        msg = str(err.value)
        assert command in msg and str(nowhere / data) in msg, msg
    run = _run_cli("pointseg.train", "data=s3dis", f"paths.data_dir={nowhere}",
                   "logger=none", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"pointseg-train: error: dataset root {nowhere / 's3dis'} does not exist" in run.stderr
    assert "pointseg-prepare s3dis src=" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
