"""``pointseg-eval ckpt_path=...``: point-level metrics of a checkpoint on val or test.

The model and data are rebuilt from the config stored in the checkpoint, so no training
override has to be repeated; ``data.*`` given here override the stored data config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from pointseg.metrics import format_table
from pointseg.utils import CONF_DIR, write_json

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass ckpt_path=<run_dir>/checkpoints/best.ckpt"
        )
    try:
        # our own checkpoints hold plain config containers next to the weights
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}; is it a complete .ckpt?") from err
    if "pointseg_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a pointseg checkpoint (no stored config or state_dict); "
            "use a .ckpt written by pointseg-train"
        )
    return ckpt


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    ckpt = load_checkpoint(cfg.ckpt_path)
    stored = OmegaConf.create(ckpt["pointseg_config"])
    data_cfg = OmegaConf.merge(stored.data, cfg.get("data") or {})
    if cfg.get("batch_size"):
        data_cfg.val_batch_size = cfg.batch_size
    datamodule = hydra.utils.instantiate(data_cfg)
    module = hydra.utils.instantiate(stored.model)
    module.load_state_dict(ckpt["state_dict"])

    run_dir = Path(cfg.paths.output_dir)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        logger=pl.loggers.CSVLogger(run_dir, name="csv", version=""),
        default_root_dir=run_dir,
        enable_checkpointing=False,
    )
    split = cfg.split
    if split == "val":
        trainer.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)
    elif split == "test":
        trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False)
    else:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    sc = module.last_scores[split]
    print(format_table(sc, module.class_names))
    result = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "split": split,
        f"{split}/miou": sc.miou,
        f"{split}/macc": sc.macc,
        f"{split}/allacc": sc.allacc,
        f"{split}/iou": dict(zip(module.class_names, sc.iou.tolist(), strict=True)),
        "confusion_matrix": module.last_confmat.tolist(),
        "run_dir": str(run_dir.resolve()),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    result = evaluate(cfg)
    split = result["split"]
    print(f"{split}/miou: {result[f'{split}/miou']:.4f}")
    print(f"run_dir: {result['run_dir']}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
