"""Point-cloud readers and writers: every format round-trips, damaged files name themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pointseg.io import (
    MissingFeatureError,
    PointFileError,
    check_features,
    read_ply_classes,
    read_points,
    write_labeled_ply,
    write_las_classification,
    write_npy,
)

N = 500
OFFSET = np.array([500_000.0, 4_000_000.0, 100.0])


@pytest.fixture(scope="module")
def cloud() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "xyz": np.round(rng.random((N, 3)) * 20, 3),  # mm grid: exact in LAS
        "rgb": rng.integers(0, 256, (N, 3)).astype(np.uint8),
        "label": rng.integers(0, 5, N),
        "intensity": rng.random(N).astype(np.float32),
    }


def _check(
    sample: dict, cloud: dict, *, color: bool = True, label: bool = False, offset: float = 0.0
) -> None:
    world = sample["coord"].astype(np.float64) + sample["origin"] - offset
    assert sample["coord"].dtype == np.float32 and sample["coord"].shape == (N, 3)
    np.testing.assert_allclose(world, cloud["xyz"], atol=2e-3)
    if color:
        assert sample["color"].dtype == np.float32
        np.testing.assert_allclose(sample["color"], cloud["rgb"] / 255.0, atol=1e-6)
    if label:
        np.testing.assert_array_equal(sample["segment"], cloud["label"])


def _write_ply(path: Path, cloud: dict, *, text: bool = False) -> None:
    from plyfile import PlyData, PlyElement

    v = np.empty(N, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"),
                           ("green", "u1"), ("blue", "u1"), ("intensity", "f4"),
                           ("label", "i4")])  # fmt: skip
    for i, c in enumerate("xyz"):
        v[c] = cloud["xyz"][:, i]
    for i, c in enumerate(("red", "green", "blue")):
        v[c] = cloud["rgb"][:, i]
    v["intensity"], v["label"] = cloud["intensity"], cloud["label"]
    PlyData([PlyElement.describe(v, "vertex")], text=text).write(str(path))


def _write_las(path: Path, cloud: dict, *, point_format: int = 3) -> None:
    import laspy

    header = laspy.LasHeader(point_format=point_format, version="1.2")
    header.scales, header.offsets = np.full(3, 0.001), OFFSET
    las = laspy.LasData(header)
    las.x, las.y, las.z = (cloud["xyz"] + OFFSET).T
    if point_format in (2, 3):
        rgb = cloud["rgb"].astype(np.uint16) * 257  # 16-bit colour
        las.red, las.green, las.blue = rgb.T
    las.intensity = (cloud["intensity"] * 65535).astype(np.uint16)
    las.classification = cloud["label"].astype(np.uint8)
    las.write(str(path))


@pytest.mark.parametrize("text", [False, True])
def test_ply(tmp_path: Path, cloud: dict, text: bool) -> None:
    path = tmp_path / "a.ply"
    _write_ply(path, cloud, text=text)
    s = read_points(path)
    _check(s, cloud, label=True)
    np.testing.assert_allclose(s["strength"][:, 0], cloud["intensity"])


def test_text_formats_and_columns(tmp_path: Path, cloud: dict) -> None:
    table = np.c_[cloud["xyz"], cloud["rgb"]]
    np.savetxt(tmp_path / "a.txt", table)
    _check(read_points(tmp_path / "a.txt"), cloud)
    np.savetxt(tmp_path / "b.csv", table, delimiter=",", header="x,y,z,red,green,blue", comments="")
    _check(read_points(tmp_path / "b.csv"), cloud)
    # label first, colour last: columns= says so
    np.savetxt(tmp_path / "c.xyz", np.c_[cloud["label"], table])
    s = read_points(tmp_path / "c.xyz", columns="label,x,y,z,r,g,b")
    _check(s, cloud, label=True)
    np.savetxt(tmp_path / "d.txt", np.c_[table, cloud["label"]])
    with pytest.raises(PointFileError, match=r"d\.txt.*columns="):
        read_points(tmp_path / "d.txt")  # 7 columns are ambiguous
    with pytest.raises(PointFileError, match="names 3 columns"):
        read_points(tmp_path / "d.txt", columns="x,y,z")
    (tmp_path / "e.txt").write_text("1 2 3\n4 5\n")
    with pytest.raises(PointFileError, match=r"e\.txt"):
        read_points(tmp_path / "e.txt")


def test_npy_npz_kitti(tmp_path: Path, cloud: dict) -> None:
    np.save(tmp_path / "a.npy", np.c_[cloud["xyz"], cloud["rgb"]])
    _check(read_points(tmp_path / "a.npy"), cloud)
    np.savez(
        tmp_path / "b.npz", coord=cloud["xyz"], color=cloud["rgb"] / 255, segment=cloud["label"]
    )
    _check(read_points(tmp_path / "b.npz"), cloud, label=True)
    np.c_[cloud["xyz"], cloud["intensity"]].astype("<f4").tofile(tmp_path / "c.bin")
    s = read_points(tmp_path / "c.bin")
    _check(s, cloud, color=False)
    np.testing.assert_allclose(s["strength"][:, 0], cloud["intensity"])
    (tmp_path / "d.bin").write_bytes((tmp_path / "c.bin").read_bytes()[:-6])
    with pytest.raises(PointFileError, match=r"d\.bin.*truncated"):
        read_points(tmp_path / "d.bin")


@pytest.mark.parametrize("mode", ["ascii", "binary", "binary_compressed"])
def test_pcd_written_by_open3d(tmp_path: Path, cloud: dict, mode: str) -> None:
    o3d = pytest.importorskip("open3d")
    pcd = o3d.t.geometry.PointCloud(o3d.core.Tensor(cloud["xyz"].astype(np.float32)))
    pcd.point.colors = o3d.core.Tensor((cloud["rgb"] / 255.0).astype(np.float32))
    pcd.point.intensity = o3d.core.Tensor(cloud["intensity"][:, None])
    path = tmp_path / "a.pcd"
    o3d.t.io.write_point_cloud(str(path), pcd, write_ascii=mode == "ascii",
                               compressed=mode == "binary_compressed")  # fmt: skip
    assert f"DATA {mode}".encode() in path.read_bytes()[:400]
    s = read_points(path)
    _check(s, cloud)
    np.testing.assert_allclose(s["strength"][:, 0], cloud["intensity"], atol=1e-6)


def test_pcd_truncated_binary(tmp_path: Path, cloud: dict) -> None:
    head = "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
    head += f"WIDTH {N}\nHEIGHT 1\nPOINTS {N}\nDATA binary\n"
    body = cloud["xyz"].astype("<f4").tobytes()
    (tmp_path / "ok.pcd").write_bytes(head.encode() + body)
    _check(read_points(tmp_path / "ok.pcd"), cloud, color=False)
    (tmp_path / "cut.pcd").write_bytes(head.encode() + body[: len(body) // 2])
    with pytest.raises(PointFileError, match=r"cut\.pcd.*truncated"):
        read_points(tmp_path / "cut.pcd")


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_las_recentred_in_float64(tmp_path: Path, cloud: dict, suffix: str) -> None:
    path = tmp_path / f"a{suffix}"
    _write_las(path, cloud)
    s = read_points(path, chunk_size=128)  # several chunks
    assert s["origin"][0] >= 500_000 and np.abs(s["coord"]).max() < 100  # small float32 values
    _check(s, cloud, offset=OFFSET)  # mm survive: re-centred before the float32 cast
    np.testing.assert_array_equal(s["classification"], cloud["label"])
    assert s["returns"].shape == (N, 2)


def test_las_truncated_and_not_las(tmp_path: Path, cloud: dict) -> None:
    path = tmp_path / "a.las"
    _write_las(path, cloud)
    data = path.read_bytes()
    (tmp_path / "cut.las").write_bytes(data[: len(data) - 40 * 34])
    with pytest.raises(PointFileError, match=r"cut\.las"):
        read_points(tmp_path / "cut.las")
    _write_ply(tmp_path / "fake.las", cloud)  # a PLY with the wrong extension
    with pytest.raises(PointFileError, match=r"fake\.las.*LAS"):
        read_points(tmp_path / "fake.las")
    # format= overrides the extension
    _check(read_points(tmp_path / "fake.las", format="ply"), cloud, label=True)


def test_truncated_ply_and_unknown_extension(tmp_path: Path, cloud: dict) -> None:
    _write_ply(tmp_path / "a.ply", cloud)
    data = (tmp_path / "a.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) - 1000])
    with pytest.raises(PointFileError, match=r"cut\.ply"):
        read_points(tmp_path / "cut.ply")
    (tmp_path / "a.foo").write_bytes(data)
    with pytest.raises(PointFileError, match=r"a\.foo.*format="):
        read_points(tmp_path / "a.foo")
    with pytest.raises(PointFileError, match="does not exist"):
        read_points(tmp_path / "missing.ply")


def test_missing_colour_names_file_feature_and_fix(tmp_path: Path, cloud: dict) -> None:
    _write_las(tmp_path / "grey.las", cloud, point_format=1)  # no RGB in format 1
    with pytest.raises(MissingFeatureError) as err:
        read_points(tmp_path / "grey.las", require=["color"], feat_keys=["color", "height"])
    msg = str(err.value)
    assert "grey.las" in msg and "'color'" in msg
    assert "data.feat_keys=[height] data.in_channels=1" in msg
    with pytest.raises(MissingFeatureError, match="normal"):
        check_features("x.ply", {"coord": 0}, ["normal"])


def test_nan_coordinates_are_refused(tmp_path: Path, cloud: dict) -> None:
    xyz = cloud["xyz"].copy()
    xyz[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", xyz)
    with pytest.raises(PointFileError, match=r"nan\.npy.*row 7"):
        read_points(tmp_path / "nan.npy")


def test_labeled_ply_read_back_by_plyfile_and_open3d(tmp_path: Path, cloud: dict) -> None:
    from plyfile import PlyData

    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9], [1, 2, 3]], np.uint8)
    labels = cloud["label"].astype(np.uint8)
    coord = cloud["xyz"].astype(np.float32)  # re-centred coordinates; world = coord + OFFSET
    path = write_labeled_ply(tmp_path / "p.ply", coord, labels, origin=OFFSET, colors=colors,
                             class_names=["a", "b", "c", "d", "e"], chunk_size=64)  # fmt: skip
    v = PlyData.read(str(path))["vertex"].data
    np.testing.assert_array_equal(v["label"], labels)
    np.testing.assert_array_equal(np.c_[v["red"], v["green"], v["blue"]], colors[labels])
    assert v["x"].dtype == np.float64  # georeferenced: written in double
    np.testing.assert_allclose(v["x"], cloud["xyz"][:, 0] + OFFSET[0], atol=2e-3)
    assert read_ply_classes(path) == ["a", "b", "c", "d", "e"]
    assert not list(tmp_path.glob(".*tmp"))
    o3d = pytest.importorskip("open3d")
    pcd = o3d.t.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(pcd.point["label"].numpy().reshape(-1), labels)


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_las_copy_with_classification(tmp_path: Path, cloud: dict, suffix: str) -> None:
    import laspy

    src = tmp_path / f"in{suffix}"
    _write_las(src, cloud)
    codes = (cloud["label"] + 2).astype(np.uint8)
    dst = write_las_classification(src, tmp_path / "out" / f"in{suffix}", codes, chunk_size=100)
    a, b = laspy.read(src), laspy.read(dst)
    np.testing.assert_array_equal(b.classification, codes)
    np.testing.assert_array_equal(b.red, a.red)
    np.testing.assert_allclose(b.x, a.x)
    assert b.header.are_points_compressed == (suffix == ".laz")
    with pytest.raises(PointFileError, match="overwrite"):
        write_las_classification(src, src, codes)
    with pytest.raises(ValueError, match="point format 3"):
        write_las_classification(src, tmp_path / "bad.las", np.full(N, 40, np.uint8))


def test_las_copy_of_a_box_through_a_code_table(tmp_path: Path, cloud: dict) -> None:
    """The one LAS writer: labels mapped through ``lut``, only the box's points written, in
    the order a read of the wider ``query`` box gives them; counts that do not match the
    file, and codes the point format cannot hold, are refused before anything is written."""
    import laspy

    from pointseg.io.las_file import code_counts

    src = tmp_path / "in.laz"
    _write_las(src, cloud)
    world = cloud["xyz"] + OFFSET
    box = (OFFSET[0] + 5, OFFSET[1] + 5, OFFSET[0] + 12, OFFSET[1] + 15)
    query = (box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3)
    inside = (
        (world[:, 0] >= box[0]) & (world[:, 0] <= box[2])
        & (world[:, 1] >= box[1]) & (world[:, 1] <= box[3])
    )  # fmt: skip
    labels = cloud["label"][inside].astype(np.uint8)  # class indices 0..4
    lut = np.array([2, 3, 5, 6, 9], np.uint8)
    dst = write_las_classification(
        src, tmp_path / "box.laz", labels, lut=lut, box=box, query=query, chunk_size=64
    )
    b = laspy.read(dst)
    assert len(b.points) == int(inside.sum()) and 0 < len(b.points) < N
    np.testing.assert_allclose(np.c_[b.x, b.y, b.z], world[inside], atol=2e-3)
    np.testing.assert_array_equal(b.classification, lut[labels])
    assert code_counts(dst) == dict(zip(*np.unique(lut[labels], return_counts=True), strict=True))
    with pytest.raises(ValueError, match="labels for"):
        write_las_classification(src, tmp_path / "short.las", labels)  # a box's labels, no box
    with pytest.raises(ValueError, match="point format 3"):
        write_las_classification(src, tmp_path / "big.las", cloud["label"], lut=lut + 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.laz", "in.laz"]


def test_write_npy_atomic(tmp_path: Path) -> None:
    path = write_npy(tmp_path / "x.labels.npy", np.arange(5, dtype=np.uint8))
    np.testing.assert_array_equal(np.load(path), np.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.labels.npy"]


@pytest.mark.parametrize(
    ("name", "n", "classes", "rgb"),
    [("4_6_crop.las", 23_875, {1: 14_872, 2: 9_003}, False),  # RGB fields, all 0
     ("autzen_trim.laz", 110_000, {1: 83_893, 2: 26_107}, True)],
)  # fmt: skip
def test_real_airborne_tiles(name: str, n: int, classes: dict[int, int], rgb: bool) -> None:
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real sample data lives in ../shared/data)")
    s = read_points(path, chunk_size=30_000)
    assert s["coord"].shape == (n, 3) and np.all(np.isfinite(s["coord"]))
    assert np.any(s["origin"] != 0) and np.abs(s["coord"]).max() < 1e4  # re-centred
    if rgb:
        assert s["color"].min() >= 0.0 and s["color"].max() <= 1.0 and s["color"].std() > 0.01
    else:  # empty colour fields are no colour, not black
        assert "color" not in s
        with pytest.raises(MissingFeatureError, match="all 0"):
            read_points(path, require=["color"])
    found = dict(zip(*np.unique(s["classification"], return_counts=True), strict=True))
    assert {int(k): int(v) for k, v in found.items()} == classes
