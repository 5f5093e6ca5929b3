from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

import pointseg.prepare
from pointseg.data.datasets.scannet_meta import CLASS_NAMES_200, SPLITS_DIR, VALID_IDS_200
from pointseg.data.scenes import read_scene
from pointseg.io.mesh import vertex_normals
from pointseg.prepare.common import PrepareError
from pointseg.prepare.scannet import prepare
from tests.conftest import TINY_MODEL

# raw category -> nyu40 id, as in scannetv2-labels.combined.tsv; expected 20-class label by name
CATEGORIES = {"wall": 1, "chair": 5, "ceiling": 22, "kitchen counter": 12, "shower curtain": 28}
EXPECTED_20 = {"wall": 0, "chair": 4, "ceiling": -1, "kitchen counter": 11, "shower curtain": 15}
# segment id -> (objectId, raw category) of the scene's segGroups; segment 104 is in no group
GROUPS = {100: (1, "wall"), 101: (2, "chair"), 102: (3, "ceiling"), 103: (4, "kitchen counter")}
GRID = 12  # vertices per side of the fixture's floor mesh


def write_label_map(path: Path) -> None:
    rows = ["id\traw_category\tcategory\tcount\tnyu40id\tnyuClass"]
    for name, nyu in CATEGORIES.items():
        rows.append(f"{VALID_IDS_200[CLASS_NAMES_200.index(name)]}\t{name}\t{name}\t7\t{nyu}\tx")
    path.write_text("\n".join(rows) + "\n")


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray, faces: np.ndarray) -> None:
    vertex = np.empty(len(xyz), dtype=[(k, "f4") for k in "xyz"] + [(k, "u1") for k in
                      ("red", "green", "blue", "alpha")])  # fmt: skip
    for i, k in enumerate("xyz"):
        vertex[k] = xyz[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        vertex[k] = rgb[:, i]
    vertex["alpha"] = 255
    face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = faces
    els = [PlyElement.describe(vertex, "vertex"), PlyElement.describe(face, "face")]
    PlyData(els).write(str(path))


def make_scene(folder: Path, *, labelled: bool, seed: int) -> dict[str, np.ndarray]:
    """A flat GRID x GRID floor mesh (z = 0.5, counter-clockwise seen from +z) in 4 segments."""
    rng = np.random.default_rng(seed)
    scene = folder.name
    folder.mkdir(parents=True)
    ix, iy = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    xyz = np.stack([ix.ravel() * 0.1, iy.ravel() * 0.1, np.full(GRID * GRID, 0.5)], 1)
    rgb = rng.integers(0, 256, (GRID * GRID, 3))
    quads = [(i * GRID + j, (i + 1) * GRID + j, (i + 1) * GRID + j + 1, i * GRID + j + 1)
             for i in range(GRID - 1) for j in range(GRID - 1)]  # fmt: skip
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    write_ply(folder / f"{scene}_vh_clean_2.ply", xyz, rgb, faces)
    seg = 100 + (ix.ravel() * 5 // GRID)  # 100..104 in bands along x
    out = {"coord": xyz, "color": rgb / 255.0, "seg": seg}
    if labelled:
        (folder / f"{scene}_vh_clean_2.0.010000.segs.json").write_text(
            json.dumps({"sceneId": scene, "segIndices": seg.tolist()})
        )
        groups = [
            {"id": oid - 1, "objectId": oid, "label": name, "segments": [s, 999]}
            for s, (oid, name) in GROUPS.items()
        ]  # segment 999 is in no vertex: ignored
        (folder / f"{scene}.aggregation.json").write_text(
            json.dumps({"sceneId": scene, "segGroups": groups})
        )
    return out


@pytest.fixture
def raw(tmp_path: Path) -> tuple[Path, dict]:
    src = tmp_path / "scannet"
    scenes = {
        "scene0000_00": make_scene(src / "scans/scene0000_00", labelled=True, seed=0),  # train
        "scene0011_00": make_scene(src / "scans/scene0011_00", labelled=True, seed=1),  # val
        "scene0707_00": make_scene(src / "scans_test/scene0707_00", labelled=False, seed=2),
        "scene9999_00": make_scene(src / "scans/scene9999_00", labelled=True, seed=3),  # none
    }
    write_label_map(src / "scannetv2-labels.combined.tsv")
    return src, scenes


def expected_labels(seg: np.ndarray, table: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    segment = np.array([table[GROUPS[s][1]] if s in GROUPS else -1 for s in seg])
    instance = np.array([GROUPS[s][0] if s in GROUPS else -1 for s in seg])
    return segment, instance


def test_shipped_split_lists() -> None:
    lists = {p.stem: p.read_text().split() for p in SPLITS_DIR.glob("*.txt")}
    sizes = {k: (len(v), len(set(v))) for k, v in lists.items()}
    assert sizes == {
        "scannetv2_train": (1201, 1201),
        "scannetv2_val": (312, 312),
        "scannetv2_test": (100, 100),
    }
    assert not set(lists["scannetv2_train"]) & set(lists["scannetv2_val"])


def test_labels_normals_and_splits(raw, tmp_path: Path, caplog) -> None:
    src, scenes = raw
    dst = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="pointseg.prepare.scannet"):
        counts = prepare(src, dst)
    assert counts == {"prepared": 3, "skipped": 0, "total": 3}
    assert any("scene9999_00" in r.getMessage() for r in caplog.records)
    assert not any("no scene is in val/" in r.getMessage() for r in caplog.records)
    assert sorted(str(p.relative_to(dst)) for p in dst.glob("*/*")) == [
        "test/scene0707_00",
        "train/scene0000_00",
        "val/scene0011_00",
    ]
    for split, name in [("train", "scene0000_00"), ("val", "scene0011_00")]:
        got, exp = read_scene(dst / split / name), scenes[name]
        np.testing.assert_array_equal(got["coord"], exp["coord"].astype(np.float32))
        np.testing.assert_array_equal(got["color"], exp["color"].astype(np.float32))
        np.testing.assert_allclose(got["normal"], np.tile([0.0, 0.0, 1.0], (GRID * GRID, 1)))
        segment, instance = expected_labels(exp["seg"], EXPECTED_20)
        np.testing.assert_array_equal(got["segment"], segment)
        np.testing.assert_array_equal(got["instance"], instance)
        assert {-1, 0, 4, 11} == set(got["segment"].tolist())  # 104: unsegmented, 102: ignored
    test = read_scene(dst / "test/scene0707_00")
    assert (test["segment"] == -1).all() and (test["instance"] == -1).all()
    assert test["normal"].shape == (GRID * GRID, 3)


def test_scannet200_custom_splits_and_cli(raw, tmp_path: Path, caplog) -> None:
    src, scenes = raw
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("scene9999_00\nscene0000_00\n")
    dst = tmp_path / "out200"
    with caplog.at_level(logging.WARNING, logger="pointseg.prepare.scannet"):
        pointseg.prepare.main(
            ["scannet", f"src={src}", f"dst={dst}", "labels=scannet200", f"splits={lists}"]
        )
    assert sorted(p.name for p in (dst / "train").iterdir()) == ["scene0000_00", "scene9999_00"]
    # both rooms went to train/: said in one line, with the way to get a validation split
    said = [r.getMessage() for r in caplog.records if "val/" in r.getMessage()]
    assert len(said) == 1 and "no scene is in val/ (2 in train/)" in said[0], said
    assert "splits=<dir> holding train.txt and val.txt" in said[0]
    table = {name: CLASS_NAMES_200.index(name) for name in CATEGORIES}
    got = read_scene(dst / "train/scene9999_00")
    segment, instance = expected_labels(scenes["scene9999_00"]["seg"], table)
    np.testing.assert_array_equal(got["segment"], segment)
    np.testing.assert_array_equal(got["instance"], instance)
    assert table["ceiling"] == 35 and table["ceiling"] in got["segment"]
    assert json.loads((dst / "train/scene9999_00/meta.json").read_text())["labels"] == "scannet200"


def test_area_weighted_normals() -> None:
    # a fold: triangle A (area 0.5) in z = 0 facing +z, triangle B (area 1) in x = 0 facing +x
    xyz = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 2]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    fold = np.array([2.0, 0.0, 1.0]) / np.sqrt(5.0)  # 2 * (area 1, +x) + 2 * (area 0.5, +z)
    expected = np.array([fold, [0, 0, 1], fold, [1, 0, 0]])
    np.testing.assert_allclose(vertex_normals(xyz, faces), expected, atol=1e-6)
    lonely = vertex_normals(np.vstack([xyz, [[5, 5, 5]]]), faces)[-1]
    np.testing.assert_array_equal(lonely, [0, 0, 0])  # a vertex in no face


def test_bad_inputs_raise_naming_the_file(raw, tmp_path: Path) -> None:
    src, _ = raw
    with pytest.raises(PrepareError, match="labels=nyu12 is unknown"):
        prepare(src, tmp_path / "a", labels="nyu12")
    agg = src / "scans/scene0011_00/scene0011_00.aggregation.json"
    agg.rename(agg.with_suffix(".bak"))
    with pytest.raises(PrepareError, match=r"scene0011_00\.aggregation\.json is missing"):
        prepare(src, tmp_path / "b")
    agg.with_suffix(".bak").rename(agg)

    ply = src / "scans/scene0000_00/scene0000_00_vh_clean_2.ply"
    data = ply.read_bytes()
    ply.write_bytes(data[: len(data) - 100])  # truncated download
    with pytest.raises(PrepareError, match=r"scene0000_00_vh_clean_2\.ply"):
        prepare(src, tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.npy"))
    ply.write_bytes(data)

    segs = src / "scans/scene0000_00/scene0000_00_vh_clean_2.0.010000.segs.json"
    segs.write_text(json.dumps({"segIndices": [100, 101]}))
    with pytest.raises(PrepareError, match=r"segs\.json: segIndices has 2 entries"):
        prepare(src, tmp_path / "d")

    (src / "scannetv2-labels.combined.tsv").unlink()
    with pytest.raises(PrepareError, match=r"scannetv2-labels\.combined\.tsv does not exist"):
        prepare(src, tmp_path / "e")


def test_experiment_trains_one_epoch(raw, compose_cfg, tmp_path: Path) -> None:
    from pointseg.train import train

    src, _ = raw
    prepare(src, tmp_path / "data" / "scannet")
    cfg = compose_cfg(
        "train",
        [
            "experiment=scannet_spunet34c",
            f"paths.data_dir={tmp_path / 'data'}",
            "data.train_dataset.loop=2",
            *TINY_MODEL,
        ],
    )
    assert cfg.data.in_channels == 6 and cfg.data.voxel_size == 0.02
    assert cfg.model.optimizer.lr == 0.05 and cfg.trainer.accelerator == "cpu"
    result = train(cfg)
    assert 0.0 <= result["val/miou"] <= 1.0
