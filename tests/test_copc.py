"""COPC in and out on the real COPC files of ../shared/data/copc: a data=las model labels a COPC
file into a COPC copy with the input's octree (copclib), streamed labels equal whole-file
labels, a COPC file in a folder of LAZ tiles is one more tile, a failure while writing one
file's outputs is a per-file failure under skip_errors, and without copclib the copy is plain
LAZ (the bounded query is tests/test_survey.py::test_copc_bounds)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pointseg.predict import predict
from pointseg.segmenter import RECIPE_KEY, FeatureRecipe
from tests.conftest import TINY_MODEL, compose_config
from tests.test_journey import _airborne_tile
from tests.test_survey import BLOCKS, COPC_DIR, _args, _run

pytestmark = pytest.mark.slow
LONE_STAR = COPC_DIR / "lone-star.copc.laz"
SPARSE = COPC_DIR / "1.2-with-color.copc.laz"
# short hag radii and few neighbours: a streamed chunk's context margin (block reach + the
# largest radius) stays small and the features cheap, so the 518,862 points run in seconds
LAS = {"hag_cell": 1.0, "hag_radii": [2.0, 5.0], "geometry_k": 8}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained tiny data=las model (2 hag radii, geom, strength, returns)."""
    import hydra

    root = tmp_path_factory.mktemp("ckpt")
    cfg = compose_config("train", ["data=las", "data.feature_widths.hag=2", *TINY_MODEL], root)
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model)
    plain = OmegaConf.to_container(cfg, resolve=True)
    recipe = FeatureRecipe.from_data_config(plain["data"], reader={"las": LAS})
    path = root / "las.ckpt"
    torch.save({"state_dict": module.state_dict(), "pointseg_config": plain,
                RECIPE_KEY: recipe.to_dict()}, path)  # fmt: skip
    return path


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent (the real COPC samples of ../shared/data/copc)")
    pytest.importorskip("copclib", reason="COPC output needs copclib (pip install pointseg[copc])")
    return path


def _nodes(path: Path) -> list[tuple[str, int]]:
    """(key, point count) of every node, in file order."""
    import copclib

    reader = copclib.FileReader(str(path))
    nodes = [(str(n.key), int(n.point_count)) for n in sorted(reader.GetAllNodes(),
                                                              key=lambda n: n.offset)]  # fmt: skip
    reader.Close()
    return nodes


def _same_octree_new_classes(src: Path, dst: Path, labels: np.ndarray) -> None:
    """``dst`` is ``src``'s COPC octree point for point, classification = labels."""
    import laspy

    assert _nodes(dst) == _nodes(src)  # same keys, same counts, same order of chunks
    a, b = laspy.read(src), laspy.read(dst)  # file order = node by node
    for dim in a.point_format.dimension_names:
        if dim != "classification":
            np.testing.assert_array_equal(np.asarray(b[dim]), np.asarray(a[dim]), err_msg=dim)
    np.testing.assert_array_equal(np.asarray(b.classification), labels)
    with laspy.CopcReader.open(dst) as reader:
        assert len(reader.query()) == len(a.x)
    ha, hb = a.header, b.header
    np.testing.assert_array_equal(hb.scales, ha.scales)
    np.testing.assert_array_equal(hb.offsets, ha.offsets)
    assert (hb.point_format.id, hb.version, hb.point_count) == (
        ha.point_format.id, ha.version, ha.point_count)  # fmt: skip
    from pointseg.io.copc import header_wkt

    assert header_wkt(hb) == header_wkt(ha) != ""


def test_copc_in_copc_out_streamed_and_resumed(ckpt: Path, tmp_path: Path) -> None:
    """The issue's done-when: pointseg-predict of a data=las model on lone-star.copc.laz (518,862
    points, 15 nodes) writes lone-star.copc.laz with the input's octree; a second run skips
    it; the file streamed in 32 m chunks gets the same labels and the same COPC copy."""
    src = _need(LONE_STAR)
    out = tmp_path / "whole"
    args = _args(ckpt, src, out, *BLOCKS, "asprs_map=index", "write_ply=false")
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    labels = np.load(out / "lone-star.copc.labels.npy")
    assert len(labels) == 518_862 and len(np.unique(labels)) > 1
    copc = out / "lone-star.copc.laz"
    _same_octree_new_classes(src, copc, labels)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("predict")) == [
        "lone-star.copc.labels.npy", "lone-star.copc.laz"]  # fmt: skip
    stamp = copc.stat().st_mtime_ns
    again = predict(compose_config("predict", args, tmp_path))
    assert again["skipped"] == [str(src)] and not again["done"]
    assert copc.stat().st_mtime_ns == stamp

    streamed = tmp_path / "streamed"
    sargs = _args(ckpt, src, streamed, *BLOCKS, "asprs_map=index", "stream.min_points=0",
                  "stream.chunk=32")  # fmt: skip
    summary = predict(compose_config("predict", sargs, tmp_path))
    assert summary["files"][0]["streamed_chunks"] >= 2
    np.testing.assert_array_equal(np.load(streamed / "lone-star.copc.labels.npy"), labels)
    _same_octree_new_classes(src, streamed / "lone-star.copc.laz", labels)


def test_copc_file_in_a_folder_of_laz_tiles(ckpt: Path, tmp_path: Path) -> None:
    """The sparse 1,065-point COPC file among LAZ tiles: labelled like them (its labels those
    of the file alone), a .copc.laz for it and .laz for the others."""
    src = _need(SPARSE)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        _airborne_tile(folder / f"t{i}.laz", seed=i, offset=(155_000.0 + 60 * i, 463_000.0, 0.0))
    (folder / src.name).symlink_to(src)
    out = tmp_path / "out"
    args = ["asprs_map=index", "write_ply=false"]
    summary = predict(compose_config("predict", _args(ckpt, folder, out, *args), tmp_path))
    assert len(summary["done"]) == 3 and not summary["failed"]
    names = sorted(p.name for p in out.glob("*.laz"))
    assert names == ["1.2-with-color.copc.laz", "t0.laz", "t1.laz"]
    labels = np.load(out / "1.2-with-color.copc.labels.npy")
    _same_octree_new_classes(src, out / "1.2-with-color.copc.laz", labels)
    alone = tmp_path / "alone"
    predict(compose_config("predict", _args(ckpt, src, alone, *args), tmp_path))
    np.testing.assert_array_equal(np.load(alone / "1.2-with-color.copc.labels.npy"), labels)
    _same_octree_new_classes(src, alone / "1.2-with-color.copc.laz", labels)


def test_a_failure_writing_one_file_is_skipped(
    ckpt: Path,
    tmp_path: Path,
    monkeypatch,
) -> None:
    """An exception while writing one file's LAS copy (as laspy's "Writing COPC is not
    supported" was) fails that file alone under skip_errors=true; without it, the run stops."""
    import pointseg.predict.run as predict_mod

    if not SPARSE.is_file():
        pytest.skip(f"{SPARSE} is absent")
    folder = tmp_path / "in"
    folder.mkdir()
    _airborne_tile(folder / "t0.laz", seed=0, offset=(155_000.0, 463_000.0, 0.0))
    (folder / SPARSE.name).symlink_to(SPARSE)
    real = predict_mod.write_las_classification

    def failing(src, dst, codes, **kw):
        if "copc" in Path(src).name:
            raise NotImplementedError("Writing COPC is not supported")
        return real(src, dst, codes, **kw)

    monkeypatch.setattr(predict_mod, "write_las_classification", failing)
    args = _args(ckpt, folder, tmp_path / "out", "write_ply=false")
    summary = predict(compose_config("predict", [*args, "skip_errors=true"], tmp_path))
    assert [Path(p).name for p in summary["done"]] == ["t0.laz"]
    assert [Path(f["input"]).name for f in summary["failed"]] == [SPARSE.name]
    assert "NotImplementedError: Writing COPC is not supported" in summary["failed"][0]["error"]
    assert not list((tmp_path / "out").glob(".*.tmp"))  # nothing half-written
    with pytest.raises(NotImplementedError):
        predict(compose_config("predict", [*args, f"output={tmp_path / 'o2'}"], tmp_path))


def test_without_copclib_a_copc_input_gets_a_plain_laz(
    ckpt: Path,
    tmp_path: Path,
    monkeypatch,
    caplog,
) -> None:
    """No copclib: a plain LAZ copy without the COPC records (laspy used to raise "Writing
    COPC is not supported" on them), one log line saying how to get COPC; once copclib is
    there, a re-run redoes that file into a .copc.laz."""
    import laspy

    import pointseg.io.copc_write as copc_write

    src = _need(SPARSE)
    out = tmp_path / "out"
    args = _args(ckpt, src, out, "asprs_map=index", "write_ply=false")
    monkeypatch.setattr(copc_write, "copc_writer_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pointseg.predict"):
        predict(compose_config("predict", args, tmp_path))
    hints = [r.getMessage() for r in caplog.records if "pip install" in r.getMessage()]
    assert len(hints) == 1 and "pointseg[copc]" in hints[0] and SPARSE.name in hints[0]
    plain = out / "1.2-with-color.laz"
    las = laspy.read(plain)
    labels = np.load(out / "1.2-with-color.copc.labels.npy")
    np.testing.assert_array_equal(np.asarray(las.classification), labels)
    kinds = [type(v).__name__ for v in [*las.header.vlrs, *las.header.evlrs]]
    assert "WktCoordinateSystemVlr" in kinds and not [k for k in kinds if "Copc" in k]
    monkeypatch.undo()
    again = predict(compose_config("predict", args, tmp_path))
    assert again["done"] == [str(src)]  # the planned outputs changed: redone
    _same_octree_new_classes(src, out / "1.2-with-color.copc.laz", labels)
    record = json.loads((out / "predict.manifest" / "1.2-with-color.copc.json").read_text())
    assert record["entry"]["outputs"]["las"].endswith(".copc.laz")
