"""The benchmark suite runs end to end on tiny sizes (figures themselves come from make bench)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pointseg_bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_voxelize_row_times_every_peer(bench) -> None:
    row = bench._voxelize_row(20_000, 0.05)
    for name in ("pointseg", "numpy", "spconv"):
        assert row[f"{name}_s"] > 0 and row[f"{name}_mpts"] > 0
    peers = [row[f"{k}_mpts"] for k in ("numpy", "spconv", "open3d") if f"{k}_mpts" in row]
    # both sides are rounded to 2 decimals in the row: allow that much besides 2 %
    expected = row["pointseg_mpts"] / max(peers)
    assert row["speedup_vs_fastest_peer"] == pytest.approx(expected, rel=0.02, abs=0.006)


def test_dense_network_mirrors_the_sparse_plan(bench) -> None:
    import torch

    from pointseg.models.sparse_unet import spunet_small

    sparse = spunet_small(4, 9)
    dense = bench.DenseUNet(sparse)
    with torch.no_grad():
        out = dense.eval()(torch.zeros((1, 4, 16, 16, 16)))
    assert out.shape == (1, 9, 16, 16, 16)
    # same plan: the dense convs hold as many weights as the sparse ones (kernels k^3 each)
    n_sparse = sum(p.numel() for p in sparse.parameters())
    n_dense = sum(p.numel() for p in dense.parameters())
    assert n_dense == n_sparse


def test_scaling_fit_and_report(bench, tmp_path: Path, monkeypatch) -> None:
    res = bench.bench_scaling([0.5, 0.35], rooms=1, room_counts=[1, 2], room_voxel=0.4)
    assert [r["voxels"] for r in res["rows"]] == sorted(r["voxels"] for r in res["rows"])
    assert isinstance(res["slope"], float)
    by_rooms = res["by_rooms"]["rows"]
    assert [r["rooms"] for r in by_rooms] == [1, 2] and by_rooms[1]["voxels"] > by_rooms[0][
        "voxels"
    ]
    report = {"quick": True, "date": "d", "machine": bench.machine(), "scaling": res}
    md = bench.markdown(report)
    assert "log-log slope" in md and f"{res['rows'][0]['voxels']:,}" in md
    assert "more rooms" in md
    pytest.importorskip("matplotlib")
    assert bench._plots(report, tmp_path) == ["scaling.png"]
    assert (tmp_path / "scaling.png").stat().st_size > 1000


def test_cli_refuses_unknown_sections(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--only", "voxelise"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown section" in proc.stderr
    assert not list(tmp_path.iterdir())
