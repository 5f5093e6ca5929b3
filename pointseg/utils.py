"""Small helpers shared by the entry points: atomic writes, summaries, hints."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (``os.umask`` alone
    can only read it by setting it, which briefly affects files other threads create)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: str | Path, *, directory: bool = False) -> None:
    """Give a temporary file (0600) or folder (0700) from ``tempfile`` the permissions a plain
    ``open``/``mkdir`` would have (0666/0777 less the umask), before it is renamed into place."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


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
        public_mode(tmp)
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


def s3dis_areas_except(held_out: Any) -> list[str]:
    """The S3DIS areas not in ``held_out`` (a list such as ``[Area_5]``): the training areas of
    one fold of the 6-fold cross-validation, so no area is on both sides."""
    names = [str(a) for a in (held_out if not isinstance(held_out, str) else [held_out])]
    valid = [f"Area_{i}" for i in range(1, 7)]
    bad = [a for a in names if a not in valid]
    if bad or not names:
        raise ValueError(
            f"data.val_dataset.splits must name S3DIS areas ({', '.join(valid)}), got {names}"
        )
    return [a for a in valid if a not in names]


for _name, _fn in (("auto_precision", auto_precision), ("s3dis_areas_except", s3dis_areas_except)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
