"""DDP metrics, crash-safe resume and determinism, through the real entry points."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pointseg.eval import evaluate
from pointseg.threads import RUN_PID
from pointseg.train import train
from tests.conftest import TINY, TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]

QUIET = ["logger=csv", "callbacks.progress_bar.refresh_rate=0"]


def run_env(**extra: str) -> dict[str, str]:
    """This environment for a training process, without this process's run id: the training's
    own thread governor must see the test's neighbour as another process, not its own."""
    env = {k: v for k, v in os.environ.items() if k != RUN_PID}
    return {**env, **extra}


def run_train_cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = run_env(PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "pointseg.train", f"paths.root_dir={cwd}", *QUIET, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def newest_run(root: Path) -> Path:
    return sorted((root / "logs" / "train" / "runs").iterdir())[-1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process_eval(tmp_path: Path, compose_cfg) -> None:
    # 3 val scenes over 2 ranks: uneven shards, which a padding sampler would double-count
    args = ["trainer=ddp_cpu", *TINY, "data.val_dataset.num_scenes=3", "data.val_batch_size=1"]
    args += ["data.train_dataset.num_scenes=4", "trainer.max_epochs=1"]
    args += ["trainer.check_val_every_n_epoch=1"]
    proc = run_train_cli(args, tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert out.count("run_dir:") == 1, "only rank 0 prints the summary"
    metrics = json.loads((newest_run(tmp_path) / "metrics.json").read_text())

    ecfg = compose_cfg("eval", [f"ckpt_path={metrics['best_ckpt']}"])
    ecfg.paths.output_dir = str(tmp_path / "eval")
    single = evaluate(ecfg)
    assert single["val/miou"] == pytest.approx(metrics["val/miou"], abs=1e-9)
    assert single["val/iou"] == pytest.approx(metrics["last_val"]["iou"], nan_ok=True)
    total_points = sum(map(sum, single["confusion_matrix"]))
    assert total_points > 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reaches_the_same_step(tmp_path: Path) -> None:
    interval = 2
    args = [*TINY, "data.train_dataset.num_scenes=12", "data.batch_size=2", "trainer.max_epochs=3"]
    args += ["trainer.check_val_every_n_epoch=3", "model/scheduler=none"]
    args += [f"callbacks.last_checkpoint.every_n_train_steps={interval}"]
    steps_per_epoch, total = 6, 18
    proc = run_train_cli(args, tmp_path)
    last = None
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None:
            found = list((tmp_path / "logs").glob("train/runs/*/checkpoints/last.ckpt"))
            if found:
                step = torch.load(found[0], map_location="cpu", weights_only=False)["global_step"]
                if step >= steps_per_epoch + interval:  # inside the second epoch
                    last = found[0]
                    break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert last is not None, "training ended before a mid-epoch checkpoint was seen"
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert killed_at < total

    # no partial checkpoint is ever left where a resume would pick it up
    assert not list(last.parent.glob("*.tmp"))
    time.sleep(1.1)  # a new run directory (timestamped to the second)
    proc = run_train_cli([*args, "ckpt_path=last"], tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    resumed_run = last.parents[1]  # the run goes on in its own folder
    final = torch.load(resumed_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == total and final["epoch"] == 2
    # the resumed run continued from the checkpoint instead of starting over
    assert "Restored all states from the checkpoint" in out
    csv = (resumed_run / "csv" / "metrics.csv").read_text().splitlines()
    header = csv[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in csv[1:]]
    # one history in the run's own folder: the resumed steps follow the kill (rows logged
    # before it survive where the logger had flushed them), none written twice
    assert killed_at <= max(steps)
    assert len(csv) == len(set(csv))


# A neighbour that is busy 2.5 s, then idle 2.5 s, in turn: the load that once changed the
# thread count mid-run (and with it the weights).
NEIGHBOUR = """
import time
while True:
    start = time.monotonic()
    while time.monotonic() - start < 2.5:
        pass
    time.sleep(2.5)
"""


@contextlib.contextmanager
def intermittent_neighbour() -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


# train() called as a library, in a fresh process (torch's own thread count: train() sets none)
_LIBRARY_RUN = """
import json, sys
from pathlib import Path
from tests.conftest import compose_config
from pointseg.train import train
result = train(compose_config("train", json.loads(sys.argv[2]), Path(sys.argv[1])))
print("RESULT " + json.dumps(result))
"""


def train_in_a_process(overrides: list[str], root: Path) -> dict:
    env = run_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", _LIBRARY_RUN, str(root), json.dumps(overrides)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def assert_same_weights(a: Path, b: Path) -> None:
    wa = torch.load(a, map_location="cpu", weights_only=False)["state_dict"]
    wb = torch.load(b, map_location="cpu", weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    """Two trainings, each a fresh process calling ``train()``: one with the machine as it is,
    one next to a neighbour that is busy and idle in turn, give the same bits."""
    overrides = [*TINY, *TINY_MODEL, "seed=3", "trainer.deterministic=true"]
    overrides += ["trainer.check_val_every_n_epoch=1", "logger=none"]
    a = train_in_a_process(overrides, tmp_path / "a")
    with intermittent_neighbour():
        b = train_in_a_process(overrides, tmp_path / "b")
    assert a["last_val"] == b["last_val"]
    assert_same_weights(Path(a["best_ckpt"]), Path(b["best_ckpt"]))


def test_train_cli_same_seed_same_weights_next_to_a_busy_neighbour(tmp_path: Path) -> None:
    """``pointseg-train seed=3`` (the console script's own thread policy) twice: quiet, then
    next to a neighbour busy and idle in turn; ``last.ckpt`` weights are the same bits."""
    args = ["seed=3", *TINY, *TINY_MODEL, "trainer.deterministic=true"]
    ckpts = []
    for name in ("quiet", "busy"):
        (tmp_path / name).mkdir()
        with intermittent_neighbour() if name == "busy" else contextlib.nullcontext():
            proc = run_train_cli(args, tmp_path / name)
            out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        ckpts.append(newest_run(tmp_path / name) / "checkpoints" / "last.ckpt")
    assert_same_weights(*ckpts)


def test_checkpoints_load_with_weights_only(compose_cfg) -> None:
    """Lightning resumes with ``weights_only=True``: nothing but plain data may be pickled."""
    overrides = [*TINY, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "logger=none"]
    result = train(compose_cfg("train", overrides))
    run = Path(result["run_dir"]) / "checkpoints"
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        assert ckpt["pointseg_config"]["data"]["num_classes"] == 9
