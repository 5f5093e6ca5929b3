"""Reading and writing pointseg checkpoints, dense or compressed, in one place.

A checkpoint is a dict of plain containers and tensors (it loads with ``weights_only=True``)
holding ``pointseg_config`` (the resolved run config, from which the model is rebuilt) and the
weights, either as a Lightning ``state_dict`` or, in a compressed checkpoint
(``pointseg_format: sparse-bitmask-v1``), as ``sparse_state_dict``: every tensor that is
mostly zeros is stored as a packed bitmask of its non-zero elements plus their values in
order (1 bit + the non-zero values instead of 32 bits per float32 element); the others stay
dense. The round trip is bit-exact: "non-zero" means any bit set, so ``-0.0`` and NaN
payloads survive.

Loading never runs code from the file: ``torch.load(weights_only=True)`` rebuilds only
tensors and plain containers, and a file that needs anything else (a pickled callable, a
class instance) is refused with ``UntrustedCheckpointError`` unless the caller passes
``trust=True`` (``trust_checkpoint=true`` on the command line) for a file it trusts. Every
checkpoint pointseg writes goes through ``plain`` so that it loads without that opt-in.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pointseg.targets import current_targets
from pointseg.utils import atomic_path

FORMAT_KEY = "pointseg_format"
SPARSE_FORMAT = "sparse-bitmask-v1"
# integer views of float dtypes, to test "any bit set" (bit-exact zero test)
_BITS = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float64: torch.int64,
}


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be used as it is (damaged, not pointseg's, refused)."""


class UntrustedCheckpointError(CheckpointReadError):
    """A checkpoint that holds more than tensors and plain containers (it could run code)."""


def missing_checkpoint_message(path: str | Path) -> str:
    """What to say of a ``ckpt_path`` that does not exist: the ``.ckpt`` files its folder
    does hold (a prune run has pruned*.ckpt, no best.ckpt), else where checkpoints are."""
    path = Path(path)
    there = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
    one = "it" if len(there) == 1 else "one of them"
    fix = (
        f"{path.parent} holds {', '.join(there)}: pass {one} as ckpt_path"
        if there
        else "pass ckpt_path=<run_dir>/checkpoints/best.ckpt"
    )
    return f"checkpoint {path} does not exist; {fix}"


def load_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """A pointseg checkpoint with a dense ``state_dict``, whatever its storage format.

    Read with ``weights_only=True``; ``trust=True`` unpickles anything (it may run code from
    the file) and is only for a file whose origin the user vouches for.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_checkpoint_message(path))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if trust or not refused:  # no global named: damaged, or not a torch.save file
            raise CheckpointReadError(
                f"cannot read checkpoint {path} ({_last_reason(err)}); is it a complete .ckpt "
                "written by torch.save?"
            ) from None
        raise UntrustedCheckpointError(
            f"refusing to load checkpoint {path}: it holds the global {refused.group(1)}, "
            "which only a full unpickle rebuilds and which could run code (pointseg writes "
            "tensors and plain containers only); if you trust the file's origin, pass "
            "trust_checkpoint=true"
        ) from None
    except Exception as err:
        raise CheckpointReadError(
            f"cannot read checkpoint {path} ({_last_reason(err)}); is it a complete .ckpt?"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointReadError(
            f"{path} is not a pointseg checkpoint (a {type(ckpt).__name__}, not a dict); use a "
            ".ckpt written by pointseg-train or pointseg-prune"
        )
    fmt = ckpt.get(FORMAT_KEY)
    if fmt is not None:
        if fmt != SPARSE_FORMAT or "sparse_state_dict" not in ckpt:
            raise CheckpointReadError(
                f"{path}: unknown checkpoint format {fmt!r} (this pointseg reads "
                f"{SPARSE_FORMAT!r}); write it again with this version's pointseg-prune"
            )
        ckpt = dict(ckpt)
        ckpt["state_dict"] = decompress_state_dict(ckpt.pop("sparse_state_dict"))
    if "pointseg_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointReadError(
            f"{path} is not a pointseg checkpoint (no stored config or state_dict); "
            "use a .ckpt written by pointseg-train or pointseg-prune"
        )
    ckpt = dict(ckpt)  # stored _target_ paths of moved classes, at their present homes
    for key in ("pointseg_config", "pointseg_recipe"):
        if isinstance(ckpt.get(key), Mapping):
            ckpt[key] = current_targets(ckpt[key])
    return ckpt


def net_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """The network's weights (the module's ``net.*`` entries without the prefix)."""
    return {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def build_net(ckpt: Mapping[str, Any]) -> nn.Module:
    """The network described by the checkpoint's stored config, with its weights loaded."""
    import hydra
    from omegaconf import OmegaConf

    net = hydra.utils.instantiate(OmegaConf.create(ckpt["pointseg_config"]).model.net)
    net.load_state_dict(net_state_dict(ckpt))
    return net


def build_module(ckpt: Mapping[str, Any], model_cfg: Mapping[str, Any] | None = None) -> Any:
    """The ``SegmentationModule`` of the stored config (or ``model_cfg``), weights loaded."""
    import hydra
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(dict(model_cfg or ckpt["pointseg_config"]["model"]))
    module = hydra.utils.instantiate(cfg)
    module.load_state_dict(ckpt["state_dict"])
    return module


def compress_tensor(t: Tensor) -> dict[str, Any] | Tensor:
    """``{"shape", "bitmask", "values"}`` when that is smaller than ``t``, else ``t`` itself."""
    if t.dtype not in _BITS or t.numel() == 0:
        return t
    flat = t.detach().cpu().contiguous().reshape(-1)
    nonzero = flat.view(_BITS[t.dtype]) != 0  # (numel,) bool: any bit set
    nnz = int(nonzero.sum())
    if nnz * flat.element_size() + (flat.numel() + 7) // 8 >= flat.numel() * flat.element_size():
        return t
    bitmask = torch.from_numpy(np.packbits(nonzero.numpy()))  # (ceil(numel / 8),) uint8
    return {"shape": list(t.shape), "bitmask": bitmask, "values": flat[nonzero].clone()}


def decompress_tensor(entry: Mapping[str, Any] | Tensor) -> Tensor:
    if isinstance(entry, Tensor):
        return entry
    shape, values = list(entry["shape"]), entry["values"]
    numel = int(np.prod(shape, dtype=np.int64))
    bits = np.unpackbits(entry["bitmask"].numpy(), count=numel).astype(bool)
    if int(bits.sum()) != values.numel():
        raise ValueError(
            f"corrupt sparse tensor: bitmask has {int(bits.sum())} bits set for "
            f"{values.numel()} values"
        )
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[torch.from_numpy(bits)] = values
    return flat.reshape(shape)


def compress_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    return {k: compress_tensor(v) for k, v in state_dict.items()}


def decompress_state_dict(sparse: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: decompress_tensor(v) for k, v in sparse.items()}


def weights_checkpoint(
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    compressed: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A weights-only checkpoint (no optimizer state) that eval and predict load."""
    sd = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    ckpt: dict[str, Any] = {"pointseg_config": config, **dict(extra or {})}
    if compressed:
        ckpt[FORMAT_KEY] = SPARSE_FORMAT
        ckpt["sparse_state_dict"] = compress_state_dict(sd)
    else:
        ckpt["state_dict"] = sd
    return plain(ckpt)


def save_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` of ``plain(ckpt)`` to a hidden temporary file in the same folder, fsync,
    then rename: a run killed while saving leaves the previous checkpoint intact, never a
    truncated one. Every checkpoint pointseg writes (Lightning's, through
    ``pointseg.callbacks.AtomicCheckpointIO``, and pointseg-prune's) is written here, so it
    loads with ``torch.load(weights_only=True)``."""
    ckpt = plain(dict(ckpt))  # before the file is touched: a bad entry raises here
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def _last_reason(err: Exception) -> str:
    """torch's reason in one line (its weights-only messages span many lines of advice)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the"))]
    reason = (useful or lines or [""])[-1].split("WeightsUnpickler error: ")[-1]
    return f"{type(err).__name__}: {reason.split('. ')[0]}"


# what ``torch.load(weights_only=True)`` rebuilds as it is (besides containers and tensors)
_LEAVES = (str, bytes, bool, int, float, complex, type(None), torch.dtype, torch.device)


def plain(value: Any, *, where: str = "checkpoint") -> Any:
    """``value`` as tensors and plain containers only, so it loads with ``weights_only=True``.

    OmegaConf containers become dicts/lists (resolved), numpy scalars Python numbers and
    paths strings; dicts, ``OrderedDict``, lists, tuples, sets and tensors are kept. Anything
    else raises ``TypeError`` naming its place (``where``): storing it would make every
    load of the file need ``trust_checkpoint=true``.
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    # exact types: numpy scalars and enums subclass float/int/str but pickle as their class
    if isinstance(value, Tensor) or type(value) in _LEAVES or type(value) is torch.Size:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, DictConfig | ListConfig):
        return plain(OmegaConf.to_container(value, resolve=True), where=where)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            out[plain(k, where=f"a key of {where}")] = plain(v, where=f"{where}[{k!r}]")
        return OrderedDict(out) if isinstance(value, OrderedDict) else out
    if isinstance(value, list | tuple | set):
        items = [plain(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple | set):
            return tuple(items) if isinstance(value, tuple) else set(items)
        return items
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which "
        "torch.load(weights_only=True) refuses; store it as a tensor or plain container"
    )
