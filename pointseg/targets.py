"""``_target_`` configs built with importlib: the stored recipe's transforms and an exported
network's config, without Hydra (a deployed model has plain JSON, not a Hydra run).

Handles what those configs hold: ``_target_`` (a dotted class or function), keyword
arguments, nested ``_target_`` dicts and lists, and ``_partial_: true``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any


def locate(path: str) -> Any:
    """The object named by a dotted path such as ``pointseg.data.transforms.Voxelize``."""
    module, _, name = str(path).rpartition(".")
    if not module:
        raise ValueError(f"_target_ {path!r} is not a dotted path (module.Name)")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"cannot locate _target_ {path!r}: {err}") from err


def instantiate(cfg: Any) -> Any:
    """The object a (plain) ``_target_`` config describes; other values pass through, their
    nested configs built."""
    if isinstance(cfg, list | tuple):
        return type(cfg)(instantiate(v) for v in cfg)
    if not isinstance(cfg, Mapping):
        return cfg
    kwargs = {k: instantiate(v) for k, v in cfg.items() if k not in ("_target_", "_partial_")}
    if "_target_" not in cfg:
        return kwargs
    target = locate(cfg["_target_"])
    if cfg.get("_partial_"):
        return functools.partial(target, **kwargs)
    return target(**kwargs)
