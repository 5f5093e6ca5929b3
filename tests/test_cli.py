"""What the console scripts share: --help, required options, a missing spconv, the run log."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from pointseg.cli import command_help, missing_options, output_to_log, quiet_third_party
from pointseg.guards import INPUT_ERROR_EXIT, guard_task, missing_spconv, run_hydra
from pointseg.utils import CONF_DIR


def test_help_lists_the_commands_own_options_with_their_comments() -> None:
    text = command_help("pointseg-predict", "predict", CONF_DIR)
    assert text.startswith("usage: pointseg-predict ckpt_path=")
    required = text.split("required:")[1].split("options")[0]
    assert "ckpt_path" in required and "input" in required
    assert "threads=null" in text and "follow_load=true" in text
    assert "other processes keep CPUs" in text  # the yaml comment, wrapped
    # predict's own groups only (trainer: its one-process default or DDP), nothing of train's
    assert "data:" not in text and "model:" not in text and "experiment:" not in text
    assert "docs/predict.md" in text
    train = command_help("pointseg-train", "train", CONF_DIR)
    assert "  data: " in train and "synthetic" in train and "experiment: " in train


def test_missing_options_before_anything_runs() -> None:
    assert missing_options("predict", [], CONF_DIR) == ["ckpt_path", "input"]
    assert missing_options("predict", ["input=a.ply"], CONF_DIR) == ["ckpt_path"]
    assert missing_options("predict", ["input=a.ply", "ckpt_path=b.ckpt"], CONF_DIR) == []
    assert missing_options("predict", ["--cfg", "job"], CONF_DIR) == []  # nothing will run
    assert missing_options("train", [], CONF_DIR) == []


def test_run_hydra_answers_help_and_missing_options_without_a_run_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    def never() -> None:
        raise AssertionError("Hydra should not run")

    monkeypatch.setattr(sys, "argv", ["pointseg-eval", "split=val"])
    with pytest.raises(SystemExit) as stop:
        run_hydra(never, "eval")
    assert stop.value.code == INPUT_ERROR_EXIT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing required option ckpt_path=" in err
    monkeypatch.setattr(sys, "argv", ["pointseg-eval", "--help"])
    with pytest.raises(SystemExit) as stop:
        run_hydra(never, "eval")
    assert stop.value.code == 0 and "usage: pointseg-eval" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["eval", "predict", "train"])
def test_a_missing_checkpoint_is_refused_without_a_run_folder(command: str, tmp_path: Path) -> None:
    import os
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("POINTSEG_ROOT", None)  # the logs/ folder would be made in the cwd
    args = ["ckpt_path=/nonexistent.ckpt"] + (["input=a.ply"] if command == "predict" else [])
    done = subprocess.run(
        [sys.executable, "-m", f"pointseg.{command}", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == INPUT_ERROR_EXIT, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "/nonexistent.ckpt does not exist" in lines[0], lines
    assert lines[0].startswith(f"pointseg-{command}: error: ")
    assert list(tmp_path.iterdir()) == []  # no logs/<command>/runs/<time>/


def test_missing_spconv_names_the_wheel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "spconv", None)  # as if it were not installed
    with pytest.raises(SystemExit) as stop:
        guard_task("pointseg-train")(lambda: None)()
    assert stop.value.code == INPUT_ERROR_EXIT
    assert "pip install spconv==2.3.8" in capsys.readouterr().err
    # Hydra's "Error locating target" wraps the ImportError of the model's module
    try:
        try:
            raise ModuleNotFoundError("No module named 'spconv'", name="spconv")
        except ImportError as inner:
            raise RuntimeError("Error locating target 'pointseg.models.sparse_unet'") from inner
    except RuntimeError as outer:
        assert missing_spconv(outer)
    assert not missing_spconv(ModuleNotFoundError("No module named 'laspy'", name="laspy"))


def test_printed_lines_reach_the_log_file_but_not_progress_bars(tmp_path: Path) -> None:
    handler = logging.FileHandler(tmp_path / "job.log")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with output_to_log():
            print("val/miou: 0.5000")
            sys.stdout.write("\rEpoch 0:  50%|#####     | 1/2\rEpoch 0: 100%|##########| 2/2\n")
            print("run_dir: /x", file=sys.stderr)
    finally:
        root.removeHandler(handler)
        handler.close()
    text = (tmp_path / "job.log").read_text()
    assert "val/miou: 0.5000" in text and "run_dir: /x" in text and "Epoch" not in text


def test_quiet_third_party_drops_only_the_two_notices(caplog: pytest.LogCaptureFixture) -> None:
    quiet_third_party()
    fx = logging.getLogger("torch.fx._symbolic_trace")
    with caplog.at_level(logging.INFO):
        fx.warning("is_fx_tracing will return true for both fx.symbolic_trace and torch.export")
        fx.warning("another torch.fx warning")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info(
            "💡 Tip: For seamless cloud logging and experiment tracking, try litlogger"
        )
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False")
    assert [r.getMessage() for r in caplog.records] == [
        "another torch.fx warning",
        "GPU available: False",
    ]


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--help"], ["trainer.max_epochs=24", "trainer.max_steps=-1", "data.voxel_size=0.08",
                      "data.batch_size=4", "data.train_dataset.num_scenes=48"]),
        (["data=las", "--help"], ["trainer.max_epochs=24", "data.train_dataset.loop=1000",
                                  "trainer.limit_train_batches=50", "data.train_dataset.root="]),
    ],
)  # fmt: skip
def test_train_help_lists_the_trainer_and_data_options_people_change(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
    shown: list[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["pointseg-train", *argv])
    with pytest.raises(SystemExit) as stop:
        run_hydra(lambda: None, "train")
    out = capsys.readouterr().out
    assert stop.value.code == 0
    for key in shown:
        assert f"\n  {key}" in out, key
    lines = out.splitlines()
    max_epochs = next(i for i, line in enumerate(lines) if line.startswith("  trainer.max_epochs="))
    assert "epochs to train" in lines[max_epochs]  # with the comment of its yaml line
    assert "_target_" not in out and "transforms" not in out  # not options people type


@pytest.mark.parametrize("argv", [["--help"], ["las", "--help"], ["las", "-h"]])
def test_prepare_help_lists_the_las_options_with_their_meaning(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    from pointseg.prepare import main as prepare_main

    with pytest.raises(SystemExit) as stop:
        prepare_main(argv)
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "usage: pointseg-prepare" in out
    las = out.split("las options (key=value):")[1]
    for line in ("split_by=tile", "block_size=50", "class_map=null", "unknown=null",
                 "overlap=0", "hag_radius=2,5,15,30,60", "geometry_k=16"):  # fmt: skip
        assert f"\n  {line}" in las, line
    assert "x_median" in las and "ground_other" in las and "ignore (label -1)" in las
    assert ("s3dis options" in out) == (argv == ["--help"])


def test_every_prepare_option_has_a_help_line() -> None:
    import importlib
    import inspect

    from pointseg.prepare import PREPARERS

    for dataset, name in PREPARERS.items():
        module = importlib.import_module(name)
        params = inspect.signature(module.prepare).parameters
        keywords = {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
        assert set(module.OPTIONS) == keywords - {"workers", "overwrite"}, dataset
