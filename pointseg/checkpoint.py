"""Reading and writing pointseg checkpoints, dense or compressed, in one place.

A checkpoint is a dict of plain containers and tensors (it loads with ``weights_only=True``)
holding ``pointseg_config`` (the resolved run config, from which the model is rebuilt) and the
weights, either as a Lightning ``state_dict`` or, in a compressed checkpoint
(``pointseg_format: sparse-bitmask-v1``), as ``sparse_state_dict``: every tensor that is
mostly zeros is stored as a packed bitmask of its non-zero elements plus their values in
order (1 bit + the non-zero values instead of 32 bits per float32 element); the others stay
dense. The round trip is bit-exact: "non-zero" means any bit set, so ``-0.0`` and NaN
payloads survive.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

FORMAT_KEY = "pointseg_format"
SPARSE_FORMAT = "sparse-bitmask-v1"
# integer views of float dtypes, to test "any bit set" (bit-exact zero test)
_BITS = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float64: torch.int64,
}


def load_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """A pointseg checkpoint with a dense ``state_dict``, whatever its storage format."""
    path = Path(path)
    if not path.is_file():
        # name what the folder does hold (a prune run has pruned*.ckpt, no best.ckpt)
        there = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
        one = "it" if len(there) == 1 else "one of them"
        fix = (
            f"{path.parent} holds {', '.join(there)}: pass {one} as ckpt_path"
            if there
            else "pass ckpt_path=<run_dir>/checkpoints/best.ckpt"
        )
        raise FileNotFoundError(f"checkpoint {path} does not exist; {fix}")
    try:
        # our own checkpoints hold plain config containers next to the weights
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}; is it a complete .ckpt?") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a pointseg checkpoint (a {type(ckpt).__name__})")
    fmt = ckpt.get(FORMAT_KEY)
    if fmt is not None:
        if fmt != SPARSE_FORMAT or "sparse_state_dict" not in ckpt:
            raise ValueError(
                f"{path}: unknown checkpoint format {fmt!r} (this pointseg reads "
                f"{SPARSE_FORMAT!r}); write it again with this version's pointseg-prune"
            )
        ckpt = dict(ckpt)
        ckpt["state_dict"] = decompress_state_dict(ckpt.pop("sparse_state_dict"))
    if "pointseg_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a pointseg checkpoint (no stored config or state_dict); "
            "use a .ckpt written by pointseg-train or pointseg-prune"
        )
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


def stored_recipe(
    ckpt: Mapping[str, Any],
    *,
    data_overrides: Mapping[str, Any] | None = None,
    where: str = "checkpoint",
) -> Any:
    """The checkpoint's ``FeatureRecipe``: the one written at training time, or, with data
    overrides or in a checkpoint from before recipes were stored, one made from the stored
    data config (keeping the stored reader options)."""
    from omegaconf import OmegaConf

    from pointseg.segmenter import RECIPE_KEY, FeatureRecipe

    stored = ckpt.get(RECIPE_KEY)
    if stored is not None and not data_overrides:
        return FeatureRecipe.from_dict(stored, where=where)
    data = OmegaConf.merge(OmegaConf.create(ckpt["pointseg_config"]["data"]), data_overrides or {})
    reader = dict(stored.get("reader") or {}) if stored is not None else {}
    plain = OmegaConf.to_container(data, resolve=True)
    return FeatureRecipe.from_data_config(plain, reader=reader)


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
    ckpt: dict[str, Any] = {"pointseg_config": _plain(config), **dict(extra or {})}
    if compressed:
        ckpt[FORMAT_KEY] = SPARSE_FORMAT
        ckpt["sparse_state_dict"] = compress_state_dict(sd)
    else:
        ckpt["state_dict"] = sd
    return ckpt


def save_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename (never a half file)."""
    from pointseg.callbacks import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint(dict(ckpt), path)
    return Path(path)


def _plain(value: Any) -> Any:
    """Config containers as plain dicts/lists (``weights_only`` loading accepts nothing else)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
