"""The benchmark suite runs end to end on tiny sizes (figures themselves come from make bench)."""

from __future__ import annotations

import cProfile
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks import report  # noqa: E402
from benchmarks.core import Section, machine, room_batch, train_step_fn  # noqa: E402
from benchmarks.registry import SECTIONS  # noqa: E402


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), *args], capture_output=True, text=True
    )


def test_voxelize_row_times_every_peer() -> None:
    from benchmarks.voxelize import voxelize_row

    row = voxelize_row(20_000, 0.05)
    for name in ("pointseg", "numpy", "spconv"):
        assert row[f"{name}_s"] > 0 and row[f"{name}_mpts"] > 0
    peers = [row[f"{k}_mpts"] for k in ("numpy", "spconv", "open3d") if f"{k}_mpts" in row]
    # both sides are rounded to 2 decimals in the row: allow that much besides 2 %
    expected = row["pointseg_mpts"] / max(peers)
    assert row["speedup_vs_fastest_peer"] == pytest.approx(expected, rel=0.02, abs=0.006)
    assert len(row["all_times_s"]["pointseg"]) == 5


def test_dense_network_mirrors_the_sparse_plan() -> None:
    import torch
    from benchmarks.dense import DenseUNet

    from pointseg.models.sparse_unet import spunet_small

    sparse = spunet_small(4, 9)
    dense = DenseUNet(sparse)
    with torch.no_grad():
        out = dense.eval()(torch.zeros((1, 4, 16, 16, 16)))
    assert out.shape == (1, 9, 16, 16, 16)
    # same plan: the dense convs hold as many weights as the sparse ones (kernels k^3 each)
    n_sparse = sum(p.numel() for p in sparse.parameters())
    n_dense = sum(p.numel() for p in dense.parameters())
    assert n_dense == n_sparse


def test_scaling_fit_and_report(tmp_path: Path) -> None:
    from benchmarks.scaling import scaling

    res = scaling([0.5, 0.35], rooms=1, room_counts=[1, 2], room_voxel=0.4)
    assert [r["voxels"] for r in res["rows"]] == sorted(r["voxels"] for r in res["rows"])
    assert isinstance(res["slope"], float)
    by_rooms = res["by_rooms"]["rows"]
    assert [r["rooms"] for r in by_rooms] == [1, 2]
    assert by_rooms[1]["voxels"] > by_rooms[0]["voxels"]
    run = {"quick": True, "date": "d", "machine": machine(), "scaling": res}
    md = report.markdown(run, SECTIONS)
    assert md.startswith("# pointseg benchmarks")
    assert "log-log slope" in md and f"{res['rows'][0]['voxels']:,}" in md
    assert "more rooms" in md and "Voxelizer" not in md  # only the sections that ran
    pytest.importorskip("matplotlib")
    assert report.plots(run, SECTIONS, tmp_path) == ["scaling.png"]
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["scaling.png"]  # no temporary left


def test_every_section_is_registered_once_with_its_own_name() -> None:
    assert list(SECTIONS) == ["voxelize", "dense", "o3dml", "threads", "inference", "scaling",
                              "gpu"]  # fmt: skip
    for name, section in SECTIONS.items():
        assert isinstance(section, Section) and section.name == name and section.summary


def test_help_lists_every_section() -> None:
    proc = run_bench("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SECTIONS:
        assert f"  {name} " in proc.stdout
    assert "spconv's PointToVoxel" in proc.stdout


def test_cli_refuses_unknown_sections(tmp_path: Path) -> None:
    proc = run_bench("--only", "voxelise", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "unknown section" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_writes_its_report_and_figures(tmp_path: Path) -> None:
    """The gpu section on a CPU machine: the whole loop (run, markdown, plots, files) without
    timing anything; with CUDA it would time the real thing, so it is skipped there."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the gpu section would run for real")
    proc = run_bench("--only", "gpu", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["gpu"] == {"skipped": "no CUDA device"} and "voxelize" not in res
    md = (tmp_path / "results.md").read_text()
    assert "skipped: no CUDA device" in md and md.strip() in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]


def test_thread_worker_times_one_configuration() -> None:
    from benchmarks.threads import thread_run

    from pointseg.threads import available_cpus

    seconds, voxels, threads = thread_run("predict", "1", 1)
    assert seconds > 0 and voxels == len(room_batch(2, 0.05)[1]) and threads == 1
    seconds, _, threads = thread_run("predict", "fixed", 1)
    assert seconds > 0 and threads == available_cpus()
    with pytest.raises(RuntimeError, match="kind must be"):
        thread_run("train", "1", 1)
    with pytest.raises(RuntimeError, match="mode must be"):
        thread_run("predict", "2", 1)


def test_inference_checkpoint_loads_without_trust(tmp_path: Path) -> None:
    from benchmarks.inference import untrained_checkpoint

    from pointseg.checkpoint import build_module, load_checkpoint

    path = untrained_checkpoint(tmp_path / "bench.ckpt")
    ckpt = load_checkpoint(path)  # weights-only: refuses pickled objects
    assert set(ckpt["pointseg_config"]) == {"data", "model"}
    build_module(ckpt)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.ckpt"]


def test_allocator_calls_are_counted_without_patching_spconv() -> None:
    from benchmarks.gpu_step import allocator_stats
    from spconv.pytorch import cppcore

    from pointseg.models.sparse_unet import spunet_small
    from pointseg.sparse import use_backend

    before = {n: getattr(cppcore.TorchAllocator, n) for n in ("empty", "zeros")}
    feat, idx, _ = room_batch(1, 0.3)
    step = train_step_fn(spunet_small(4, 9), feat, idx, 1, 9)
    counts = {}
    for backend in ("spconv", "pointseg"):
        with use_backend(backend):
            prof = cProfile.Profile()
            prof.enable()
            step()
            prof.disable()
        counts[backend] = allocator_stats(prof)
    assert counts["spconv"][0] > 0 and counts["spconv"][1] > 0  # spconv's C++ asks Python
    assert counts["pointseg"] == (0, 0.0)  # pointseg's own CPU kernels allocate in torch
    assert before == {n: getattr(cppcore.TorchAllocator, n) for n in before}
