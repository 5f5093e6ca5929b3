"""pointseg-predict: every output readable with labels intact, inputs never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from pointseg.data.datasets.synthetic import generate_room, scene_seed
from pointseg.io import MissingFeatureError, PointFileError
from pointseg.predict import class_codes, expand_inputs, predict
from tests.conftest import compose_config

OFFSET = np.array([600_000.0, 5_000_000.0, 20.0])


def _compose(name: str, overrides: list[str], root: Path) -> DictConfig:
    return compose_config(name, overrides, root)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained checkpoint of the default model (colour + height), as train writes it."""
    import hydra

    root = tmp_path_factory.mktemp("ckpt")
    cfg = _compose("train", ["data.voxel_size=0.1"], root)
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model)
    path = root / "model.ckpt"
    torch.save({"state_dict": module.state_dict(),
                "pointseg_config": OmegaConf.to_container(cfg, resolve=True)}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """The same small room as PLY (with labels), LAZ (georeferenced) and NPZ."""
    import laspy
    from plyfile import PlyData, PlyElement

    d = tmp_path_factory.mktemp("scans")
    room = generate_room(scene_seed(0, "test", 1), room_size=(4.0, 5.0), density=500.0)
    xyz, rgb = room["coord"], np.round(room["color"] * 255).astype(np.uint8)
    v = np.empty(len(xyz), [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"),
                            ("green", "u1"), ("blue", "u1"), ("label", "u1")])  # fmt: skip
    for i, c in enumerate("xyz"):
        v[c] = xyz[:, i]
    v["red"], v["green"], v["blue"] = rgb.T
    v["label"] = room["segment"]
    PlyData([PlyElement.describe(v, "vertex")]).write(str(d / "room.ply"))
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales, header.offsets = np.full(3, 0.001), OFFSET
    las = laspy.LasData(header)
    las.x, las.y, las.z = (xyz.astype(np.float64) + OFFSET).T
    las.red, las.green, las.blue = (rgb.astype(np.uint16) * 257).T
    las.classification = room["segment"].astype(np.uint8)
    las.write(str(d / "tile.laz"))
    np.savez(d / "cloud.npz", coord=xyz, color=room["color"])
    np.c_[xyz, np.ones(len(xyz))].astype("<f4").tofile(d / "scan.bin")  # no colour
    return {"dir": d, "ply": d / "room.ply", "laz": d / "tile.laz", "npz": d / "cloud.npz",
            "bin": d / "scan.bin", "n": len(xyz)}  # fmt: skip


def _cfg(ckpt: Path, inp, out: Path, *extra: str) -> DictConfig:
    args = [f"ckpt_path={ckpt}", f"input={inp}", f"output={out}", "progress=false", *extra]
    return _compose("predict", args, out.parent)


def test_outputs_for_ply_laz_npz(ckpt: Path, scans: dict, tmp_path: Path) -> None:
    import laspy
    from plyfile import PlyData

    out = tmp_path / "out"
    inputs = f"[{scans['ply']},{scans['laz']},{scans['npz']}]"
    summary = predict(_cfg(ckpt, inputs, out, "save_probs=true", "asprs_map=index"))
    n = scans["n"]
    assert [f["points"] for f in summary["files"]] == [n, n, n]
    assert summary["points_per_s"] > 0 and (out / "predict.json").is_file()
    labels = np.load(out / "room.labels.npy")
    assert labels.shape == (n,) and labels.dtype == np.uint8 and labels.max() < 9
    # the same points in three formats get the same labels
    np.testing.assert_array_equal(np.load(out / "cloud.labels.npy"), labels)
    assert (np.load(out / "tile.labels.npy") == labels).mean() > 0.99  # mm-rounded coords
    v = PlyData.read(str(out / "room.ply"))["vertex"].data
    np.testing.assert_array_equal(v["label"], labels)
    las = laspy.read(out / "tile.laz")
    np.testing.assert_array_equal(las.classification, np.load(out / "tile.labels.npy"))
    np.testing.assert_allclose(las.x, laspy.read(scans["laz"]).x)  # georeference kept
    probs = np.load(out / "room.probs.npy")
    assert probs.shape == (n, 9) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(1), 1.0, atol=1e-2)
    np.testing.assert_array_equal(probs.argmax(1), labels)
    assert not list(out.glob(".*"))  # no temporary files left
    saved = json.loads((out / "predict.json").read_text())
    assert saved["class_names"][0] == "floor" and saved["files"][1]["outputs"]["las"]


def test_block_inference_and_tta_through_predict(ckpt: Path, scans: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["inference.single_pass_max_voxels=0", "inference.block_size=2.0", "tta=true"]
    args += ["inference.tta_angles=[0,180]", "inference.tta_flip=false", "write_ply=false"]
    summary = predict(_cfg(ckpt, scans["ply"], out, *args))
    assert summary["files"][0]["blocks"] > 1 and summary["tta"]
    assert np.load(out / "room.labels.npy").shape == (scans["n"],)
    assert not (out / "room.ply").exists()


def test_refuses_to_overwrite_an_input(ckpt: Path, scans: dict) -> None:
    with pytest.raises(PointFileError, match="overwrite an input"):
        predict(_cfg(ckpt, scans["ply"], scans["dir"]))


def test_missing_colour_names_file_and_fix(ckpt: Path, scans: dict, tmp_path: Path) -> None:
    with pytest.raises(MissingFeatureError) as err:
        predict(_cfg(ckpt, scans["bin"], tmp_path / "out"))
    msg = str(err.value)
    assert "scan.bin" in msg and "color" in msg and "data.feat_keys=[height]" in msg
    # skip_errors: the bad file is listed, the others still labelled
    summary = predict(_cfg(ckpt, f"[{scans['bin']},{scans['npz']}]", tmp_path / "o2",
                           "skip_errors=true", "write_ply=false"))  # fmt: skip
    assert [f["input"] for f in summary["failed"]] == [str(scans["bin"])]
    assert (tmp_path / "o2" / "cloud.labels.npy").is_file()


def test_expand_inputs(scans: dict, tmp_path: Path) -> None:
    d = scans["dir"]
    assert expand_inputs(str(d)) == sorted(p for p in d.iterdir() if p.suffix != ".tmp")
    assert expand_inputs(f"{d}/*.la[sz]") == [scans["laz"]]
    with pytest.raises(PointFileError, match="matches no file"):
        expand_inputs(f"{d}/*.pcd")
    with pytest.raises(PointFileError, match="does not exist"):
        expand_inputs(str(tmp_path / "nope.ply"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PointFileError, match="no point-cloud files"):
        expand_inputs(str(tmp_path / "empty"))


def test_same_stem_twice_is_refused(ckpt: Path, scans: dict, tmp_path: Path) -> None:
    other = tmp_path / "room.npz"
    other.write_bytes(scans["npz"].read_bytes())
    with pytest.raises(PointFileError, match="same stem"):
        predict(_cfg(ckpt, f"[{scans['ply']},{other}]", tmp_path / "out"))


def test_class_codes() -> None:
    asprs = class_codes(["ground", "low_vegetation", "building", "other"], "auto")
    np.testing.assert_array_equal(asprs, [2, 3, 6, 1])
    # classes that are no ASPRS class get user-definable codes (64+), never a standard code
    np.testing.assert_array_equal(class_codes(["floor", "wall"], "auto"), [64, 65])
    np.testing.assert_array_equal(class_codes(["ceiling", "ground", "wall"], "auto"), [64, 2, 65])
    np.testing.assert_array_equal(class_codes(["floor", "wall"], "index"), [0, 1])
    np.testing.assert_array_equal(class_codes(["floor", "wall"], {"floor": 2, "wall": 6}), [2, 6])
    np.testing.assert_array_equal(class_codes(["a", "b"], [7, 9]), [7, 9])
    with pytest.raises(ValueError, match=r"no code for class\(es\) \['wall'\]"):
        class_codes(["floor", "wall"], {"floor": 2})
    with pytest.raises(ValueError, match="0..255"):
        class_codes(["a"], [300])


def test_las_copy_needs_codes_its_point_format_holds(
    ckpt: Path, scans: dict, tmp_path: Path, caplog
) -> None:
    """Point format 3 holds codes 0-31: the synthetic rooms' classes (codes 64+ under
    asprs_map=auto) get no classified copy, with a warning; asprs_map=index writes one."""
    out = tmp_path / "auto"
    with caplog.at_level("WARNING", logger="pointseg.predict"):
        predict(_cfg(ckpt, scans["laz"], out))
    assert (out / "tile.labels.npy").is_file() and not (out / "tile.laz").exists()
    assert "holds classification codes 0-31 only" in caplog.text
    out = tmp_path / "index"
    predict(_cfg(ckpt, scans["laz"], out, "asprs_map=index"))
    assert (out / "tile.laz").is_file()
