"""Resuming a training run: its stored config, its own folder, its best-checkpoint tracking.

``ckpt_path=last`` (or a checkpoint file) continues the run the checkpoint belongs to: the run
config stored in the checkpoint (``pointseg_config``) is the base, the overrides typed on this
command line apply on top (and are listed in a warning), and the run folder, and with it the
best-checkpoint callback's ``dirpath``, stays the one the run started in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# config groups whose package is _global_: they set keys all over the config, so they cannot
# be replayed onto a stored config key by key
_GLOBAL_GROUPS = ("experiment", "debug")


class ResumeError(ValueError):
    """A resume that cannot continue the stored run as asked (the message says what to do)."""


class Resumed(NamedTuple):
    cfg: DictConfig  # the stored run config with this command line's overrides on top
    ckpt_path: Path
    run_dir: Path
    applied: list[str]  # the overrides applied on top of the stored config


def is_debug_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` was a ``debug=...`` or ``fast_dev_run`` run (never resumed from)."""
    hydra_dir = run_dir / ".hydra"
    try:
        if (hydra_dir / "hydra.yaml").is_file():
            choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
            if choices.get("debug") not in (None, "null"):
                return True
        if (hydra_dir / "config.yaml").is_file():
            cfg = OmegaConf.load(hydra_dir / "config.yaml")
            return bool(OmegaConf.select(cfg, "trainer.fast_dev_run", default=False))
    except Exception:  # an unreadable record: judge by the checkpoint alone
        return False
    return False


def find_last(log_dir: str | Path, task_name: str = "train") -> Path:
    """``last.ckpt`` of the newest run under ``<log_dir>/<task_name>/runs``, debug runs skipped."""
    runs = Path(log_dir) / task_name / "runs"
    found = [p for p in runs.glob("*/checkpoints/last.ckpt") if not is_debug_run(p.parents[1])]
    if not found:
        raise FileNotFoundError(
            f"ckpt_path=last: no last.ckpt of a training run under {runs}/*/checkpoints; "
            "give a checkpoint file with ckpt_path=<path/to/file.ckpt>"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def _stored_config(ckpt_path: Path) -> dict[str, Any]:
    import torch

    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    try:  # memory-mapped: the weights are not read, only the small config next to them
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ResumeError(
            f"cannot read checkpoint {ckpt_path} ({err}); is it a complete .ckpt?"
        ) from err
    stored = ckpt.get("pointseg_config") if isinstance(ckpt, dict) else None
    if not stored or "lr_schedulers" not in ckpt:
        raise ResumeError(
            f"{ckpt_path} is not a resumable pointseg-train checkpoint (no stored run config or "
            "training state); resume from a checkpoints/last.ckpt written by pointseg-train"
        )
    return stored


def _is_group(key: str, conf_dir: Path) -> bool:
    return (conf_dir / key).is_dir()


def apply_overrides(
    stored: DictConfig, current: DictConfig, overrides: Sequence[str], *, conf_dir: Path
) -> list[str]:
    """Replay the command-line ``overrides`` onto ``stored``, taking each value from the
    ``current`` (freshly composed) config; returns the overrides applied."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    applied = []
    for text, ov in zip(overrides, OverridesParser.create().parse_overrides(list(overrides)),
                        strict=True):  # fmt: skip
        key = ov.key_or_group
        top = key.split(".")[0].split("/")[0]
        if top in ("hydra", "ckpt_path"):
            continue
        if top == "paths":  # the run stays in its folder; paths only served to find `last`
            log.info("resume: %s only locates the run; it continues in its own folder", text)
            continue
        if _is_group(key, conf_dir) and top in _GLOBAL_GROUPS:
            raise ResumeError(
                f"resume: '{text}' selects a config group that sets keys all over the config; it "
                "cannot be applied to a stored run: override the single keys you mean instead"
            )
        dotted = key.replace("/", ".")
        if ov.is_delete():
            parent, _, leaf = dotted.rpartition(".")
            node = OmegaConf.select(stored, parent) if parent else stored
            if node is not None and leaf in node:
                with open_dict(node):
                    del node[leaf]
        else:
            value = OmegaConf.select(current, dotted)
            if isinstance(value, DictConfig | list) or OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            with open_dict(stored):
                OmegaConf.update(stored, dotted, value, merge=False, force_add=True)
        applied.append(text)
    return applied


def resume_config(
    cfg: DictConfig, ckpt_path: str | Path, overrides: Sequence[str], *, conf_dir: Path
) -> Resumed:
    """The config that continues the run of ``ckpt_path`` (``last``: the newest run's)."""
    if str(ckpt_path) == "last":
        path = find_last(cfg.paths.log_dir, cfg.task_name)
    else:
        path = Path(ckpt_path)
    path = path.resolve()
    stored = OmegaConf.create(_stored_config(path))
    applied = apply_overrides(stored, cfg, overrides, conf_dir=conf_dir)
    run_dir = Path(stored.paths.output_dir)
    if path.parent.name == "checkpoints" and path.parents[1] != run_dir:
        # the run folder was moved or copied: continue where the checkpoint lies
        stored = _relocate(stored, str(run_dir), str(path.parents[1]))
        run_dir = path.parents[1]
    with open_dict(stored):
        stored.ckpt_path = str(path)
    return Resumed(stored, path, run_dir, applied)


def _relocate(cfg: DictConfig, old: str, new: str) -> DictConfig:
    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        if isinstance(node, str) and (node == old or node.startswith(old + "/")):
            return new + node[len(old) :]
        return node

    return OmegaConf.create(swap(OmegaConf.to_container(cfg, resolve=True)))


def command_line_overrides() -> list[str]:
    """The overrides typed for this Hydra run (empty outside ``@hydra.main``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def check_not_multirun(ckpt_path: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if ckpt_path and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ResumeError(
            f"ckpt_path={ckpt_path} in a multirun (-m) would make every job continue the same "
            "run; resume without -m"
        )


def keep_csv_history(loggers: Sequence[Any]) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts: put the rows
    the run logged before the resume back, so the file keeps the whole run."""
    import csv

    from pytorch_lightning.loggers import CSVLogger

    for lg in loggers:
        if not isinstance(lg, CSVLogger):
            continue
        path = Path(lg.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        text = path.read_text()
        writer = lg.experiment  # created now: this is where the old file is removed
        path.write_text(text)
        header = next(csv.reader(text.splitlines()), [])
        writer.metrics_keys = sorted(set(header) | set(writer.metrics_keys))
