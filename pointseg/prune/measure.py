"""What a pruning run measures: val mIoU, CPU latency, multiply-accumulates, sizes on disk."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import spconv.pytorch as spconv
import torch
from torch import nn

from pointseg.metrics import scores
from pointseg.models.lite_unet import GroupedPointwise
from pointseg.models.sparse_unet import forward_batch
from pointseg.sparse import SparseConvNd
from pointseg.sparse.rulebook import offset_counts


def val_miou(net: nn.Module, recipe: Any, scenes: Any, *, ignore_index: int) -> float:
    """Point-level mIoU of ``net`` over the raw ``scenes`` of a dataset, through a
    ``Segmenter`` with the checkpoint's recipe: what ``pointseg-eval`` computes."""
    from pointseg.segmenter import Segmenter, dataset_scenes, score_scenes

    was_training = net.training
    device = next(net.parameters()).device
    try:
        segmenter = Segmenter(net, recipe, device=device)
        samples, n = dataset_scenes(scenes)
        confmat, _ = score_scenes(segmenter, samples, ignore_index=ignore_index, total=n)
    finally:
        net.train(was_training)
    return float(scores(confmat).miou)


@dataclass(frozen=True)
class Latency:
    median_ms: float
    min_ms: float
    runs: int


@torch.inference_mode()
def compare_latency(
    nets: Mapping[str, nn.Module],
    batch: Mapping[str, Any],
    *,
    warmup: int = 2,
    runs: int = 7,
    progress: Callable[[], None] | None = None,
) -> dict[str, Latency]:
    """Forward time of every net on the same batch, in one process, runs interleaved
    (net A, net B, net A, ...) so that load from other processes hits all of them alike."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"latency runs must be >= 1 and warmup >= 0, got {runs}, {warmup}")
    times: dict[str, list[float]] = {name: [] for name in nets}
    for net in nets.values():
        net.eval()
    for r in range(warmup + runs):
        order = list(nets.items()) if r % 2 == 0 else list(reversed(nets.items()))
        for name, net in order:
            t0 = time.perf_counter()
            forward_batch(net, batch)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt * 1000.0)
        if progress is not None:
            progress()
    return {name: Latency(statistics.median(t), min(t), len(t)) for name, t in times.items()}


@torch.inference_mode()
def count_macs(net: nn.Module, batch: Mapping[str, Any]) -> int:
    """Multiply-accumulates of one forward: rulebook pairs x C_in x C_out / groups for every
    sparse conv, rows x C_in x C_out for every linear layer.

    Pairs are every offset's, read as ``rulebook.offset_counts`` reads them (spconv's
    submanifold rulebooks store the counts up to the centre only, pointseg's mirror them), plus
    one pair a site for a submanifold conv's centre offset, which both leave out of the counts.
    """
    total = 0

    def conv_hook(mod, inputs, out) -> None:
        nonlocal total
        rb = out.indice_dict[mod.indice_key]
        pairs = sum(n for _, n in offset_counts(rb.indice_pair_num, rb.is_subm))
        if rb.is_subm:
            pairs += int(out.features.shape[0])  # the centre: every site with itself
        total += pairs * mod.in_channels * mod.out_channels // getattr(mod, "groups", 1)

    def linear_hook(mod, inputs, out) -> None:
        nonlocal total
        groups = getattr(mod, "groups", 1)  # a grouped pointwise layer (models/lite_unet.py)
        total += inputs[0].shape[0] * mod.in_features * mod.out_features // groups

    handles = []
    for mod in net.modules():
        if isinstance(mod, spconv.conv.SparseConvolution | SparseConvNd):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear | GroupedPointwise):
            handles.append(mod.register_forward_hook(linear_hook))
    try:
        net.eval()
        forward_batch(net, batch)
    finally:
        for h in handles:
            h.remove()
    return total


def serialized_size(obj: Any) -> int:
    """Bytes ``torch.save`` writes for ``obj`` (what the file on disk would hold)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def nonzero_parameters(net: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in net.parameters())


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
