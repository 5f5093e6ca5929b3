"""``trainer.max_steps``: a trainer key, a one-cycle schedule with a warm-up at any length, and
a run it stops mid-epoch that still validates and writes best.ckpt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pointseg.guards import key_hints
from pointseg.lit_module import one_cycle_lr
from pointseg.utils import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("total", [1, 2, 3, 5, 20, 21, 40, 1000])
def test_one_cycle_warms_up_for_at_least_one_step_at_any_length(total: int) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = one_cycle_lr(opt, total_steps=total, max_lr=1.0, pct_start=0.05, div_factor=10.0,
                         final_div_factor=1000.0)  # fmt: skip
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total - 1):  # torch's 20-step schedule at pct_start 0.05 divided by zero here
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    if total == 1:  # no room for a warm-up: the one step is taken (at the final lr)
        return
    assert lrs[0] == pytest.approx(0.1)  # max_lr / div_factor
    if total >= 3:
        peak = max(range(total), key=lrs.__getitem__)
        assert peak >= 1 and lrs[peak] == pytest.approx(1.0)
    assert lrs[-1] < lrs[0]


def test_hint_for_a_trainer_option_the_config_leaves_out() -> None:
    assert key_hints("train", ["trainer.max_steps=20"], str(CONF_DIR)) == []  # a key now
    (hint,) = key_hints("train", ["trainer.accumulate_grad_batches=2"], str(CONF_DIR))
    assert "Trainer" in hint and "+trainer.accumulate_grad_batches=2" in hint
    (typo,) = key_hints("train", ["trainer.max_epoch=2"], str(CONF_DIR))
    assert "did you mean trainer.max_epochs" in typo
    assert key_hints("train", ["hydra.run.dir=/tmp/x", "hydra.job.chdir=true"], str(CONF_DIR)) == []


@pytest.mark.slow
def test_max_steps_run_stops_mid_epoch_validates_and_writes_best_ckpt(tmp_path: Path) -> None:
    # 8 scenes in batches of 2: 4 steps an epoch, so 3 steps end inside the first of 4 epochs,
    # with validation planned only every 4 epochs; the default schedule is OneCycle
    args = ["trainer.max_steps=3", "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=4",
            "data.train_dataset.num_scenes=8", "data.val_dataset.num_scenes=1",
            "data.batch_size=2", "data.voxel_size=0.25", "model.net.stem_channels=8",
            "model.net.channels=[8,8,8,8,8,8,8,8]", "model.net.layers=[1,1,1,1,1,1,1,1]",
            "logger=none", "threads=1"]  # fmt: skip
    env = {**os.environ, "POINTSEG_ROOT": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "pointseg.train", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val/miou" in metrics and Path(metrics["best_ckpt"]).name == "best.ckpt"
    best = torch.load(metrics["best_ckpt"], map_location="cpu", weights_only=True)
    assert best["global_step"] == 3
    assert "best val/miou:" in done.stdout
