"""The sparse tensor pointseg's networks take: validated voxel indices and features, and the
sparse configuration its convs run on.

spconv's ``SparseConvTensor`` is the container (features, indices, spatial shape, batch size and
the per-forward rulebook cache ``indice_dict``). ``sparse_tensor`` records the configuration in
force (``config.get_config()``, or its ``config=``) in ``indice_dict`` under ``CONFIG_KEY``:
spconv hands that dict on to every tensor derived from this one (``replace_feature``, its own
convs, pools and tables, ``sparse_conv``), so all of them run on the same record
(``config_of``), whatever the process default becomes meanwhile. Traps guarded here:

- indices that are not C-contiguous are read by spconv as if they were (``nonzero().int()`` is
  column-major): silently wrong rulebooks, so ``sparse_tensor`` makes them contiguous;
- float64 features are refused (the network is float32; spconv's CPU float64 path is wrong);
- duplicate voxels are refused (a rulebook hash keeps one of them);
- a ``spatial_shape`` that would vanish at the coarsest level is padded (``spatial_shape_for``).
"""

from __future__ import annotations

import torch
from spconv.pytorch import SparseConvTensor
from torch import Tensor

from pointseg.sparse.config import SparseConfig, get_config

__all__ = [
    "CONFIG_KEY",
    "SparseConvTensor",
    "check_features",
    "check_indices",
    "config_of",
    "sparse_tensor",
    "spatial_shape_for",
]

# The indice_dict entry holding a tensor's SparseConfig; no conv may use it as its indice_key.
CONFIG_KEY = "pointseg.sparse.config"


def config_of(x: SparseConvTensor) -> SparseConfig:
    """The configuration ``x``'s convs run on: the one recorded when ``x`` (or the tensor it
    derives from) was made. A tensor made without ``sparse_tensor`` (plain spconv) records the
    process default at its first conv, so it too is read once."""
    config = x.indice_dict.get(CONFIG_KEY)
    if config is None:
        config = x.indice_dict.setdefault(CONFIG_KEY, get_config())
    if not isinstance(config, SparseConfig):
        raise TypeError(f"indice_dict[{CONFIG_KEY!r}] holds {config!r}, not a SparseConfig")
    return config


def check_features(feat: Tensor, num_rows: int | None = None) -> None:
    """Refuse features the network cannot take: not (M, C), or not float32 / float16."""
    if not isinstance(feat, Tensor) or feat.dim() != 2:
        raise ValueError(
            f"features must be a 2-D tensor (M, C), got {getattr(feat, 'shape', feat)}"
        )
    if feat.dtype == torch.float64:
        raise TypeError(
            "float64 features are not supported: the network runs in float32 (its weights are "
            "float32 and spconv is only validated here in float32). Cast with feat.float()."
        )
    if feat.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"features must be float32 (or float16), got {feat.dtype}")
    if num_rows is not None and feat.shape[0] != num_rows:
        raise ValueError(f"features have {feat.shape[0]} rows but indices have {num_rows}")


def check_indices(indices: Tensor, batch_size: int | None = None, *, unique: bool = False) -> None:
    """Validate voxel indices: int32, shape (M, 4) as [batch, x, y, z], non-negative.

    ``unique=True`` also rejects repeated voxels, which spconv silently mishandles (its hash table
    keeps one of them, so submanifold outputs of duplicates differ). Costs ~3 ms per 80k rows.
    """
    if not isinstance(indices, Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype != torch.int32:
        raise TypeError(f"indices must be int32 (spconv only supports int32), got {indices.dtype}")
    if indices.dim() != 2 or indices.shape[1] != 4:
        raise ValueError(f"indices must have shape (M, 4) [batch, x, y, z], got {indices.shape}")
    if indices.shape[0] == 0:
        raise ValueError("indices are empty: a sparse tensor needs at least one voxel")
    if bool((indices < 0).any()):
        raise ValueError("indices must be non-negative (shift coordinates to start at 0)")
    if batch_size is not None:
        top = int(indices[:, 0].max())
        if batch_size < 1 or top >= batch_size:
            raise ValueError(f"batch index {top} out of range for batch_size={batch_size}")
    if unique and _count_unique_rows(indices) != indices.shape[0]:
        raise ValueError(
            "indices contain duplicate voxels: merge points per voxel (e.g. average their "
            "features) before the network"
        )


def _count_unique_rows(indices: Tensor) -> int:
    """Distinct (b, x, y, z) rows, via one int64 key per row (much faster than unique(dim=0))."""
    rows = indices.long()  # (M, 4)
    extent = [int(e) + 1 for e in rows.amax(dim=0).tolist()]
    if extent[0] * extent[1] * extent[2] * extent[3] >= 2**63:
        return int(torch.unique(indices, dim=0).shape[0])  # the key would overflow int64
    key = ((rows[:, 0] * extent[1] + rows[:, 1]) * extent[2] + rows[:, 2]) * extent[3] + rows[:, 3]
    return int(torch.unique(key).numel())


def spatial_shape_for(indices: Tensor, levels: int) -> list[int]:
    """Grid extent (x, y, z) for ``indices``, valid through ``levels`` k=2/s=2 downsamplings.

    Max coordinate + 1, rounded up to a multiple of ``2**levels`` (at least ``2**levels``): each
    downsampling halves it exactly, so the coarsest level keeps >= 1 cell per axis even for a flat
    scene (all z == 0) or a single voxel, where spconv would fail with "out spatial shape ...
    zero". That rounding is the only margin needed: submanifold convs never leave the input sites
    and inverse convs reuse the stored rulebooks.
    """
    check_indices(indices)
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    step = 2**levels
    extent = indices[:, 1:].amax(dim=0).tolist()  # (3,) max x, y, z over the whole batch
    return [(int(e) // step + 1) * step for e in extent]


def sparse_tensor(
    feat: Tensor,
    indices: Tensor,
    batch_size: int,
    *,
    levels: int,
    config: SparseConfig | None = None,
) -> SparseConvTensor:
    """Validated ``SparseConvTensor`` (contiguous, unique int32 indices) for ``levels`` levels,
    recording ``config`` (default: the process default now) for all its convs."""
    check_indices(indices, batch_size, unique=True)
    check_features(feat, num_rows=indices.shape[0])
    indices = indices.contiguous()  # spconv reads the raw buffer as row-major
    shape = spatial_shape_for(indices, levels)
    config = get_config() if config is None else config
    if not isinstance(config, SparseConfig):
        raise TypeError(f"config must be a SparseConfig, got {config!r}")
    return SparseConvTensor(
        feat.contiguous(), indices, shape, batch_size, indice_dict={CONFIG_KEY: config}
    )
