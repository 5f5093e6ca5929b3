from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import pytest

import pointseg.prepare
from pointseg.data.scenes import read_scene
from pointseg.prepare.common import PrepareError
from pointseg.prepare.s3dis import CLASS_NAMES, prepare
from tests.conftest import TINY_MODEL

CORRUPT_LINE = b"185.3\x10000 1.0 2.0 10 20 30"
# room -> annotation files in sorted (= instance) order: (file stem, expected class, points)
ROOMS = {
    "Area_1/office_1": [
        ("ceiling_1", "ceiling", 160),
        ("chair_1", "chair", 90),
        ("chair_2", "chair", 70),
        ("lamp_1", "clutter", 30),  # not an S3DIS class
        ("stairs_1", "clutter", 40),
        ("wall_1", "wall", 200),
    ],
    "Area_5/office_19": [
        ("board_1", "board", 50),
        ("ceiling_1", "ceiling", 120),  # gets a corrupt line, like the release's
        ("floor_1", "floor", 150),
    ],
}


def make_s3dis(src: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw-layout rooms; returns room -> (points (N, 6), segment, instance) as written."""
    rng = np.random.default_rng(0)
    expected = {}
    for room, files in ROOMS.items():
        folder = src / room / "Annotations"
        folder.mkdir(parents=True)
        # the room-level file holds the same points without labels; it must not be read
        (src / room / f"{Path(room).name}.txt").write_text("not read\n")
        parts, segs, insts = [], [], []
        for index, (stem, cls, n) in enumerate(files):
            # an 8 x 6 x 3 m room; multiples of 1/8 are exact in binary, so compared exactly
            xyz = rng.integers(0, [64, 48, 24], (n, 3)) / 8.0
            rgb = rng.integers(0, 256, (n, 3))
            lines = [b"%.3f %.3f %.3f %d %d %d" % (*p, *c) for p, c in zip(xyz, rgb, strict=True)]
            if room == "Area_5/office_19" and stem == "ceiling_1":
                lines.insert(2, CORRUPT_LINE)  # line 3 of the file
            (folder / f"{stem}.txt").write_bytes(b"\n".join(lines) + b"\n")
            parts.append(np.hstack([xyz, rgb]))
            segs.append(np.full(n, CLASS_NAMES.index(cls)))
            insts.append(np.full(n, index))
        expected[room] = (np.vstack(parts), np.concatenate(segs), np.concatenate(insts))
    return expected


def assert_room(dst: Path, room: str, expected: tuple[np.ndarray, ...]) -> None:
    points, segment, instance = expected
    scene = read_scene(dst / room)
    assert sorted(scene) == ["color", "coord", "instance", "segment"]
    assert scene["coord"].dtype == np.float32 and scene["color"].dtype == np.float32
    assert scene["segment"].dtype == np.int64 and scene["instance"].dtype == np.int64
    np.testing.assert_array_equal(scene["coord"], points[:, :3].astype(np.float32))
    np.testing.assert_array_equal(scene["color"], (points[:, 3:] / 255).astype(np.float32))
    np.testing.assert_array_equal(scene["segment"], segment)
    np.testing.assert_array_equal(scene["instance"], instance)


@pytest.fixture
def raw(tmp_path: Path) -> tuple[Path, dict]:
    src = tmp_path / "Stanford3dDataset_v1.2"
    return src, make_s3dis(src)


def test_rooms_point_by_point(raw, tmp_path: Path, caplog) -> None:
    src, expected = raw
    dst = tmp_path / "s3dis"
    with caplog.at_level(logging.WARNING, logger="pointseg.prepare.s3dis"):
        counts = prepare(src, dst)
    assert counts == {"prepared": 2, "skipped": 0, "total": 2}
    for room, exp in expected.items():
        assert_room(dst, room, exp)
    bad_file = src / "Area_5/office_19/Annotations/ceiling_1.txt"
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(bad_file) in m and "line 3 " in m for m in messages), messages
    assert any("lamp_1.txt" in m and "unknown class" in m for m in messages)
    assert not any("stairs" in m for m in messages)  # a documented alias, no warning
    meta = json.loads((dst / "Area_5/office_19/meta.json").read_text())
    assert meta["skipped_lines"] == {"Annotations/ceiling_1.txt": [3]}

    assert prepare(src, dst) == {"prepared": 0, "skipped": 2, "total": 2}  # re-run skips


def test_cli_and_workers_give_the_same_scenes(raw, tmp_path: Path) -> None:
    src, expected = raw
    one, two = tmp_path / "one", tmp_path / "two"
    pointseg.prepare.main(["s3dis", f"src={src}", f"dst={one}"])
    pointseg.prepare.main(["s3dis", f"src={src}", f"dst={two}", "workers=2"])  # 2 processes
    for room, exp in expected.items():
        assert_room(one, room, exp)
        a, b = read_scene(one / room), read_scene(two / room)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    ("option", "message"),
    [("workers=two", "whole number"), ("workers=0", "1 or more"), ("overwrite=yes", "true")],
)
def test_cli_flag_options_refuse_bad_values(raw, tmp_path: Path, capsys, option, message) -> None:
    src, _ = raw
    with pytest.raises(SystemExit) as stop:
        pointseg.prepare.main(["s3dis", f"src={src}", f"dst={tmp_path / 'out'}", option])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_damaged_files_raise_naming_the_file(raw, tmp_path: Path) -> None:
    src, _ = raw
    bad = src / "Area_1/office_1/Annotations/chair_2.txt"
    text = bad.read_bytes()
    bad.write_bytes(text[: len(text) - 7])  # cut inside the last line
    with pytest.raises(PrepareError, match=r"chair_2\.txt.*truncated"):
        prepare(src, tmp_path / "a")

    bad.write_bytes(bytes(range(256)) * 64)  # not text at all
    with pytest.raises(PrepareError, match=r"chair_2\.txt.*damaged"):
        prepare(src, tmp_path / "b")

    bad.write_bytes(b"1 2 3 400 0 0\n")
    with pytest.raises(PrepareError, match=r"chair_2\.txt.*outside 0-255"):
        prepare(src, tmp_path / "c")

    bad.unlink()
    bad.mkdir()  # a folder where a file should be: cannot be read
    with pytest.raises(PrepareError, match=r"chair_2\.txt"):
        prepare(src, tmp_path / "d")
    assert not list((tmp_path / "d").rglob("*.npy"))  # no half scene


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="no Area_"):
        prepare(tmp_path, tmp_path / "out")
    (tmp_path / "Area_1" / "hallway_1").mkdir(parents=True)
    with pytest.raises(PrepareError, match=r"hallway_1/Annotations does not exist"):
        prepare(tmp_path, tmp_path / "out")


def test_experiment_trains_one_epoch(raw, compose_cfg, tmp_path: Path) -> None:
    from pointseg.train import train

    src, _ = raw
    prepare(src, tmp_path / "data" / "s3dis")
    cfg = compose_cfg(
        "train",
        [
            "experiment=s3dis_spunet34c",
            f"paths.data_dir={tmp_path / 'data'}",
            "data.train_dataset.splits=[Area_1]",
            "data.train_dataset.loop=2",
            "data.val_batch_size=1",
            *TINY_MODEL,
        ],
    )
    assert cfg.trainer.accelerator == "cpu" and cfg.data.voxel_size == 0.05
    assert list(cfg.data.val_dataset.splits) == ["Area_5"]
    result = train(cfg)
    assert 0.0 <= result["val/miou"] <= 1.0


def test_room_without_points_is_refused(tmp_path: Path) -> None:
    room = tmp_path / "src" / "Area_1" / "office_1" / "Annotations"
    room.mkdir(parents=True)
    (room / "chair_1.txt").write_text("")
    with pytest.raises(PrepareError, match="office_1: none of its annotation files has points"):
        prepare(tmp_path / "src", tmp_path / "out")


def test_six_fold_splits_follow_the_held_out_area(raw, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("train", ["data=s3dis"])
    assert list(cfg.data.train_dataset.splits) == ["Area_1", "Area_2", "Area_3", "Area_4", "Area_6"]
    fold = compose_cfg("train", ["data=s3dis", "data.val_dataset.splits=[Area_1]"])
    assert list(fold.data.train_dataset.splits) == [f"Area_{i}" for i in range(2, 7)]
    assert list(fold.data.test_dataset.splits) == ["Area_1"]
    bad = compose_cfg("train", ["data=s3dis", "data.val_dataset.splits=[Area_7]"])
    with pytest.raises(Exception, match="must name S3DIS areas"):
        list(bad.data.train_dataset.splits)

    # a hand-set training list that includes the validation area is refused, naming it
    src, _ = raw
    prepare(src, tmp_path / "data" / "s3dis")
    leak = compose_cfg(
        "train",
        [
            "data=s3dis",
            f"paths.data_dir={tmp_path / 'data'}",
            "data.train_dataset.splits=[Area_1,Area_5]",
            "data.num_workers=0",
        ],
    )
    dm = hydra.utils.instantiate(leak.data)
    with pytest.raises(ValueError, match=r"\['Area_5'\].*held out"):
        dm.setup("fit")
