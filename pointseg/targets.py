"""``_target_`` configs built with importlib: the stored recipe's transforms and an exported
network's config, without Hydra (a deployed model has plain JSON, not a Hydra run).

Handles what those configs hold: ``_target_`` (a dotted class or function), keyword
arguments, nested ``_target_`` dicts and lists, and ``_partial_: true``.

``MOVED`` maps the ``_target_`` paths of classes that have moved since a checkpoint could
have stored them to their present homes; ``current_targets`` rewrites a stored config with
it, and ``pointseg.checkpoint.load_checkpoint`` applies it to every checkpoint it reads, so
old checkpoints keep loading through Hydra and through ``instantiate`` alike.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any

_AUGMENT = (
    "BoxCrop", "ChromaticAutoContrast", "ChromaticTranslation", "ElasticDistortion",
    "RandomDropout", "RandomFeatureScale", "RandomRotate", "RandomTranslate", "SphereCrop",
)  # fmt: skip
# old path -> home: the Pointcept augmentations were first written in data.transforms
MOVED: dict[str, str] = {
    f"pointseg.data.transforms.{name}": f"pointseg.data.augment.{name}" for name in _AUGMENT
}


def current_targets(cfg: Any) -> Any:
    """``cfg`` (plain dicts and lists) with every moved ``_target_`` path at its home."""
    if isinstance(cfg, list | tuple):
        return type(cfg)(current_targets(v) for v in cfg)
    if not isinstance(cfg, Mapping):
        return cfg
    out = {k: current_targets(v) for k, v in cfg.items()}
    target = out.get("_target_")
    if isinstance(target, str) and target in MOVED:
        out["_target_"] = MOVED[target]
    return out


def locate(path: str) -> Any:
    """The object named by a dotted path such as ``pointseg.data.transforms.Voxelize`` (an
    old path in ``MOVED`` names the class at its home)."""
    path = MOVED.get(str(path), str(path))
    module, _, name = path.rpartition(".")
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
