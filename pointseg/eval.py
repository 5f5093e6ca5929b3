"""``pointseg-eval ckpt_path=...``: point-level metrics of a checkpoint on val or test.

The model and data are rebuilt from the config stored in the checkpoint, so no training
override has to be repeated; ``data.*`` given here override the stored data config.
Plain evaluation runs Lightning's validate/test loop. With ``tta=true`` or
``report.worst_scenes=N`` or ``save_labels=true`` it runs scene by scene through
``pointseg.segmenter.Segmenter`` (the same voxels, so the same scores without TTA), keeps
per-scene scores and, with ``save_labels``, writes each scene's per-point labels to
``<run_dir>/labels/<split>__<scene>.labels.npy``. Either way the
run dir gets ``metrics.json`` and, unless ``report.enabled=false``, ``report.md`` with a
confusion-matrix heatmap and a per-class IoU chart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from pointseg.callbacks import block_hook, entry_callbacks
from pointseg.checkpoint import load_checkpoint
from pointseg.guards import (
    CheckpointMismatchError,
    check_checkpoint_data,
    explain_state_dict_error,
    guard_task,
    run_hydra,
)
from pointseg.metrics import format_table, scores
from pointseg.utils import CONF_DIR, reuse_freed_memory, write_json
from pointseg.viz.report import write_report

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig, *, callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    ckpt = load_checkpoint(cfg.ckpt_path, trust=bool(cfg.get("trust_checkpoint")))
    stored = OmegaConf.create(ckpt["pointseg_config"])
    overrides = cfg.get("data") or {}
    if not OmegaConf.is_dict(overrides) and not isinstance(overrides, dict):
        raise CheckpointMismatchError(
            f"data={overrides!r}: pointseg-eval takes the checkpoint's own data config; change "
            "single keys with +data.<key>=<value> (e.g. +data.val_dataset.root=<dir>)"
        )
    data_cfg = OmegaConf.merge(stored.data, overrides)
    if cfg.get("batch_size"):
        data_cfg.val_batch_size = cfg.batch_size
    # a class count or feature set other than the network's fails deep inside otherwise
    check_checkpoint_data(stored, data_cfg, ckpt=str(cfg.ckpt_path))
    datamodule = hydra.utils.instantiate(data_cfg)
    module = hydra.utils.instantiate(stored.model)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise explain_state_dict_error(err, ckpt=str(cfg.ckpt_path)) or err from None

    run_dir = Path(cfg.paths.output_dir)
    split = cfg.split
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    report_cfg = cfg.get("report") or {}
    worst_n = int(report_cfg.get("worst_scenes", 0) or 0)
    per_scene, predictor, dataset, is_zero = None, None, None, True
    if cfg.get("tta") or worst_n > 0 or cfg.get("save_labels"):
        predictor, dataset = _scene_predictor(cfg, ckpt, datamodule, split)
        predictor.block_hook = block_hook(callbacks)
        labels_dir = run_dir / "labels" if cfg.get("save_labels") else None
        confmat, per_scene = _scene_loop(
            predictor, dataset, ignore_index=datamodule.ignore_index, labels_dir=labels_dir
        )
        class_names = predictor.class_names
    else:
        class_names, confmat, is_zero = _lightning_loop(
            cfg, run_dir, datamodule, module, split, callbacks
        )
    sc = scores(confmat)
    print(format_table(sc, class_names))
    result = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "split": split,
        "tta": bool(cfg.get("tta")),
        f"{split}/miou": sc.miou,
        f"{split}/macc": sc.macc,
        f"{split}/allacc": sc.allacc,
        f"{split}/iou": dict(zip(class_names, sc.iou.tolist(), strict=True)),
        "confusion_matrix": confmat.tolist(),
        "run_dir": str(run_dir.resolve()),
    }
    if per_scene is not None:
        result["scenes"] = per_scene
    if is_zero:
        write_json(run_dir / "metrics.json", result)
        if report_cfg.get("enabled", True) and _have_matplotlib():
            worst = _render_worst(cfg, run_dir, predictor, dataset, per_scene, worst_n)
            result["report"] = str(
                write_report(
                    run_dir,
                    confmat=confmat,
                    sc=sc,
                    class_names=class_names,
                    split=split,
                    ckpt_path=result["ckpt_path"],
                    tta=result["tta"],
                    per_scene=per_scene,
                    worst=worst,
                )
            )
    return result


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning(
            "matplotlib is not installed: no report.md/figures (pip install 'pointseg[viz]', "
            "or report.enabled=false to silence this)"
        )
        return False
    return True


def _lightning_loop(
    cfg: DictConfig,
    run_dir: Path,
    datamodule: Any,
    module: Any,
    split: str,
    callbacks: Sequence[pl.Callback],
) -> tuple[list[str], torch.Tensor, bool]:
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        logger=pl.loggers.CSVLogger(run_dir, name="csv", version=""),
        default_root_dir=run_dir,
        enable_checkpointing=False,
        callbacks=list(callbacks),
    )
    if split == "val":
        trainer.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)
    else:
        trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False)
    return module.class_names, module.last_confmat, trainer.is_global_zero


def _scene_predictor(cfg: DictConfig, ckpt: dict[str, Any], datamodule: Any, split: str):
    from pointseg.inference import InferenceOptions
    from pointseg.segmenter import Segmenter

    opts = InferenceOptions.from_config(
        OmegaConf.to_container(cfg.get("inference") or {}, resolve=True), tta=cfg.get("tta")
    )
    device = "cpu" if cfg.trainer.accelerator == "cpu" else cfg.get("device", "auto")
    segmenter = Segmenter.from_checkpoint(
        cfg.ckpt_path, options=opts, device=device, data_overrides=cfg.get("data"), ckpt=ckpt
    )
    factory = datamodule.factories.get(split)
    if factory is None:
        raise ValueError(f"no {split} dataset is configured (data.{split}_dataset)")
    return segmenter, factory(transform=None)  # raw scenes: the segmenter voxelizes


def _scene_loop(
    segmenter: Any, dataset: Any, *, ignore_index: int, labels_dir: Path | None = None
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    from pointseg.io import write_npy
    from pointseg.segmenter import dataset_scenes, score_scenes

    def save(i: int, sample: dict[str, Any], labels: np.ndarray) -> None:
        name = str(sample.get("name", i)).replace("/", "__")
        write_npy(labels_dir / f"{name}.labels.npy", labels)

    scenes, n = dataset_scenes(dataset)
    return score_scenes(
        segmenter, scenes, ignore_index=ignore_index, progress=True, total=n,
        on_scene=save if labels_dir is not None else None,
    )  # fmt: skip


def _render_worst(cfg, run_dir, predictor, dataset, per_scene, n) -> list[tuple[dict, Path]]:
    if not n or not per_scene:
        return []
    from pointseg.viz.render import render_comparison

    rc = cfg.report
    ranked = sorted(per_scene, key=lambda s: (np.nan_to_num(s["miou"], nan=2.0), s["scene"]))
    out = []
    for rank, s in enumerate(ranked[:n], 1):
        sample = dataset[s["scene"]]
        pred = predictor.predict(sample).labels
        path, backend = render_comparison(
            run_dir / "worst_scenes" / f"{rank:02d}_scene{s['scene']}.png",
            sample["coord"], pred, np.asarray(sample["segment"]), predictor.class_names,
            panels=("gt", "pred", "errors"), view=rc.get("view", "oblique"),
            clip_top=float(rc.get("clip_top", 0.0)),
            title=f"scene {s['scene']}: mIoU {s['miou']:.3f}",
        )  # fmt: skip
        log.info("rendered %s (%s)", path, backend)
        out.append((s, path))
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
@guard_task("pointseg-eval")
def _hydra_main(cfg: DictConfig) -> None:
    reuse_freed_memory()
    # the thread count, once, for the run (pointseg/threads.py), and FollowLoad
    result = evaluate(cfg, callbacks=entry_callbacks(cfg))
    split = result["split"]
    print(f"{split}/miou: {result[f'{split}/miou']:.4f}")
    print(f"run_dir: {result['run_dir']}")


def main() -> None:
    run_hydra(_hydra_main, "eval")


if __name__ == "__main__":
    main()
