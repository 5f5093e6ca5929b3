"""Loading a checkpoint never runs code from it; what pointseg writes loads with weights only."""

from __future__ import annotations

import enum
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pointseg.callbacks import AtomicCheckpointIO
from pointseg.checkpoint import (
    UntrustedCheckpointError,
    build_module,
    load_checkpoint,
    plain,
)
from tests.conftest import TINY, compose_config

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = f"{os.system.__module__}.system"  # posix.system: the global torch names


class _Shell:
    """Unpickles as ``os.system(command)``: what a malicious checkpoint carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


class _MakeDir:
    """Unpickles as ``os.makedirs(path)``: a harmless payload whose effect a test can see."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.makedirs, (self.path,))


def _with_payload(src: Path | None, dst: Path, payload: Any) -> Path:
    """``src`` (or an empty pointseg checkpoint) with ``payload`` stored next to its entries."""
    ckpt = {"pointseg_config": {}, "state_dict": {}}
    if src is not None:
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
    torch.save({**ckpt, "x": payload}, dst)
    return dst


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """The checkpoint of the report: ``os.system('touch <marker>')`` inside, and the marker."""
    marker = tmp_path / "pwned"
    return _with_payload(None, tmp_path / "evil.ckpt", _Shell(f"touch {marker}")), marker


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Any]:
    """A tiny model trained for one epoch through ``pointseg.train.train`` (best + last)."""
    from pointseg.train import train

    root = tmp_path_factory.mktemp("trained")
    overrides = [*TINY, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1"]
    return train(compose_config("train", [*overrides, "logger=none"], root))


@pytest.fixture(scope="module")
def pruned(trained: dict[str, Any], tmp_path_factory) -> dict[str, Any]:
    """``pointseg-prune prune=magnitude`` of the trained model (dense and compressed files)."""
    from pointseg.prune.run import prune

    root = tmp_path_factory.mktemp("pruned")
    args = [f"ckpt_path={trained['best_ckpt']}", "prune.amount=0.5", "prune.sweep=[]",
            "prune.epochs=1", "report.latency_runs=1", "report.latency_warmup=0",
            "report.enabled=false", "progress=false"]  # fmt: skip
    return prune(compose_config("prune", args, root))


def _eval_miou(ckpt: Path | str, out: Path, *overrides: str) -> float:
    from pointseg.eval import evaluate

    cfg = compose_config("eval", [f"ckpt_path={ckpt}", "report.enabled=false", *overrides], out)
    return evaluate(cfg)["val/miou"]


def _run(argv: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, *argv, f"paths.root_dir={cwd}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# ---- refusing ---------------------------------------------------------------------------------
def test_loader_refuses_code_in_one_line(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(UntrustedCheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert f"the global {SYSTEM}" in msg and "trust_checkpoint=true" in msg
    assert not marker.exists()


CLI = {
    "eval": (["-m", "pointseg.eval"], "pointseg-eval"),
    "predict": (["-m", "pointseg.predict"], "pointseg-predict"),
    "prune": (["-c", "from pointseg.prune import main; main()"], "pointseg-prune"),
}


@pytest.mark.parametrize("command", sorted(CLI))
def test_commands_refuse_the_malicious_checkpoint(
    command: str, evil: tuple[Path, Path], tmp_path: Path
) -> None:
    path, marker = evil
    np.savez(tmp_path / "cloud.npz", coord=np.zeros((4, 3), np.float32))
    extra = [f"input={tmp_path / 'cloud.npz'}"] if command == "predict" else []
    argv, prog = CLI[command]
    run = _run(argv, f"ckpt_path={path}", *extra, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, run.stderr[-3000:]
    assert f"refusing to load checkpoint {path}" in lines[0] and SYSTEM in lines[0]
    assert "trust_checkpoint=true" in lines[0]
    assert "Traceback" not in run.stderr + run.stdout
    assert not marker.exists()


def test_submit_and_viz_do_not_run_it(
    evil: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    from pointseg.io import PointFileError
    from pointseg.submit_semantickitti import main as submit
    from pointseg.viz import visualize

    path, marker = evil
    monkeypatch.chdir(tmp_path)
    argv = ["pointseg-submit", f"ckpt_path={path}", f"root={tmp_path}",
            f"output={tmp_path / 'sub'}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as stop:
        submit()
    assert stop.value.code == 2
    assert f"refusing to load checkpoint {path}" in capsys.readouterr().err
    # viz reads point files, never checkpoints: handed one, it refuses it as a point file
    cfg = compose_config("viz", [f"input={path}", f"render={tmp_path / 'v.png'}"], tmp_path)
    with pytest.raises(PointFileError, match="unknown extension '.ckpt'"):
        visualize(cfg)
    assert not marker.exists()


def test_old_checkpoint_with_a_pickled_object_needs_the_opt_in(tmp_path: Path) -> None:
    """Checkpoints of 72cc6aa..edd6fdd keyed callback state by a bound method (a method
    ``state_key``), which pickles as ``getattr(<the callback>, 'state_key')``."""
    path = tmp_path / "old.ckpt"
    torch.save({"pointseg_config": {}, "state_dict": {},
                "callbacks": {_OldCallback().state_key: {"dirpath": "x"}}}, path)  # fmt: skip
    with pytest.raises(UntrustedCheckpointError, match="the global (builtins.)?getattr"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True)["callbacks"]


class _OldCallback:
    def state_key(self) -> str:
        return "LastCheckpoint"


# ---- trusting ---------------------------------------------------------------------------------
def test_trust_loads_what_is_refused_otherwise(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = _with_payload(None, tmp_path / "payload.ckpt", _MakeDir(marker))
    with pytest.raises(UntrustedCheckpointError, match="os.makedirs"):
        load_checkpoint(path)
    assert not marker.exists()
    assert load_checkpoint(path, trust=True)["pointseg_config"] == {}
    assert marker.is_dir()


def test_trust_checkpoint_reaches_eval_predict_and_prune(
    trained: dict[str, Any], tmp_path: Path, monkeypatch
) -> None:
    import pointseg.prune.run
    from pointseg.segmenter import Segmenter

    def payload(name: str) -> tuple[Path, Path]:
        marker = tmp_path / f"ran_{name}"
        return _with_payload(Path(trained["best_ckpt"]), tmp_path / f"{name}.ckpt",
                             _MakeDir(marker)), marker  # fmt: skip

    path, marker = payload("eval")
    with pytest.raises(UntrustedCheckpointError):
        _eval_miou(path, tmp_path / "e0")
    assert not marker.exists()
    miou = _eval_miou(path, tmp_path / "e1", "trust_checkpoint=true")
    assert marker.is_dir() and miou == pytest.approx(trained["val/miou"], abs=1e-6)

    path, marker = payload("predict")
    Segmenter.from_checkpoint(path, device="cpu", trust=True)
    assert marker.is_dir()

    class Loaded(Exception):
        pass

    def stop(ckpt: Any) -> None:
        raise Loaded

    monkeypatch.setattr(pointseg.prune.run, "build_module", stop)  # after the load: stop there
    path, marker = payload("prune")
    cfg = compose_config("prune", [f"ckpt_path={path}", "trust_checkpoint=true"], tmp_path)
    with pytest.raises(Loaded):
        pointseg.prune.run.prune(cfg)
    assert marker.is_dir()


# ---- what pointseg writes -------------------------------------------------------------------
def test_written_checkpoints_load_with_weights_only(
    trained: dict[str, Any], pruned: dict[str, Any]
) -> None:
    run = Path(trained["best_ckpt"]).parent
    ckpt_dir = Path(pruned["pruned_ckpt"]).parent
    files = [run / "best.ckpt", run / "last.ckpt", ckpt_dir / "pruned.ckpt"]
    files.append(ckpt_dir / "pruned_sparse.ckpt")
    for path in files:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["pointseg_config"]["data"]["num_classes"] == 9, path
    assert set(torch.load(run / "last.ckpt", weights_only=True)["callbacks"]) >= {
        f"LastCheckpoint{{dirpath={run}}}"
    }


def test_trained_and_pruned_checkpoints_reproduce_their_miou(
    trained: dict[str, Any], pruned: dict[str, Any], tmp_path: Path
) -> None:
    assert Path(pruned["pruned_ckpt"]).name == "pruned_sparse.ckpt"  # the compressed format
    dense = _eval_miou(trained["best_ckpt"], tmp_path / "dense")
    assert dense == pytest.approx(trained["val/miou"], abs=1e-6)
    sparse = _eval_miou(pruned["pruned_ckpt"], tmp_path / "sparse")
    assert sparse == pytest.approx(pruned["after"]["miou"], abs=1e-6)


class _Colour(enum.IntEnum):
    RED = 1


def test_plain_converts_config_values_and_names_what_it_refuses() -> None:
    cfg = OmegaConf.create({"k": [1, 2], "n": "${k}"})
    value = {"f": np.float32(0.5), "p": Path("a/b"), "c": cfg, "t": (1, np.int64(2))}
    out = plain(value)
    assert out == {"f": 0.5, "p": "a/b", "c": {"k": [1, 2], "n": [1, 2]}, "t": (1, 2)}
    assert type(out["f"]) is float and type(out["t"][1]) is int and type(out["c"]) is dict
    with pytest.raises(TypeError, match=r"checkpoint\['cb'\]\['k'\] is a builtins.object"):
        plain({"cb": {"k": object()}})
    with pytest.raises(TypeError, match="_Colour"):  # an int subclass pickles as its class
        plain([_Colour.RED])


def test_writers_store_plain_data_or_refuse(trained: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "bad.ckpt"
    with pytest.raises(TypeError, match=r"checkpoint\['x'\]"):
        AtomicCheckpointIO().save_checkpoint({"x": _Shell("true")}, path)
    assert not list(tmp_path.iterdir())  # neither the file nor a temporary one
    module = build_module(load_checkpoint(trained["best_ckpt"]))
    module.run_config = {"lr": np.float64(0.1), "root": Path("data"), "c": OmegaConf.create({})}
    checkpoint: dict[str, Any] = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["pointseg_config"] == {"lr": 0.1, "root": "data", "c": {}}
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    assert torch.load(path, weights_only=True) == checkpoint
