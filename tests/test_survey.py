"""Labelling a survey: 2 CPU processes give the single process's outputs, a killed run resumes
without redoing finished tiles, big tiles streamed in chunks get the whole tile's labels, and
bounds= labels just the box (COPC queried)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pointseg.predict import predict
from pointseg.predict.survey import KILL_AFTER_ENV, MANIFEST_DIR, shard
from pointseg.segmenter import RECIPE_KEY, FeatureRecipe
from tests.conftest import SHARED_DATA, TINY_MODEL, compose_config
from tests.test_journey import _airborne_tile

pytestmark = pytest.mark.slow
TILES = 8
LAS = {"hag_cell": 1.0, "hag_radii": [2.0, 5.0, 15.0, 30.0, 60.0], "intensity_scale": "p99"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained tiny data=las model (hag, strength, returns) with its feature recipe."""
    import hydra

    root = tmp_path_factory.mktemp("ckpt")
    cfg = compose_config("train", ["data=las", *TINY_MODEL], root)
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model)
    plain = OmegaConf.to_container(cfg, resolve=True)
    recipe = FeatureRecipe.from_data_config(plain["data"], reader={"las": LAS})
    path = root / "las.ckpt"
    torch.save({"state_dict": module.state_dict(), "pointseg_config": plain,
                RECIPE_KEY: recipe.to_dict()}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("survey")
    for i in range(TILES):  # uneven sizes: a few tiles get a second copy of their points
        _airborne_tile(d / f"t{i}.laz", seed=i, offset=(155_000.0 + 60 * i, 463_000.0, 0.0))
    return d


def _args(ckpt: Path, inp: Path, out: Path, *extra: str) -> list[str]:
    return [f"ckpt_path={ckpt}", f"input={inp}", f"output={out}", "progress=false", *extra]


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pointseg.predict", f"hydra.run.dir={cwd / 'run'}", *args],
        cwd=cwd, env=dict(os.environ, **(env or {})), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def _outputs(out: Path) -> dict[str, bytes | np.ndarray]:
    import laspy

    got: dict[str, bytes | np.ndarray] = {}
    for p in sorted(out.glob("t*.labels.npy")):
        got[p.name] = np.load(p)
    for p in sorted(out.glob("t*.laz")):
        las = laspy.read(p)
        got[p.name] = np.c_[las.x, las.y, las.z, las.classification]
    for p in sorted(out.glob("t*.ply")):
        got[p.name] = p.read_bytes()
    return got


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and len(a) == 3 * TILES
    for k in a:
        if isinstance(a[k], bytes):
            assert a[k] == b[k], k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def single(ckpt: Path, tiles: Path, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("single")
    summary = predict(compose_config("predict", _args(ckpt, tiles, root / "out"), root))
    assert len(summary["done"]) == TILES and not summary["skipped"] and not summary["failed"]
    labels = np.load(root / "out" / "t0.labels.npy")
    assert len(np.unique(labels)) > 1  # an untrained net still separates something
    return root / "out", _outputs(root / "out")


def test_shard_balances_points_not_files() -> None:
    shares = shard([100, 1, 1, 1, 1, 90], 2)
    assert sorted(i for s in shares for i in s) == list(range(6))
    loads = [sum([100, 1, 1, 1, 1, 90][i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= 10  # file count would give 103 against 94 at best


def test_two_cpu_processes_match_one(ckpt: Path, tiles: Path, single, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(_args(ckpt, tiles, out, "trainer=ddp_cpu", "trainer.devices=2"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _same(_outputs(out), single[1])
    summary = json.loads((out / "predict.json").read_text())
    assert len(summary["ranks"]) == 2 and all(r["points"] > 0 for r in summary["ranks"])
    assert sorted(summary["done"]) == sorted(str(p) for p in tiles.glob("*.laz"))


def test_two_nodes_over_loopback_match_one(ckpt: Path, tiles: Path, single, tmp_path: Path) -> None:
    """Two machines, played by two launches on this one: the same command with
    ``trainer.num_nodes=2``, each with its ``NODE_RANK`` and the same ``MASTER_ADDR`` and
    ``MASTER_PORT`` (gloo over the loopback), writing to one shared output folder. Together
    they label every tile once, as one process does."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    args = _args(ckpt, tiles, out, "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2")
    procs = []
    for rank in (0, 1):
        run_dir = tmp_path / f"node{rank}"
        run_dir.mkdir()
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   NODE_RANK=str(rank))  # fmt: skip
        env.pop("LOCAL_RANK", None)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pointseg.predict", f"hydra.run.dir={run_dir / 'run'}", *args],
            cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    _same(_outputs(out), single[1])
    summary = json.loads((out / "predict.json").read_text())
    assert len(summary["ranks"]) == 2 and all(r["points"] > 0 for r in summary["ranks"])


def test_killed_run_resumes_without_redoing_tiles(
    ckpt: Path, tiles: Path, single, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = _args(ckpt, tiles, out)
    killed = _run(args, tmp_path, env={KILL_AFTER_ENV: "3"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    records = sorted(p for p in (out / MANIFEST_DIR).glob("t*.json"))
    assert len(records) == 3 and not (out / "predict.json").exists()
    finished = {p.stem for p in records}
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("t*") if p.name.split(".")[0] in finished}
    resumed = _run(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "predict.json").read_text())
    assert {Path(p).stem for p in summary["skipped"]} == finished
    assert len(summary["done"]) == TILES - 3
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # not rewritten
    _same(_outputs(out), single[1])
    # a missing and a damaged output: those tiles alone are redone
    (out / "t5.ply").unlink()
    (out / "t6.labels.npy").write_bytes(b"partial")
    again = predict(compose_config("predict", args, tmp_path))
    assert sorted(Path(p).stem for p in again["done"]) == ["t5", "t6"]
    _same(_outputs(out), single[1])


def test_skip_errors_records_a_failing_tile(ckpt: Path, tiles: Path, tmp_path: Path) -> None:
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "a.laz").write_bytes((tiles / "t0.laz").read_bytes())
    (bad / "broken.laz").write_bytes((tiles / "t1.laz").read_bytes()[:500])
    args = _args(ckpt, bad, tmp_path / "out", "skip_errors=true", "write_ply=false")
    summary = predict(compose_config("predict", args, tmp_path))
    assert [Path(p).name for p in summary["done"]] == ["a.laz"]
    assert [Path(f["input"]).name for f in summary["failed"]] == ["broken.laz"]
    assert "broken.laz" in summary["failed"][0]["error"]


BLOCKS = ["inference.block_size=16", "inference.overlap=3", "inference.single_pass_max_voxels=0"]


def test_streamed_chunks_equal_the_whole_tile(ckpt: Path, tiles: Path, tmp_path: Path) -> None:
    import laspy

    tile = tiles / "t2.laz"
    whole = tmp_path / "whole"
    predict(compose_config("predict", _args(ckpt, tile, whole, *BLOCKS), tmp_path))
    streamed = tmp_path / "streamed"
    args = _args(ckpt, tile, streamed, *BLOCKS, "stream.min_points=0", "stream.chunk=16")
    summary = predict(compose_config("predict", args, tmp_path))
    assert summary["files"][0]["streamed_chunks"] >= 16  # a 60+ m tile, 16 m chunks
    np.testing.assert_array_equal(
        np.load(streamed / "t2.labels.npy"), np.load(whole / "t2.labels.npy")
    )
    a, b = laspy.read(streamed / "t2.laz"), laspy.read(whole / "t2.laz")
    np.testing.assert_array_equal(a.classification, b.classification)
    np.testing.assert_array_equal(a.x, b.x)
    assert not list(streamed.glob(".*"))  # spill folders removed


def _bounded(path: Path, ckpt: Path, out: Path, box: list[float], root: Path) -> dict:
    args = _args(ckpt, path, out, *BLOCKS, "asprs_map=index", f"bounds=[{','.join(map(str, box))}]")
    return predict(compose_config("predict", args, root))


def test_bounds_label_only_the_box(ckpt: Path, tiles: Path, tmp_path: Path) -> None:
    import laspy

    tile = tiles / "t3.laz"
    src = laspy.read(tile)
    x0, y0 = float(src.header.mins[0]), float(src.header.mins[1])
    box = [x0 + 10, y0 + 5, x0 + 30, y0 + 25]
    _bounded(tile, ckpt, tmp_path / "out", box, tmp_path)
    inside = (src.x >= box[0]) & (src.x <= box[2]) & (src.y >= box[1]) & (src.y <= box[3])
    labels = np.load(tmp_path / "out" / "t3.labels.npy")
    cut = laspy.read(tmp_path / "out" / "t3.laz")
    assert len(labels) == int(inside.sum()) == len(cut.x) > 0
    np.testing.assert_array_equal(cut.x, src.x[inside])  # file order kept
    np.testing.assert_array_equal(cut.classification, labels)


COPC_DIR = SHARED_DATA / "copc"
COPC_FILES = ["lone-star.copc.laz", "1.2-with-color.copc.laz"]


@pytest.mark.parametrize("name", COPC_FILES)
def test_copc_bounds(ckpt: Path, tmp_path: Path, name: str) -> None:
    """A real COPC file is queried for a box around its own points: exactly the points a
    filter of the whole file keeps, each written once with its label."""
    copc = COPC_DIR / name
    if not copc.is_file():
        pytest.skip(f"{copc} is absent (the real COPC samples of ../shared/data/copc)")
    import laspy

    src = laspy.read(copc)
    x, y = np.asarray(src.x), np.asarray(src.y)
    # the box spans the middle half of the points in x and y (the extent's centre can be empty:
    # a sparse file's points need not be anywhere near the middle of its bounding box)
    box = [*np.quantile(np.c_[x, y], 0.25, axis=0), *np.quantile(np.c_[x, y], 0.75, axis=0)]
    inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    assert 0 < inside.sum() < len(x)
    summary = _bounded(copc, ckpt, tmp_path / "out", [float(v) for v in box], tmp_path)
    assert summary["done"] and summary["files"][0]["points"] == int(inside.sum())
    labels = np.load(tmp_path / "out" / f"{copc.name.removesuffix('.laz')}.labels.npy")
    cut = laspy.read(next((tmp_path / "out").glob("*.laz")))
    assert len(labels) == len(cut.x) == int(inside.sum())
    np.testing.assert_array_equal(cut.classification, labels)
    want = np.c_[x[inside], y[inside], np.asarray(src.z)[inside]]
    got = np.c_[cut.x, cut.y, cut.z]
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  node order need not be file order
    np.testing.assert_array_equal(order(got), order(want))
