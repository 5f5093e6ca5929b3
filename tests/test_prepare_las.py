from __future__ import annotations

import json
import shutil
from pathlib import Path

import laspy
import numpy as np
import pytest

from pointseg.data.scenes import read_scene
from pointseg.data.transforms import Voxelize
from pointseg.eval import evaluate
from pointseg.io import read_points
from pointseg.io.hag import height_above_local_min
from pointseg.io.las import load_class_map
from pointseg.prepare import main as prepare_main
from pointseg.prepare.common import PrepareError
from pointseg.prepare.las import block_members, prepare
from pointseg.train import train
from tests.conftest import SHARED_DATA

ORIGIN = np.array([1_234_567.0, 7_654_321.0, 250.0])  # georeferenced, ~1e6 m


def make_tile(
    path: Path,
    *,
    n: int = 2000,
    extent: tuple[float, float] = (120.0, 80.0),
    codes: tuple[int, ...] = (1, 2, 3, 5, 6, 7),
    point_format: int = 3,
    rgb_max: int = 65535,
    seed: int = 0,
) -> laspy.LasData:
    """A synthetic airborne tile at 1e6 m offsets with 1 mm resolution, written as LAS/LAZ."""
    rng = np.random.default_rng(seed)
    header = laspy.LasHeader(
        point_format=point_format, version="1.4" if point_format > 5 else "1.2"
    )
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = ORIGIN
    las = laspy.LasData(header)
    path.parent.mkdir(parents=True, exist_ok=True)
    las.x = ORIGIN[0] + rng.uniform(0, extent[0], n)
    las.y = ORIGIN[1] + rng.uniform(0, extent[1], n)
    las.z = ORIGIN[2] + rng.uniform(0, 20, n)
    las.classification = rng.choice(np.array(codes, dtype=np.uint8), n)
    las.intensity = rng.integers(0, 4000, n).astype(np.uint16)
    las.return_number = rng.integers(1, 3, n).astype(np.uint8)
    las.number_of_returns = np.full(n, 2, np.uint8)
    if point_format in (2, 3, 5, 7, 8, 10):
        for c in ("red", "green", "blue"):
            las[c] = rng.integers(0, rgb_max + 1, n).astype(np.uint16)
    las.write(path)
    return las


def scenes_of(dst: Path) -> dict[str, dict[str, np.ndarray]]:
    return {
        str(p.relative_to(dst)): read_scene(p, mmap=False)
        for p in sorted(dst.glob("*/*"))
        if p.is_dir() and not p.parent.name.startswith(".")
    }


@pytest.mark.parametrize("suffix", ["las", "laz"])
def test_labels_features_and_partition_point_by_point(tmp_path: Path, suffix: str) -> None:
    las = make_tile(tmp_path / "raw" / f"tile.{suffix}")
    counts = prepare(tmp_path / "raw", tmp_path / "out", block_size=50)
    # blocks sit on the world grid of 50 m squares, numbered from the tile's first square
    world = np.stack([las.x, las.y, las.z], 1)
    cells = np.floor(world[:, :2] / 50).astype(int)
    expected_blocks = {f"tile/block_{i}_{j}" for i, j in np.unique(cells - cells.min(0), axis=0)}
    assert counts["prepared"] == 1 and counts["scenes"] == len(expected_blocks) == 9
    scenes = scenes_of(tmp_path / "out")
    assert set(scenes) == expected_blocks
    index = np.concatenate([s["point_index"] for s in scenes.values()])
    assert np.array_equal(np.sort(index), np.arange(len(las.points)))  # each point exactly once

    expected = load_class_map("asprs").apply(np.asarray(las.classification))
    for name, s in scenes.items():
        idx = s["point_index"]
        assert np.array_equal(s["segment"], expected[idx])
        meta = json.loads((tmp_path / "out" / name / "meta.json").read_text())
        # relative positions survive the float32 cast to well under 1 mm
        back = s["coord"].astype(np.float64) + np.array(meta["offset"])
        assert np.abs(back - world[idx]).max() < 1e-4
        assert s["coord"].dtype == np.float32 and (s["coord"][:, :2] >= 0).all()
        assert (s["coord"][:, :2] < 50).all()
        assert np.allclose(s["color"], np.stack([las.red, las.green, las.blue], 1)[idx] / 65535)
        p99 = np.percentile(np.asarray(las.intensity), 99)  # of the whole tile, not the block
        strength = np.clip(np.asarray(las.intensity)[idx] / p99, 0, 2)
        assert np.allclose(s["strength"][:, 0], strength)
        assert s["returns"].shape == (len(idx), 2) and s["hag"].shape == (len(idx), 5)
        assert s["geom"].shape == (len(idx), 4) and (s["geom"] >= 0).all()
        # the recorded keyword options of las_features rebuild every array from the raw file,
        # read as pointseg-predict reads it
        raw = read_points(meta["source"], format="las", las=meta["feature_options"])
        for key in [k for k in ("hag", "strength", "returns", "geom", "color") if k in raw]:
            assert np.array_equal(s[key], raw[key][idx]), key
    # asprs map: 1 unclassified and 7 noise are ignored, 3 -> low_vegetation, 6 -> building
    assert set(np.unique(expected)) == {-1, 0, 1, 3, 4}


def test_precision_at_1e6_offsets(tmp_path: Path) -> None:
    las = make_tile(tmp_path / "t.las", n=500, extent=(40.0, 40.0))
    prepare(tmp_path / "t.las", tmp_path / "out", block_size=0)
    s = read_scene(tmp_path / "out" / "t" / "block_0_0", mmap=False)
    # world differences from the stored integers (exact), against float32 local differences
    raw = np.stack([las.X, las.Y, las.Z], 1).astype(np.int64)[s["point_index"]]
    exact = (raw - raw[0]) * 0.001
    local = s["coord"].astype(np.float64) - s["coord"][0].astype(np.float64)
    assert np.abs(local - exact).max() < 1e-3 * 0.1  # 1 mm resolution kept tenfold


def test_overlap_and_x_median_split(tmp_path: Path) -> None:
    las = make_tile(tmp_path / "t.laz", n=3000)
    x = np.asarray(las.x)
    prepare(tmp_path / "t.laz", tmp_path / "out", block_size=30, overlap=10, split_by="x_median")
    scenes = scenes_of(tmp_path / "out")
    train = [s for k, s in scenes.items() if k.startswith("train/")]
    val = [s for k, s in scenes.items() if k.startswith("val/")]
    west = np.flatnonzero(x < np.median(x))
    train_idx = np.concatenate([s["point_index"] for s in train])
    val_idx = np.concatenate([s["point_index"] for s in val])
    assert np.array_equal(np.unique(train_idx), west)  # overlap repeats, never crosses the line
    assert len(train_idx) > len(west)
    assert np.array_equal(np.sort(val_idx), np.setdiff1d(np.arange(len(x)), west))  # once each


def test_block_members_core_partition() -> None:
    xy = np.random.default_rng(1).uniform(0, 100, (5000, 2))
    plain = block_members(xy, block_size=25)
    assert sum(len(r) for r in plain.values()) == 5000 and len(plain) == 16
    wide = block_members(xy, block_size=25, overlap=5)
    assert set(wide) == set(plain)
    for key, rows in wide.items():
        assert set(plain[key]) <= set(rows)
        lo = np.array(key) * 25 - 5
        assert ((xy[rows] >= lo) & (xy[rows] < lo + 35)).all()


def test_rgb_scale_detection_and_missing_color(tmp_path: Path) -> None:
    eight = make_tile(tmp_path / "raw" / "eight.las", rgb_max=255, n=300)
    make_tile(tmp_path / "raw" / "nocolor.las", point_format=1, n=300)
    prepare(tmp_path / "raw", tmp_path / "out", block_size=0)
    s = read_scene(tmp_path / "out" / "eight" / "block_0_0", mmap=False)
    assert np.allclose(s["color"], np.stack([eight.red, eight.green, eight.blue], 1) / 255)
    plain = read_scene(tmp_path / "out" / "nocolor" / "block_0_0", mmap=False)
    assert "color" not in plain
    with pytest.raises(KeyError, match="'color'"):
        Voxelize(voxel_size=1.0, feat_keys=["color"])(plain)


def test_class_maps_and_unknown_codes(tmp_path: Path) -> None:
    las = make_tile(tmp_path / "t.las", n=400, codes=(1, 2, 64), point_format=6)  # LAS 1.4
    codes = np.asarray(las.classification)
    with pytest.raises(PrepareError, match=r"t\.las.*64"):
        prepare(tmp_path / "t.las", tmp_path / "a", class_map="{ground: [2], other: [1]}")
    (tmp_path / "map.json").write_text(json.dumps({"ground": [2], "other": [1]}))
    prepare(
        tmp_path / "t.las", tmp_path / "b", class_map=str(tmp_path / "map.json"), unknown="other"
    )
    s = read_scene(tmp_path / "b" / "t" / "block_0_0", mmap=False)
    assert np.array_equal(s["segment"], np.where(codes[s["point_index"]] == 2, 0, 1))
    (tmp_path / "map.yaml").write_text("classes: {ground: [2]}\nunknown: ignore\n")
    prepare(tmp_path / "t.las", tmp_path / "c", class_map=str(tmp_path / "map.yaml"))
    s = read_scene(tmp_path / "c" / "t" / "block_0_0", mmap=False)
    assert np.array_equal(s["segment"], np.where(codes[s["point_index"]] == 2, 0, -1))
    with pytest.raises(PrepareError, match="listed twice"):
        prepare(tmp_path / "t.las", tmp_path / "d", class_map="{a: [2], b: [2]}")


@pytest.mark.parametrize("suffix", ["las", "laz"])
def test_damaged_and_empty_tiles(tmp_path: Path, suffix: str) -> None:
    make_tile(tmp_path / f"good.{suffix}", n=500)
    data = (tmp_path / f"good.{suffix}").read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / f"cut.{suffix}").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(PrepareError, match=f"cut.{suffix}"):
        prepare(tmp_path / "bad", tmp_path / "out")
    if suffix == "las":  # cut on a record boundary: laspy alone would read fewer points
        with laspy.open(tmp_path / "good.las") as f:
            start, size = f.header.offset_to_point_data, f.header.point_format.size
        (tmp_path / "bad" / "cut.las").write_bytes(data[: start + 100 * size])
        with pytest.raises(PrepareError, match="truncated"):
            prepare(tmp_path / "bad", tmp_path / "out2")


@pytest.mark.parametrize("suffix", ["las", "laz"])
def test_a_0_point_tile_is_named_skipped_and_counted(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    make_tile(tmp_path / "raw" / f"good.{suffix}", n=500)
    empty = laspy.LasData(laspy.LasHeader(point_format=1, version="1.2"))
    empty.write(tmp_path / "raw" / f"none.{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw UserWarning inside the progress bar
        prepare_main(["las", f"src={tmp_path / 'raw'}", f"dst={tmp_path / 'out'}"])
    out, err = capsys.readouterr()
    (line,) = [x for x in err.splitlines() if "none." in x]
    assert line == f"skipping {tmp_path / 'raw' / f'none.{suffix}'}: it holds 0 points"
    assert f"0-point tile(s) skipped: {tmp_path / 'raw' / f'none.{suffix}'}" in out
    assert "'empty': 1" in out and "'prepared': 1" in out
    assert not (tmp_path / "out" / "none").exists() and (tmp_path / "out" / "good").is_dir()


def test_unlisted_codes_stop_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docs' recipe (asprs map, unknown: error) on tiles of which the second holds IGN's
    code 64: one line naming it, no half-prepared dst; the fixed command is not refused."""
    make_tile(tmp_path / "raw" / "train" / "a.laz", n=600, codes=(2, 5, 6))
    make_tile(tmp_path / "raw" / "train" / "b.laz", n=600, codes=(2, 6, 64), point_format=6)
    make_tile(tmp_path / "raw" / "val" / "c.laz", n=600, codes=(2, 64), point_format=6, seed=2)
    args = ["las", f"src={tmp_path / 'raw'}", f"dst={tmp_path / 'out'}", "split_by=folder"]
    with pytest.raises(SystemExit) as stop:
        prepare_main(args)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "b.laz: 64 (" in err and "c.laz: 64 (" in err and "a.laz" not in err
    assert "unknown=ignore" in err and not (tmp_path / "out").exists()
    prepare_main([*args, "unknown=ignore"])  # not "prepared with other options"
    assert sorted(p.name for p in (tmp_path / "out" / ".done").iterdir()) == ["a", "b", "c"]


def test_a_tile_failing_mid_write_leaves_none_of_its_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pointseg.prepare.las_blocks as las_blocks

    make_tile(tmp_path / "raw" / "a.las", n=800)
    dst = tmp_path / "out"
    prepare(tmp_path / "raw", dst, block_size=40)
    make_tile(tmp_path / "raw" / "b.las", n=800, seed=1)
    calls: list[Path] = []

    def failing(folder: Path, *args, **kwargs) -> None:
        calls.append(folder)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(folder, *args, **kwargs)

    real_write = las_blocks.write_scene
    monkeypatch.setattr(las_blocks, "write_scene", failing)
    with pytest.raises(OSError, match="disk full"):
        prepare(tmp_path / "raw", dst, block_size=40)
    assert not (dst / "b").exists() and not (dst / ".done" / "b").exists()
    assert (dst / ".done" / "a").is_dir()  # the finished tile stays
    monkeypatch.setattr(las_blocks, "write_scene", real_write)
    assert prepare(tmp_path / "raw", dst, block_size=40)["prepared"] == 1


def test_real_ign_tiles_with_code_64_stop_before_writing(tmp_path: Path) -> None:
    ign = SHARED_DATA / "real" / "ign"
    if not ign.is_dir():
        pytest.skip(f"{ign} is absent (the shared real data is not here)")
    with pytest.raises(PrepareError, match="77055_627755.*64 \\(113 points\\)"):
        prepare(ign, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rerun_skips_and_refuses_other_options(tmp_path: Path) -> None:
    make_tile(tmp_path / "raw" / "a.las", n=800)
    make_tile(tmp_path / "raw" / "b.laz", n=800, seed=1)
    dst = tmp_path / "out"
    assert prepare(tmp_path / "raw", dst, workers=2)["prepared"] == 2
    assert prepare(tmp_path / "raw", dst)["skipped"] == 2
    # an interrupted tile: its marker and one block are missing; only that block is rewritten
    kept = dst / "a" / "block_0_0" / "coord.npy"
    before = kept.stat().st_mtime_ns
    shutil.rmtree(dst / ".done" / "a")
    shutil.rmtree(dst / "a" / "block_1_1")
    assert prepare(tmp_path / "raw", dst)["prepared"] == 1
    assert (dst / "a" / "block_1_1").is_dir() and kept.stat().st_mtime_ns == before
    with pytest.raises(PrepareError, match="--overwrite"):
        prepare(tmp_path / "raw", dst, block_size=20)
    counts = prepare(tmp_path / "raw", dst, block_size=0, overwrite=True)
    assert counts["prepared"] == 2 and sorted(p.name for p in (dst / "a").iterdir()) == [
        "block_0_0"
    ]


def test_hag_is_height_above_the_local_minimum() -> None:
    xy = np.array([[0.5, 0.5], [1.5, 0.5], [8.5, 0.5], [9.5, 0.5]])
    z = np.array([10.0, 13.0, 2.0, 7.0])
    hag = height_above_local_min(np.c_[xy, z], cell=1.0, radii=[1.0, 0.0, 20.0])
    assert np.allclose(hag[:, 0], [0.0, 3.0, 0.0, 5.0])
    assert np.allclose(hag[:, 1], 0.0)  # each point alone in its cell
    assert np.allclose(hag[:, 2], z - 2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hag_sparse_grid_equals_the_dense_grid(monkeypatch, dtype) -> None:
    """The occupied-cells path gives the dense grid's heights bit for bit: dense patches,
    lone points, gaps wider than a window, chunk anchors, several cell sizes."""
    import pointseg.io.hag as las

    rng = np.random.default_rng(0)
    for trial in range(12):
        n = int(rng.integers(1, 1500))
        xy = rng.uniform(0, float(rng.choice([5, 60, 400])), (n, 2))
        xy[: n // 3] = rng.uniform(0, 8, (n // 3, 2))  # a dense patch in a sparse field
        xyz = np.c_[xy, rng.normal(0, 5, n)].astype(dtype)
        cell = float(rng.choice([0.7, 1.0, 2.0]))
        anchor = None if trial % 2 else xyz[:, :2].min(0) - 3
        radii = [0.0, 1.0, 5.0, 15.0, 60.0]
        monkeypatch.setattr(las, "DENSE_HAG_FILL", 10**12)
        dense = height_above_local_min(xyz, cell=cell, radii=radii, anchor=anchor)
        monkeypatch.setattr(las, "DENSE_HAG_FILL", 0)
        monkeypatch.setattr(las, "DENSE_HAG_CELLS", 0)
        sparse = height_above_local_min(xyz, cell=cell, radii=radii, anchor=anchor)
        np.testing.assert_array_equal(sparse.view(np.uint32), dense.view(np.uint32))


def test_hag_of_a_sparse_tile_follows_its_points() -> None:
    """1,000 points over 4 x 4 km at 1 m cells (16 M cells in the box): the occupied cells'
    path, in well under a second (the dense grid took tens of seconds and a gigabyte)."""
    import time

    rng = np.random.default_rng(1)
    xyz = np.c_[rng.uniform(0, 4000, (1000, 2)), rng.normal(100, 5, 1000)]
    t0 = time.perf_counter()
    hag = height_above_local_min(xyz, cell=1.0, radii=[2.0, 5.0, 15.0, 30.0, 60.0])
    assert time.perf_counter() - t0 < 2.0
    assert hag.shape == (1000, 5) and (hag >= 0).all() and (hag[:, 0] == 0).mean() > 0.99


def test_cli_inline_class_map_and_folder_split(tmp_path: Path) -> None:
    make_tile(tmp_path / "raw" / "train" / "a.las", n=300, codes=(1, 2))
    make_tile(tmp_path / "raw" / "val" / "sub" / "b.las", n=300, codes=(1, 2), seed=3)
    prepare_main(
        ["las", f"src={tmp_path / 'raw'}", f"dst={tmp_path / 'out'}", "split_by=folder",
         "class_map={ground: [2], other: [1]}", "block_size=40", "geometry_k=8"]
    )  # fmt: skip
    assert len(list((tmp_path / "out" / "train").glob("a_block_*"))) > 1  # training: blocks
    (val,) = (tmp_path / "out" / "val").iterdir()  # an evaluation tile: whole, named after it
    assert val.name == "b" and len(np.load(val / "point_index.npy")) == 300
    meta = json.loads((val / "meta.json").read_text())
    assert meta["feature_options"]["geometry_k"] == 8 and meta["block_size"] == 0


@pytest.mark.parametrize(
    ("name", "counts"),
    [("4_6_crop.las", {0: 9_003, 1: 14_872}), ("autzen_trim.laz", {0: 26_107, 1: 83_893})],
)
def test_real_tiles(tmp_path: Path, name: str, counts: dict[int, int]) -> None:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared sample data is not here)")
    prepare(path, tmp_path / "out", class_map="ground_other", block_size=50)
    scenes = scenes_of(tmp_path / "out")
    segment = np.concatenate([s["segment"] for s in scenes.values()])
    assert dict(zip(*np.unique(segment, return_counts=True), strict=True)) == counts
    has_color = ["color" in s for s in scenes.values()]
    assert all(has_color) if name.startswith("autzen") else not any(has_color)  # 4_6: RGB all 0


def test_experiment_runs_on_a_fixture(compose_cfg, tmp_path: Path) -> None:
    make_tile(tmp_path / "t.las", n=1500, codes=(1, 2))
    prepare(
        tmp_path / "t.las", tmp_path / "data" / "las_4_6_crop", split_by="x_median",
        class_map="ground_other", block_size=0, hag_radius="5,15,30",
    )  # fmt: skip
    cfg = compose_cfg(
        "train", ["experiment=las_4_6_crop", "debug=fdr", f"paths.data_dir={tmp_path / 'data'}"]
    )
    train(cfg)  # one train and one val batch through the experiment's real data pipeline


@pytest.mark.slow
def test_4_6_crop_east_half_reaches_095(compose_cfg, tmp_path: Path) -> None:
    """The documented result: trained on the west half, every east point scored, >= 0.95."""
    path = SHARED_DATA / "4_6_crop.las"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared sample data is not here)")
    prepare(
        path, tmp_path / "data" / "las_4_6_crop", split_by="x_median", class_map="ground_other",
        block_size=0, hag_radius="5,15,30",
    )  # fmt: skip
    cfg = compose_cfg(
        "train",
        ["experiment=las_4_6_crop", f"paths.data_dir={tmp_path / 'data'}", "logger=csv",
         "callbacks.progress_bar.refresh_rate=0"],
    )  # fmt: skip
    result = train(cfg)
    ecfg = compose_cfg("eval", [f"ckpt_path={result['best_ckpt']}"])
    ecfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(ecfg)
    assert sum(map(sum, out["confusion_matrix"])) == 11_939  # every point of the east half
    assert out["val/miou"] >= 0.95, out


def test_generic_data_config_runs_on_default_preparation(compose_cfg, tmp_path: Path) -> None:
    make_tile(tmp_path / "raw" / "train" / "a.laz", n=400)
    make_tile(tmp_path / "raw" / "val" / "b.laz", n=200, seed=5)
    prepare(tmp_path / "raw", tmp_path / "data" / "las", split_by="folder", overlap=10)
    cfg = compose_cfg("train", ["data=las", "debug=fdr", f"paths.data_dir={tmp_path / 'data'}"])
    # in_channels matches the default arrays: hag (5) + strength (1) + returns (2) + geom (4)
    train(cfg)


def test_points_on_the_closing_grid_line_join_the_last_block() -> None:
    """A survey tile spans [x0, x0 + 50] with points on both edges: 50-unit blocks give one
    block, not a block and slivers of the few points at x = 50 or y = 50."""
    from pointseg.prepare.las import block_members

    rng = np.random.default_rng(0)
    xy = np.r_[rng.uniform(0, 50, (500, 2)), [[50.0, 10.0], [20.0, 50.0], [50.0, 50.0]]]
    assert {k: len(v) for k, v in block_members(xy, block_size=50).items()} == {(0, 0): 503}
    wide = block_members(xy, block_size=50, overlap=5)
    assert list(wide) == [(0, 0)] and len(wide[(0, 0)]) == 503
    # a tile that really goes on past the grid line gets its second block, from x = 50 on
    more = block_members(np.r_[xy, [[50.5, 3.0]]], block_size=50)
    assert sorted(more) == [(0, 0), (1, 0)] and more[(1, 0)].tolist() == [500, 502, 503]
