"""What a user does, end to end: prepare -> train -> eval -> predict on the raw file.

For each kind of data (LAS tiles with the default ``data=las`` features, SemanticKITTI raw
scans, a ScanNet-style scene folder, S3DIS rooms, synthetic rooms) a tiny model is trained for a few
steps through the real configs; ``pointseg-eval save_labels=true`` labels the val scenes,
and ``pointseg-predict`` labels the raw file a val scene came from. The two must give the
same label to every point: one checkpoint, one recipe, one reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pointseg.eval import evaluate
from pointseg.metrics import confusion_matrix
from pointseg.metrics import scores as metric_scores
from pointseg.predict import predict
from pointseg.train import train
from tests.conftest import SHARED_DATA, TINY_MODEL, compose_config

pytestmark = pytest.mark.slow

# a few optimizer steps, one validation at the end (so best.ckpt exists)
FEW_STEPS = [
    *TINY_MODEL,
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=3",
    "trainer.check_val_every_n_epoch=1",
    "logger=none",
    "callbacks.progress_bar.refresh_rate=0",
    "seed=0",
]


def _journey(root: Path, train_overrides: list[str], raw: Path, scene: str | None) -> tuple:
    """(eval's labels of val scene ``scene``, predict's labels of the raw file ``raw``)."""
    cfg = compose_config("train", [*FEW_STEPS, *train_overrides], root / "train")
    result = train(cfg)
    ckpt = result["best_ckpt"]
    ecfg = compose_config(
        "eval", [f"ckpt_path={ckpt}", "save_labels=true", "report.enabled=false"], root / "eval"
    )
    scores = evaluate(ecfg)
    # Lightning's batched validation loop scores the same voxels through the same network
    lcfg = compose_config("eval", [f"ckpt_path={ckpt}", "report.enabled=false"], root / "eval_pl")
    assert evaluate(lcfg)["val/miou"] == pytest.approx(scores["val/miou"], abs=1e-6)
    labels_dir = Path(ecfg.paths.output_dir) / "labels"
    if scene is None:  # the one val scene (a whole LAS tile)
        (only,) = list(labels_dir.glob("*.labels.npy"))
        by_eval = np.load(only)
    else:
        by_eval = np.load(labels_dir / f"{scene.replace('/', '__')}.labels.npy")
    out = root / "predict"
    pcfg = compose_config(
        "predict", [f"ckpt_path={ckpt}", f"input={raw}", f"output={out}", "progress=false"], root
    )
    predict(pcfg)
    by_predict = np.load(out / f"{raw.stem}.labels.npy")
    return by_eval, by_predict, scores


def _airborne_tile(path: Path, *, seed: int, offset: tuple[float, float, float]) -> None:
    """A 60 x 60 m georeferenced tile: sloped ground, flat-roofed buildings, trees, a pond."""
    import laspy

    rng = np.random.default_rng(seed)
    parts, codes = [], []
    g = rng.uniform(0, 60, (6000, 2))
    ground_z = 0.05 * g[:, 0] + rng.normal(0, 0.05, len(g))
    water = (g[:, 0] > 45) & (g[:, 1] < 12)
    parts.append(np.c_[g, np.where(water, 2.0, ground_z)])
    codes.append(np.where(water, 9, 2))
    for _ in range(3):  # buildings: roofs and walls
        x0, y0 = rng.uniform(5, 35, 2)
        w, h = rng.uniform(6, 12, 2), rng.uniform(5, 10)
        roof = np.c_[rng.uniform([x0, y0], [x0 + w[0], y0 + w[1]], (500, 2)), np.full(500, h)]
        parts.append(roof + [0, 0, 0.05 * x0])
        codes.append(np.full(500, 6))
    for _ in range(8):  # trees: crowns of scattered returns
        c = rng.uniform(0, 60, 2)
        crown = rng.normal(0, 1.5, (200, 3)) + [c[0], c[1], rng.uniform(6, 10) + 0.05 * c[0]]
        parts.append(crown)
        codes.append(np.full(200, 5))
    xyz = np.concatenate(parts) + np.asarray(offset)
    header = laspy.LasHeader(point_format=1, version="1.2")
    header.scales, header.offsets = np.full(3, 0.01), np.floor(np.asarray(offset))
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz.T
    las.classification = np.concatenate(codes).astype(np.uint8)
    las.intensity = rng.integers(0, 4000, len(xyz)).astype(np.uint16)
    las.return_number = np.ones(len(xyz), np.uint8)
    las.number_of_returns = np.ones(len(xyz), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    las.write(str(path))


def _prepare_las(src: Path, dst: Path) -> None:
    from pointseg.prepare.las import prepare

    prepare(src, dst, split_by="folder", block_size=0.0)


def test_las_default_features(tmp_path: Path) -> None:
    """data=las (heights above ground at three radii, intensity, returns): predict on the
    raw val tile gives eval's labels, every point."""
    src, dst = tmp_path / "tiles", tmp_path / "las"
    _airborne_tile(src / "train" / "a.laz", seed=0, offset=(155_000.0, 463_000.0, 0.0))
    _airborne_tile(src / "val" / "b.laz", seed=1, offset=(155_060.0, 463_000.0, 0.0))
    _prepare_las(src, dst)
    by_eval, by_predict, scores = _journey(
        tmp_path, ["data=las", f"data.train_dataset.root={dst}"], src / "val" / "b.laz", None
    )  # fmt: skip
    assert len(by_predict) == len(by_eval) > 0
    np.testing.assert_array_equal(by_predict, by_eval)
    # eval's mIoU is the per-point score of the labels it wrote against the prepared truth
    (scene,) = [d for d in (dst / "val").iterdir() if d.is_dir()]
    truth = torch.from_numpy(np.load(scene / "segment.npy").astype(np.int64))
    k = len(json.loads((tmp_path / "predict" / "predict.json").read_text())["class_names"])
    conf = confusion_matrix(torch.from_numpy(by_eval.astype(np.int64)), truth, k, -1)
    assert metric_scores(conf).miou == pytest.approx(scores["val/miou"], abs=1e-6)


def test_las_user_classes_are_written_with_their_source_codes(tmp_path: Path) -> None:
    """A class map with classes ASPRS has no name for (vegetation = codes 3, 4, 5): the recipe
    keeps each class's first source code, and predict writes the classified LAS 1.2 copy with
    those codes (no code above 31 that point format 1 could not hold)."""
    import laspy

    from pointseg.prepare.las import prepare

    src, dst = tmp_path / "tiles", tmp_path / "las"
    _airborne_tile(src / "train" / "a.laz", seed=0, offset=(155_000.0, 463_000.0, 0.0))
    _airborne_tile(src / "val" / "b.laz", seed=1, offset=(155_060.0, 463_000.0, 0.0))
    cmap = {"classes": {"ground": [2, 9], "vegetation": [3, 4, 5], "building": [6]}}
    prepare(src, dst, split_by="folder", block_size=0.0, class_map=cmap)
    names = "data.class_names=[ground,vegetation,building]"
    _, by_predict, _ = _journey(
        tmp_path, ["data=las", f"data.train_dataset.root={dst}", names], src / "val" / "b.laz", None
    )  # fmt: skip
    copy = laspy.read(tmp_path / "predict" / "b.laz")
    codes = np.array([2, 3, 6])
    np.testing.assert_array_equal(np.asarray(copy.classification), codes[by_predict])


def test_las_prepared_features_equal_the_raw_reader(tmp_path: Path) -> None:
    """The preparer and predict compute every LAS feature with the same function and
    options: the arrays of a whole prepared tile equal what predict reads from it."""
    from pointseg.data.datasets.scene_folder import SceneFolder
    from pointseg.io import read_points

    src, dst = tmp_path / "tiles", tmp_path / "las"
    _airborne_tile(src / "val" / "t.laz", seed=3, offset=(80_000.0, 400_000.0, 30.0))
    _airborne_tile(src / "train" / "u.laz", seed=4, offset=(80_060.0, 400_000.0, 30.0))
    _prepare_las(src, dst)
    folder = SceneFolder(dst, "val", keys=("coord", "hag", "strength", "returns"))
    scene, reader = folder[0], folder.reader_options()
    assert set(reader["las"]) >= {"hag_cell", "hag_radii"}
    raw = read_points(src / "val" / "t.laz", **reader)
    for key in ("coord", "hag", "strength", "returns"):
        np.testing.assert_array_equal(raw[key], scene[key], err_msg=key)


def _kitti_scan(rng: np.random.Generator, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """A street: road (40), sidewalk (48), a building wall (50), vegetation (70), a car (10)."""
    road = np.c_[rng.uniform(-20, 20, (n, 2)) * [1, 0.2], rng.normal(-1.7, 0.02, n)]
    side = np.c_[rng.uniform(-20, 20, n // 2), rng.uniform(4, 6, n // 2), np.full(n // 2, -1.5)]
    wall = np.c_[rng.uniform(-20, 20, n // 2), np.full(n // 2, 8.0), rng.uniform(-1.5, 5, n // 2)]
    veg = rng.normal(0, 1.0, (n // 3, 3)) + [5, -7, 1]
    car = rng.uniform([-3, -2, -1.7], [1, 0, -0.3], (n // 3, 3))
    xyz = np.concatenate([road, side, wall, veg, car]).astype(np.float32)
    raw = np.repeat([40, 48, 50, 70, 10], [len(road), len(side), len(wall), len(veg), len(car)])
    return xyz, raw.astype(np.uint32)


def test_semantickitti_raw_scans(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    rng = np.random.default_rng(0)
    for seq in ("00", "08"):
        for frame in ("000000", "000001"):
            xyz, raw = _kitti_scan(rng)
            velo, labels = (
                root / "sequences" / seq / "velodyne",
                root / "sequences" / seq / "labels",
            )
            velo.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            np.c_[xyz, np.zeros(len(xyz))].astype("<f4").tofile(velo / f"{frame}.bin")
            raw.astype("<u4").tofile(labels / f"{frame}.label")
    by_eval, by_predict, _ = _journey(
        tmp_path,
        ["data=semantickitti", f"data.train_dataset.root={root}", "data.voxel_size=0.2",
         "data.train_dataset.sequences=[0]", "data.val_dataset.sequences=[8]", "data.num_workers=0",
         "data.val_batch_size=1"],
        root / "sequences" / "08" / "velodyne" / "000001.bin", "08/000001",
    )  # fmt: skip
    np.testing.assert_array_equal(by_predict, by_eval)


def test_scannet_scene_folder(tmp_path: Path) -> None:
    """ScanNet's raw layout -> pointseg-prepare scannet -> colour + mesh-normal features;
    predict on the raw ``_vh_clean_2.ply`` mesh computes the same normals."""
    from pointseg.prepare.scannet import prepare
    from tests.test_prepare_scannet import make_scene, write_label_map

    src, dst = tmp_path / "scannet", tmp_path / "prepared"
    make_scene(src / "scans/scene0000_00", labelled=True, seed=0)  # train list
    make_scene(src / "scans/scene0011_00", labelled=True, seed=1)  # val list
    write_label_map(src / "scannetv2-labels.combined.tsv")
    prepare(src, dst)
    raw = src / "scans/scene0011_00/scene0011_00_vh_clean_2.ply"
    by_eval, by_predict, _ = _journey(
        tmp_path,
        ["data=scannet", f"data.train_dataset.root={dst}", "data.voxel_size=0.02",
         "data.num_workers=0", "data.val_batch_size=1"],
        raw, "val/scene0011_00",
    )  # fmt: skip
    np.testing.assert_array_equal(by_predict, by_eval)


# a bad line like the one in the release's Area_5/office_19/Annotations/ceiling_1.txt
S3DIS_BAD_LINE = b"185.3\x10000 1.0 2.0 10 20 30"


def _s3dis_room(
    room: Path, rng: np.random.Generator, *, offset: tuple[float, float, float] = (0, 0, 0),
    bad_line: bool = False,
) -> None:  # fmt: skip
    """A raw S3DIS room: ``Annotations/<class>_<k>.txt`` ('x y z r g b', 0-255 colours) and
    the room-level ``<room>.txt`` holding the same lines, the annotation files in sorted order
    (``bad_line``: a corrupt third line in ``ceiling_1.txt``, and so in the room file)."""
    w, d, h = rng.uniform([4.0, 3.0, 2.6], [6.0, 5.0, 3.2])
    objects = {  # name: (low corner, high corner, points, base colour)
        "ceiling_1": ((0, 0, h - 0.02), (w, d, h), 500, (225, 225, 220)),
        "floor_1": ((0, 0, 0), (w, d, 0.02), 500, (140, 110, 80)),
        "wall_1": ((0, 0, 0), (w, 0.02, h), 400, (200, 190, 170)),
        "wall_2": ((0, 0, 0), (0.02, d, h), 300, (190, 200, 170)),
        "table_1": ((1.0, 1.0, 0.72), (2.2, 1.8, 0.76), 200, (90, 60, 30)),
        "chair_1": ((2.6, 1.2, 0.0), (3.0, 1.6, 0.9), 150, (30, 30, 160)),
    }
    folder = room / "Annotations"
    folder.mkdir(parents=True)
    texts = {}
    for name, (lo, hi, n, base) in objects.items():
        xyz = rng.uniform(lo, hi, (n, 3)) + np.asarray(offset)
        rgb = np.clip(np.asarray(base) + rng.integers(-20, 21, (n, 3)), 0, 255)
        lines = [b"%.3f %.3f %.3f %d %d %d" % (*p, *c) for p, c in zip(xyz, rgb, strict=True)]
        if bad_line and name == "ceiling_1":
            lines.insert(2, S3DIS_BAD_LINE)
        texts[name] = b"\n".join(lines) + b"\n"
        (folder / f"{name}.txt").write_bytes(texts[name])
    (room / f"{room.name}.txt").write_bytes(b"".join(texts[k] for k in sorted(texts)))


def test_s3dis_rooms(tmp_path: Path) -> None:
    """Stanford3dDataset_v1.2's layout -> pointseg-prepare s3dis -> colour + height features;
    predict on a val room's room-level ``.txt`` (read by the same text reader) gives eval's
    labels, every point."""
    import pointseg.prepare

    src, dst = tmp_path / "Stanford3dDataset_v1.2", tmp_path / "s3dis"
    rng = np.random.default_rng(0)
    for room in ("Area_1/office_1", "Area_1/office_2", "Area_2/office_1"):
        _s3dis_room(src / room, rng)
    pointseg.prepare.main(["s3dis", f"src={src}", f"dst={dst}"])
    raw = src / "Area_2/office_1/office_1.txt"
    by_eval, by_predict, _ = _journey(
        tmp_path,
        ["data=s3dis", f"data.train_dataset.root={dst}", "data.train_dataset.splits=[Area_1]",
         "data.val_dataset.splits=[Area_2]", "data.num_workers=0", "data.val_batch_size=1"],
        raw, "Area_2/office_1",
    )  # fmt: skip
    assert len(by_predict) == len(by_eval) == len(raw.read_bytes().splitlines())
    np.testing.assert_array_equal(by_predict, by_eval)


@pytest.mark.parametrize("offset", [(0.0, 0.0, 0.0), (20_000.0, 30_000.0, 100.0)])
def test_s3dis_prepared_arrays_equal_the_raw_reader(tmp_path: Path, offset: tuple) -> None:
    """The preparer reads the annotation files with predict's text reader and finishes the
    room as read_points does: coord and color of a prepared room equal what read_points gives
    for the room's ``.txt`` (with the options recorded in meta.json), a skipped bad line and a
    re-centred (beyond 10 km) room included."""
    from pointseg.data.datasets.scene_folder import SceneFolder
    from pointseg.io import read_points
    from pointseg.prepare.s3dis import prepare

    src, dst = tmp_path / "Stanford3dDataset_v1.2", tmp_path / "s3dis"
    _s3dis_room(src / "Area_5/office_19", np.random.default_rng(1), offset=offset, bad_line=True)
    prepare(src, dst)
    folder = SceneFolder(dst, "Area_5", keys=("coord", "color"))
    scene, reader = folder[0], folder.reader_options()
    assert reader == {}  # read_points' defaults for text files
    raw = read_points(src / "Area_5/office_19/office_19.txt", **reader, max_bad_lines=1)
    for key in ("coord", "color"):
        np.testing.assert_array_equal(raw[key], scene[key], err_msg=key)
    meta = json.loads((dst / "Area_5/office_19/meta.json").read_text())
    np.testing.assert_array_equal(meta["origin"], raw["origin"])
    assert meta["skipped_lines"] == {"Annotations/ceiling_1.txt": [3]}
    if offset == (0.0, 0.0, 0.0):  # S3DIS rooms keep the release's frame
        assert raw["origin"].tolist() == [0.0, 0.0, 0.0]
    else:  # world = coord + origin, as predict writes it back
        assert raw["origin"].tolist() == [20_000.0, 30_000.0, 100.0]


def test_synthetic_rooms(tmp_path: Path) -> None:
    """The default config (colour + AddHeight's height): a val room saved as a file."""
    import hydra

    overrides = ["data.voxel_size=0.1", "data.train_dataset.num_scenes=4",
                 "data.val_dataset.num_scenes=2", "data.val_batch_size=1"]  # fmt: skip
    cfg = compose_config("train", [*FEW_STEPS, *overrides], tmp_path / "probe")
    room = hydra.utils.instantiate(cfg.data.val_dataset)()[1]  # as eval's scene path sees it
    raw = tmp_path / "room.npz"
    np.savez(raw, coord=room["coord"], color=room["color"])
    by_eval, by_predict, _ = _journey(tmp_path, overrides, raw, "1")
    np.testing.assert_array_equal(by_predict, by_eval)


@pytest.mark.skipif(not (SHARED_DATA / "real" / "ign").is_dir(), reason="no real IGN tiles")
def test_real_ign_tiles(tmp_path: Path) -> None:
    """Real airborne tiles (IGN 77050 + 77055 -> 77060) with the default data=las."""
    ign, src = SHARED_DATA / "real" / "ign", tmp_path / "tiles"
    for name, split in (("77050", "train"), ("77055", "train"), ("77060", "val")):
        (src / split).mkdir(parents=True, exist_ok=True)
        tile = next(ign.glob(f"*{name}*.laz"))
        (src / split / tile.name).symlink_to(tile)
    from pointseg.prepare.las import prepare

    dst = tmp_path / "las"
    prepare(src, dst, split_by="folder", block_size=0.0, unknown="ignore")
    raw = next((src / "val").glob("*.laz"))
    by_eval, by_predict, _ = _journey(
        tmp_path, ["data=las", f"data.train_dataset.root={dst}"], raw, None
    )  # fmt: skip
    np.testing.assert_array_equal(by_predict, by_eval)
