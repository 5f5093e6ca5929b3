"""Submanifold sparse convs with few input columns as one gather and one GEMM (im2col).

A submanifold conv with ``kv`` kernel offsets and ``C_in`` input channels is, per output row, a
dot product of the ``kv * C_in`` features of its neighbours (zeros where a neighbour is absent)
with the flattened weight. For the stem of a U-Net (5x5x5 kernel, 3-6 input channels) those
columns are few: gathering them once and running a single GEMM replaces spconv's 124 per-offset
GEMMs, whose tiny ``C_in`` keeps them off the tensor cores. On an H100 at ~200 k voxels spconv's
Native path took 2 ms forward and 17 ms backward for such a stem.

The rulebook is spconv's own (``indice_pairs`` (2, kv, N), ``indice_pair_num`` (kv,)), in its
submanifold convention: counts are stored up to the centre offset and mirrored after it, and the
centre pairs every row with itself. Weights are spconv's KRSC layout ``(C_out, *kernel, C_in)``,
whose flattening ``(C_out, kv * C_in)`` matches the gathered columns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pointseg.sparse.rulebook import offset_counts

MAX_COLUMNS = 1024  # kv * C_in: a 5x5x5 kernel on up to 8 channels
MAX_BYTES = 4 << 30  # gathered columns and their int64 neighbour map, per call ...
MAX_MEMORY_FRACTION = 0.125  # ... and at most this share of the GPU's memory
_DEVICE_BYTES: dict[int, int] = {}


def byte_limit(device: torch.device) -> int:
    """Most bytes one call may gather on ``device``: ``MAX_BYTES``, less on small GPUs."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = _DEVICE_BYTES.get(index)
    if total is None:
        total = _DEVICE_BYTES[index] = torch.cuda.get_device_properties(index).total_memory
    return min(MAX_BYTES, int(total * MAX_MEMORY_FRACTION))


def usable(features: Tensor, filters: Tensor, subm: bool, inverse: bool) -> bool:
    """Whether ``forward``/``backward`` should take this conv: a CUDA submanifold conv whose
    gathered columns are few and fit in ``byte_limit``; others stay on spconv's path."""
    if not (subm and not inverse and features.is_cuda and features.dim() == 2):
        return False
    cols = filters[0].numel()  # kv * C_in
    kv = cols // filters.shape[-1]
    per_row = cols * features.element_size() + kv * 8  # gathered columns + neighbour map
    return cols <= MAX_COLUMNS and features.shape[0] * per_row <= byte_limit(features.device)


def neighbour_map(pairs: Tensor, counts: Tensor, num_rows: int) -> Tensor:
    """(num_rows, kv) int64: the input row of each output row's neighbour at each offset, or
    ``num_rows`` (a zero row appended to the features) where there is none."""
    kv, width = pairs.shape[1], pairs.shape[2]
    center = kv // 2
    device = pairs.device
    n = torch.zeros(kv, dtype=torch.int64)  # pairs per offset; the centre is set below
    for k, count in offset_counts(counts, subm=True):
        n[k] = count
    n = n.to(device)
    valid = torch.arange(width, device=device)[None, :] < n[:, None]  # (kv, width)
    nbr = torch.full((num_rows, kv), num_rows, dtype=torch.int64, device=device)
    offset = torch.arange(kv, device=device)[:, None].expand(kv, width)[valid]
    nbr[pairs[1][valid].long(), offset] = pairs[0][valid].long()
    nbr[:, center] = torch.arange(num_rows, device=device)
    return nbr


def _columns(features: Tensor, nbr: Tensor) -> Tensor:
    """(N, kv * C_in) gathered neighbour features, zeros for absent neighbours."""
    padded = torch.cat([features, features.new_zeros((1, features.shape[1]))])
    return padded[nbr].reshape(nbr.shape[0], -1)


def forward(features: Tensor, filters: Tensor, pairs: Tensor, counts: Tensor) -> Tensor:
    """(N, C_out) output of a submanifold conv of ``features`` (N, C_in)."""
    nbr = neighbour_map(pairs, counts, features.shape[0])
    weight = filters.reshape(filters.shape[0], -1)  # (C_out, kv * C_in)
    return torch.mm(_columns(features.contiguous(), nbr), weight.t())


def backward(
    features: Tensor,
    filters: Tensor,
    grad_out: Tensor,
    pairs: Tensor,
    counts: Tensor,
    *,
    input_grad: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """(gradient wrt features or None, gradient wrt filters) of ``forward``."""
    nbr = neighbour_map(pairs, counts, features.shape[0])
    grad_out = grad_out.contiguous()
    cols = _columns(features.contiguous(), nbr)
    grad_w = torch.mm(grad_out.t(), cols).reshape(filters.shape)
    grad_in = None
    if input_grad:
        weight = filters.reshape(filters.shape[0], -1)
        grad_cols = torch.mm(grad_out, weight).reshape(-1, features.shape[1])  # (N * kv, C_in)
        grad_in = features.new_zeros((features.shape[0] + 1, features.shape[1]))
        grad_in.index_add_(0, nbr.reshape(-1), grad_cols)
        grad_in = grad_in[:-1]
    return grad_in, grad_w
