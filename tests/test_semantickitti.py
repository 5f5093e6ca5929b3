from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import pointseg.prepare
from pointseg.data.datasets.semantickitti import SemanticKITTI, SemanticKITTIError, kitti_labels
from pointseg.prepare.semantickitti import index_class_weights, inverse_log_weights
from pointseg.submit_semantickitti import main as submit_main
from pointseg.submit_semantickitti import predict_submission, prediction_path, write_submission
from tests.conftest import CONF_DIR, SHARED_DATA, TINY_MODEL

CLASSES = [
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
    "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence",
    "vegetation", "trunk", "terrain", "pole", "traffic-sign",
]  # fmt: skip
# raw id -> expected segment, written out by class name (independent of the shipped yaml)
EXPECTED = {
    0: None, 1: None, 52: None, 99: None,
    10: "car", 252: "car", 11: "bicycle", 15: "motorcycle", 18: "truck", 258: "truck",
    13: "other-vehicle", 16: "other-vehicle", 20: "other-vehicle", 256: "other-vehicle",
    257: "other-vehicle", 259: "other-vehicle", 30: "person", 254: "person",
    31: "bicyclist", 253: "bicyclist", 32: "motorcyclist", 255: "motorcyclist",
    40: "road", 60: "road", 44: "parking", 48: "sidewalk", 49: "other-ground",
    50: "building", 51: "fence", 70: "vegetation", 71: "trunk", 72: "terrain", 80: "pole",
    81: "traffic-sign",
}  # fmt: skip
RAW_IDS = np.array(sorted(EXPECTED))
LUT = np.full(260, -99)
for _raw, _name in EXPECTED.items():
    LUT[_raw] = -1 if _name is None else CLASSES.index(_name)


def make_kitti(root: Path, scans: dict[str, int], *, points: int = 300, labels: bool = True):
    """Raw-layout fixture: ``scans`` maps sequence -> number of scans; returns raw labels."""
    rng = np.random.default_rng(len(scans))
    raw_by_name = {}
    for seq, count in scans.items():
        velo = root / "sequences" / seq / "velodyne"
        velo.mkdir(parents=True)
        for i in range(count):
            n = points + 7 * i
            pts = rng.uniform(-10, 10, (n, 4)).astype(np.float32)
            pts[:, 3] = rng.random(n)
            pts.tofile(velo / f"{i:06d}.bin")
            raw = RAW_IDS[rng.integers(len(RAW_IDS), size=n)].astype(np.uint32)
            raw[: len(RAW_IDS)] = RAW_IDS  # every id at least once
            inst = rng.integers(0, 5, n).astype(np.uint32)
            if labels:
                (root / "sequences" / seq / "labels").mkdir(exist_ok=True)
                (raw | inst << 16).tofile(root / "sequences" / seq / "labels" / f"{i:06d}.label")
            raw_by_name[f"{seq}/{i:06d}"] = (pts, raw, inst)
    return raw_by_name


def test_label_definition_matches_the_benchmark() -> None:
    labels = kitti_labels()
    assert labels.class_names == CLASSES
    assert all(labels.lut[raw] == LUT[raw] for raw in EXPECTED)
    assert sorted(labels.learning_map) == sorted(EXPECTED)
    for k, raw in labels.learning_map_inv.items():
        assert k == 0 or labels.learning_map[raw] == k
    assert labels.splits["val"] == (8,) and labels.splits["test"] == tuple(range(11, 22))
    assert labels.learning_ignore[0] and not any(labels.learning_ignore[k] for k in range(1, 20))
    freq = labels.class_frequencies()
    assert freq.shape == (19,) and freq.sum() == pytest.approx(1.0)


def test_experiment_class_weights_follow_the_formula() -> None:
    exp = yaml.safe_load((CONF_DIR / "experiment" / "semantickitti_spunet.yaml").read_text())
    expected = inverse_log_weights(kitti_labels().class_frequencies())
    np.testing.assert_allclose(exp["model"]["class_weights"], expected, atol=1e-4)
    assert expected[CLASSES.index("road")] < expected[CLASSES.index("motorcyclist")]


def test_reader_maps_every_point(tmp_path: Path) -> None:
    truth = make_kitti(tmp_path, {"00": 2, "08": 2})
    ds = SemanticKITTI(tmp_path, sequences=[0, "08"])
    assert len(ds) == 4 and ds.class_names == CLASSES
    for i in range(len(ds)):
        s = ds[i]
        pts, raw, inst = truth[s["name"]]
        assert s["coord"].dtype == np.float32 and s["coord"].shape == (len(pts), 3)
        np.testing.assert_array_equal(s["coord"], pts[:, :3])
        np.testing.assert_array_equal(s["strength"], pts[:, 3:4])
        assert s["segment"].dtype == np.int64 and s["instance"].dtype == np.int64
        np.testing.assert_array_equal(s["segment"], LUT[raw])
        np.testing.assert_array_equal(s["instance"], inst)
    assert [s.name for s in SemanticKITTI(tmp_path, "val").scans] == ["08/000000", "08/000001"]
    assert len(SemanticKITTI(tmp_path, "val", step=2)) == 1


def test_missing_data_says_where_it_comes_from(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="semantic-kitti.org"):
        SemanticKITTI(tmp_path / "nowhere", "train")
    make_kitti(tmp_path, {"00": 1})
    with pytest.raises(FileNotFoundError, match=r"sequences/01/velodyne.*semantic-kitti\.org"):
        SemanticKITTI(tmp_path, "train")


def test_test_sequences_are_unlabelled(tmp_path: Path) -> None:
    make_kitti(tmp_path, {"11": 1, "10": 1}, labels=False)
    s = SemanticKITTI(tmp_path, sequences=[11])[0]
    assert (s["segment"] == -1).all() and len(s["segment"]) == len(s["coord"])
    with pytest.raises(FileNotFoundError, match=r"sequences/10/labels.*labelled"):
        SemanticKITTI(tmp_path, sequences=[10])


def test_malformed_files_are_named(tmp_path: Path) -> None:
    make_kitti(tmp_path, {"08": 3})
    seq = tmp_path / "sequences" / "08"
    with open(seq / "velodyne" / "000000.bin", "ab") as f:
        f.write(b"\0" * 5)
    with open(seq / "labels" / "000001.label", "ab") as f:
        f.write(b"\0" * 4)
    raw = np.fromfile(seq / "labels" / "000002.label", dtype=np.uint32)
    raw[3] = 7  # not a SemanticKITTI id
    raw.tofile(seq / "labels" / "000002.label")
    ds = SemanticKITTI(tmp_path, "val")
    with pytest.raises(SemanticKITTIError, match=r"000000\.bin.*multiple of 16"):
        ds[0]
    with pytest.raises(SemanticKITTIError, match=r"000001\.label.*000001\.bin"):
        ds[1]
    with pytest.raises(SemanticKITTIError, match=r"000002\.label.*\[7\]"):
        ds[2]
    (seq / "labels" / "000002.label").unlink()
    with pytest.raises(SemanticKITTIError, match=r"000002\.bin has no label"):
        SemanticKITTI(tmp_path, "val")


@pytest.mark.skipif(
    not (SHARED_DATA / "semantickitti_sample").is_dir(),
    reason=f"real SemanticKITTI sample not found under {SHARED_DATA}",
)
def test_real_sample() -> None:
    root = SHARED_DATA / "semantickitti_sample"
    s = SemanticKITTI(root, sequences=[0])[0]
    raw = np.fromfile(root / "sequences/00/labels/000000.label", dtype=np.uint32) & 0xFFFF
    assert s["coord"].shape == (50, 3) and s["strength"].shape == (50, 1)
    assert set(raw.tolist()) == {0, 50, 52, 70, 71, 80}
    names = {50: "building", 70: "vegetation", 71: "trunk", 80: "pole"}
    for r, name in names.items():
        assert (s["segment"][raw == r] == CLASSES.index(name)).all()
    assert (s["segment"][(raw == 0) | (raw == 52)] == -1).all()
    assert s["strength"].min() >= 0 and s["strength"].max() <= 1


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The prepare command's message for a bad input: exit status 2, no traceback."""
    with pytest.raises(SystemExit) as exc:
        pointseg.prepare.main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_prepare_checks_and_indexes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "dataset", tmp_path / "out"
    truth = make_kitti(src, {"00": 2, "08": 1})
    pointseg.prepare.main(["semantickitti", f"src={src}", f"dst={dst}"])
    index = json.loads((dst / "index.json").read_text())
    assert index["splits"] == {"train": ["00"], "val": ["08"], "test": []}
    seq0 = index["sequences"]["00"]
    segs = np.concatenate([LUT[truth[f"00/{i:06d}"][1]] for i in range(2)])
    assert seq0["scans"] == 2 and seq0["points"] == len(segs)
    assert seq0["class_points"] == np.bincount(segs[segs >= 0], minlength=19).tolist()
    assert seq0["ignored_points"] == int((segs < 0).sum())
    assert index["class_weights"]["weights"] == index_class_weights(dst / "index.json")
    assert len(index_class_weights(index, sequences=[0, 8])) == 19

    with open(src / "sequences" / "08" / "velodyne" / "000000.bin", "ab") as f:
        f.write(b"\0" * 3)
    pointseg.prepare.main(["semantickitti", f"src={src}", f"dst={dst}"])  # index exists: skip
    err = cli_error(["semantickitti", f"src={src}", f"dst={dst}", "--overwrite"], capsys)
    assert re.search(r"08/velodyne/000000\.bin", err), err
    assert json.loads((dst / "index.json").read_text()) == index  # the old index stays whole

    only = tmp_path / "only00"
    pointseg.prepare.main(["semantickitti", f"src={src}", f"dst={only}", "sequences=00"])
    assert list(json.loads((only / "index.json").read_text())["sequences"]) == ["00"]
    err = cli_error(["semantickitti", f"src={tmp_path}", f"dst={only}", "--overwrite"], capsys)
    assert re.search(r"did you mean src=.*dataset", err), err


def test_submission_round_trip(tmp_path: Path) -> None:
    pred = np.arange(19).repeat(3)
    out = write_submission(pred, prediction_path(tmp_path, "11/000042"), num_points=57)
    assert out == tmp_path / "sequences" / "11" / "predictions" / "000042.label"
    raw = np.fromfile(out, dtype=np.uint32)
    assert raw.dtype == np.uint32 and len(raw) == 57 and (raw >> 16 == 0).all()
    np.testing.assert_array_equal(LUT[raw], pred)  # maps back to the predicted classes
    assert raw[pred == CLASSES.index("building")].tolist() == [50, 50, 50]
    assert [p.name for p in out.parent.iterdir()] == ["000042.label"]  # no temp file left
    for bad in (np.array([0, 19]), np.array([-1, 3])):
        with pytest.raises(ValueError, match="outside 0..18"):
            write_submission(bad, out)
    with pytest.raises(ValueError, match="integer"):
        write_submission(np.zeros(3), out)
    with pytest.raises(ValueError, match="scan has 4 points"):
        write_submission(np.zeros(3, dtype=np.int64), out, num_points=4)


def test_submit_command_line(monkeypatch, capsys, tmp_path: Path) -> None:
    """pointseg-submit: Hydra's command-line style, one line for a missing option."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pointseg-submit", "ckpt_path=x"])
    with pytest.raises(SystemExit) as stop:
        submit_main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "root" in err and "output" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()  # nothing written for a refused command


def test_experiment_trains_one_epoch(compose_cfg, tmp_path: Path) -> None:
    from pointseg.train import train

    root = tmp_path / "kitti"
    make_kitti(root, {"00": 2, "08": 1}, points=400)
    cfg = compose_cfg(
        "train",
        [
            "experiment=semantickitti_spunet",
            f"data.train_dataset.root={root}",
            "data.train_dataset.sequences=[0]",
            "trainer.check_val_every_n_epoch=1",
            *TINY_MODEL,
        ],
    )
    assert cfg.data.val_dataset.root == cfg.data.test_dataset.root == str(root)
    result = train(cfg)
    assert 0.0 <= result["val/miou"] <= 1.0

    out = tmp_path / "submission"
    assert predict_submission(result["best_ckpt"], root, out, split="val", device="cpu") == 1
    raw = np.fromfile(out / "sequences" / "08" / "predictions" / "000000.label", np.uint32)
    assert len(raw) == 400 and set(raw.tolist()) <= set(kitti_labels().learning_map_inv.values())
    assert predict_submission(result["best_ckpt"], root, out, split="val") == 0  # kept
