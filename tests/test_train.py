from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pointseg.eval import evaluate
from pointseg.train import train
from tests.conftest import TINY


def test_fast_dev_run(compose_cfg) -> None:
    cfg = compose_cfg("train", ["debug=fdr", *TINY])
    result = train(cfg)
    assert "run_dir" in result
    # fast_dev_run writes nothing
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_short_run_writes_checkpoints_metrics_and_resumes(compose_cfg, tmp_path: Path) -> None:
    # constant LR: OneCycle's schedule is fixed to the first run's length
    common = [*TINY, "model/scheduler=none", "trainer.check_val_every_n_epoch=1"]
    common.append("trainer.log_every_n_steps=1")
    cfg = compose_cfg("train", [*common, "trainer.max_epochs=2"])
    result = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_ckpt"] == result["best_ckpt"]
    assert 0.0 <= metrics["val/miou"] <= 1.0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert set(metrics["last_val"]["iou"]) == set(cfg.data.class_names)
    csv = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in csv and "val/miou" in csv and "val/iou/floor" in csv

    ckpt = torch.load(result["best_ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["pointseg_config"]["model"]["net"]["channels"] == list(cfg.model.net.channels)

    # resume from last.ckpt: training continues to the new max_epochs
    last = str(run_dir / "checkpoints" / "last.ckpt")
    first = torch.load(last, map_location="cpu", weights_only=False)
    longer = ["trainer.max_epochs=3", f"ckpt_path={last}"]
    cfg2 = compose_cfg("train", [*common, *longer])
    cfg2.paths.output_dir = str(tmp_path / "run2")
    train(cfg2, overrides=longer)
    assert not (tmp_path / "run2" / "checkpoints").exists()  # the run goes on in its folder
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert first["epoch"] == 1 and resumed["epoch"] == 2
    assert resumed["global_step"] == first["global_step"] // 2 * 3


def test_fewer_scenes_than_a_batch_and_no_scheduled_validation(compose_cfg, caplog) -> None:
    # 2 scenes < batch_size 4 (the incomplete batch is kept); 1 epoch < check_val_every 4
    small = ["data.train_dataset.num_scenes=2", "data.val_dataset.num_scenes=1"]
    small += ["trainer.max_epochs=1", "logger=none", "model.net.stem_channels=8"]
    small += ["model.net.channels=[8,8,8,8,8,8,8,8]", "data.voxel_size=0.16"]
    cfg = compose_cfg("train", small)
    assert cfg.data.batch_size == 4 and cfg.trainer.check_val_every_n_epoch == 4
    result = train(cfg)
    assert Path(result["best_ckpt"]).is_file() and 0.0 <= result["val/miou"] <= 1.0
    assert "fewer than data.batch_size=4" in caplog.text
    assert "validating only after the last epoch" in caplog.text


def test_eval_rebuilds_model_from_checkpoint(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("train", [*TINY, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1"])
    result = train(cfg)
    ecfg = compose_cfg("eval", [f"ckpt_path={result['best_ckpt']}", "batch_size=1"])
    ecfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(ecfg)
    # the best checkpoint's score is reproduced by a fresh evaluation, with another batch size
    assert out["val/miou"] == pytest.approx(result["val/miou"], abs=1e-6)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["val/miou"] == pytest.approx(out["val/miou"])
    assert len(saved["confusion_matrix"]) == cfg.data.num_classes


def test_eval_errors_name_the_file(compose_cfg, tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        evaluate(compose_cfg("eval", [f"ckpt_path={missing}"]))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        evaluate(compose_cfg("eval", [f"ckpt_path={junk}"]))


@pytest.mark.slow
def test_real_training_run_reaches_target_and_eval_reproduces_it(compose_cfg, tmp_path) -> None:
    """From scratch on synthetic rooms to val mIoU >= 0.80; eval of the checkpoint agrees."""
    cfg = compose_cfg(
        "train", ["experiment=synthetic_fast", "callbacks.progress_bar.refresh_rate=0"]
    )
    result = train(cfg)
    assert result["val/miou"] >= 0.80, result
    ecfg = compose_cfg("eval", [f"ckpt_path={result['best_ckpt']}"])
    ecfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(ecfg)
    assert abs(out["val/miou"] - result["val/miou"]) <= 0.01
