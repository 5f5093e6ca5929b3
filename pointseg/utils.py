"""Small helpers shared by the entry points: atomic writes, summaries, hints."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write to a temporary file in the same folder, then rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def find_last_checkpoint(log_dir: str | Path, task_name: str = "train") -> Path:
    """``last.ckpt`` of the newest run under ``<log_dir>/<task_name>/runs``."""
    runs = Path(log_dir) / task_name / "runs"
    candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(
            f"ckpt_path=last: no last.ckpt under {runs}/*/checkpoints; "
            "give a checkpoint file with ckpt_path=<path/to/file.ckpt>"
        )
    return candidates[-1]


# conf/ sits next to the package in the checkout (pointseg is installed editable)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def auto_precision(accelerator: str = "auto") -> str:
    """Lightning precision for ``precision: ${auto_precision:${.accelerator}}``: mixed fp16 (AMP)
    when the run will use a CUDA GPU, else full fp32 (CPU AMP brings nothing to spconv)."""
    import torch

    gpu = str(accelerator).lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "16-mixed" if gpu else "32-true"


if not OmegaConf.has_resolver("auto_precision"):
    OmegaConf.register_new_resolver("auto_precision", auto_precision)
