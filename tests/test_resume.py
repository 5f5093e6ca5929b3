"""Resuming continues the checkpoint's own run: stored config, same folder, best tracking."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from pointseg.lit_module import ScheduleError
from pointseg.resume import ResumeError, find_last
from pointseg.train import train
from tests.conftest import TINY as _TINY

# an 8-channel network on coarse voxels: each step takes a fraction of a second
TINY = [*_TINY, "model.net.stem_channels=8", "model.net.channels=[8,8,8,8,8,8,8,8]"]
TINY.append("data.voxel_size=0.16")


class StopAfterEpoch(pl.Callback):
    """Ends fit after epoch ``epoch`` (1-based) of the first run: an interrupted run."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            trainer.should_stop = True


STOP_AFTER_1 = [
    "+callbacks.stop._target_=tests.test_resume.StopAfterEpoch",
    "+callbacks.stop.epoch=1",
]


def _run_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / "logs" / "train" / "runs" / name


def _best_state(ckpt: dict) -> dict:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    return state


def test_last_resumes_stored_config_in_the_same_folder(compose_cfg, tmp_path, caplog) -> None:
    # 4 training scenes, batches of 2: 2 steps per epoch, OneCycle over 3 epochs = 6 steps
    first = [*TINY, "data.train_dataset.num_scenes=4", "trainer.max_epochs=3", "logger=csv"]
    first += ["trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1", *STOP_AFTER_1]
    cfg = compose_cfg("train", first)
    run = _run_dir(tmp_path, "2026-01-01_00-00-00")
    cfg.paths.output_dir = str(run)
    train(cfg, overrides=first)
    stopped = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (stopped["epoch"], stopped["global_step"]) == (0, 2)

    # the README's command: nothing but ckpt_path=last (and one harmless override)
    again = ["ckpt_path=last", "callbacks.progress_bar.refresh_rate=0"]
    cfg2 = compose_cfg("train", again)  # its defaults: 48 scenes, 24 epochs
    cfg2.paths.output_dir = str(tmp_path / "new_invocation")
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = train(cfg2, overrides=again)
    assert not [w for w in seen if "dirpath has changed" in str(w.message)]
    assert "callbacks.progress_bar.refresh_rate=0" in caplog.text
    assert not (tmp_path / "new_invocation" / "checkpoints").exists()
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # the stored 4 scenes and 3 epochs, not the defaults: 6 steps in all, no OneCycle error
    assert (final["epoch"], final["global_step"]) == (2, 6)
    assert final["pointseg_config"]["data"]["train_dataset"]["num_scenes"] == 4
    assert final["pointseg_config"]["callbacks"]["progress_bar"]["refresh_rate"] == 0
    # best-model tracking went on: the best of all three validations, the first included
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    mious = [float(r["val/miou"]) for r in rows if r.get("val/miou")]
    assert len(mious) == 3  # the first run's rows are kept in the file
    assert _best_state(final)["best_model_score"].item() == pytest.approx(max(mious))
    assert result["val/miou"] == pytest.approx(max(mious))
    assert Path(result["best_ckpt"]).parent == run / "checkpoints"


def test_longer_onecycle_is_refused_constant_lr_extends(compose_cfg, tmp_path) -> None:
    base = [*TINY, "trainer.max_epochs=1", "logger=none"]
    cfg = compose_cfg("train", base)
    train(cfg, overrides=base)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    longer = [f"ckpt_path={last}", "trainer.max_epochs=2"]
    with pytest.raises(ScheduleError, match=r"planned for 1 optimizer steps .* needs 2"):
        train(compose_cfg("train", longer), overrides=longer)

    const = [*base, "model/scheduler=none"]
    cfg = compose_cfg("train", const)
    cfg.paths.output_dir = str(tmp_path / "const")
    train(cfg, overrides=const)
    last = tmp_path / "const" / "checkpoints" / "last.ckpt"
    longer = [f"ckpt_path={last}", "trainer.max_epochs=3"]
    train(compose_cfg("train", longer), overrides=longer)
    assert torch.load(last, weights_only=True)["global_step"] == 3


def test_global_group_override_is_refused(compose_cfg) -> None:
    base = [*TINY, "trainer.max_epochs=1", "logger=none", "model/scheduler=none"]
    cfg = compose_cfg("train", base)
    train(cfg, overrides=base)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    bad = [f"ckpt_path={last}", "debug=tiny"]
    with pytest.raises(ResumeError, match="debug=tiny"):
        train(compose_cfg("train", bad), overrides=bad)


def test_debug_runs_write_no_checkpoint_and_last_skips_them(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg("train", ["debug=fdr", *TINY, "logger=none"])
    train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    tiny = compose_cfg("train", ["debug=tiny"])  # trains like any run, but keeps no checkpoint
    assert not tiny.trainer.enable_checkpointing
    assert tiny.callbacks.model_checkpoint is None and tiny.callbacks.last_checkpoint is None

    # a real run, then a newer debug run from before this fix that did write last.ckpt
    real, dbg = _run_dir(tmp_path, "2026-01-01_00-00-00"), _run_dir(tmp_path, "2026-01-02_00-00-00")
    for run, choice in ((real, "null"), (dbg, "fdr")):
        (run / "checkpoints").mkdir(parents=True)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "hydra.yaml").write_text(
            f"hydra:\n  runtime:\n    choices:\n      debug: {choice}\n"
        )
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    os.utime(real / "checkpoints" / "last.ckpt", (1, 1))
    assert find_last(tmp_path / "logs") == real / "checkpoints" / "last.ckpt"
    (real / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="no last.ckpt of a training run"):
        find_last(tmp_path / "logs")


def test_cli_refusal_is_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "pointseg.train", f"paths.root_dir={tmp_path}", *TINY]
    cmd += ["logger=none", "callbacks.progress_bar.refresh_rate=0", "trainer.max_epochs=1"]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    cmd = [*cmd[:4], "ckpt_path=last", "trainer.max_epochs=2"]
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr[-2000:]
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("pointseg-train: error:")]
    assert len(errors) == 1 and "planned for 1 optimizer steps" in errors[0]
    assert "Traceback" not in second.stderr
