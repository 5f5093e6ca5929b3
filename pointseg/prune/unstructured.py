"""Unstructured pruning: global magnitude masks, a cubic sparsity schedule, masked fine-tuning.

Prunable tensors are the weights of every sparse convolution (spconv layout
``[out, kD, kH, kW, in]``) and every ``nn.Linear`` (shortcut projections and the head); BatchNorm
parameters and biases are never pruned. The masks are chosen globally: the smallest
``amount`` of all prunable weights by absolute value, whatever their layer or layout, so
layers with many redundant weights give up more of them. Masks are applied to the weights
in place (no re-parametrisation), so a pruned network is a plain network whose state dict
loads anywhere; ``MaskedFineTuning`` re-applies them after every optimiser step so pruned
weights stay exactly zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pytorch_lightning as pl
import spconv.pytorch as spconv
import torch
from torch import Tensor, nn

from pointseg.sparse import SparseConvNd

Masks = dict[str, Tensor]  # parameter name (in the pruned module) -> bool mask, same shape


def prunable_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of sparse convs and linear layers, by their name in ``module``."""
    out = {}
    for name, mod in module.named_modules():
        if isinstance(mod, spconv.conv.SparseConvolution | SparseConvNd | nn.Linear):
            out[f"{name}.weight" if name else "weight"] = mod.weight
    return out


def check_amount(amount: float, *, field: str = "prune.amount") -> float:
    try:
        value = float(amount)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be a number in [0, 1), got {amount!r}") from None
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise ValueError(
            f"{field} must be in [0, 1) (the fraction to remove, e.g. {field}=0.8), got {amount!r}"
        )
    return value


@torch.no_grad()
def global_magnitude_masks(weights: Mapping[str, Tensor], amount: float) -> Masks:
    """Masks keeping the ``1 - amount`` largest |w| over all tensors together (ties: by order)."""
    amount = check_amount(amount)
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().reshape(-1).float() for n in names])  # (P,)
    n_prune = int(round(amount * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune:
        # stable sort: equal magnitudes (e.g. already-pruned zeros) go in a fixed order
        order = torch.sort(flat, stable=True).indices
        keep[order[:n_prune]] = False
    masks, start = {}, 0
    for n in names:
        size = weights[n].numel()
        masks[n] = keep[start : start + size].reshape(weights[n].shape)
        start += size
    return masks


@torch.no_grad()
def apply_masks(module: nn.Module, masks: Mapping[str, Tensor]) -> None:
    params = dict(module.named_parameters())
    for name, mask in masks.items():
        # masked_fill writes +0.0 (w * 0 would leave -0.0 for negative w, which is not a zero
        # bit pattern, so the compressed format would have to store it)
        params[name].masked_fill_(~mask.to(params[name].device), 0.0)


def magnitude_prune(module: nn.Module, amount: float) -> None:
    """Zero the ``amount`` smallest-magnitude prunable weights of ``module``, over all layers
    together (global magnitude masks, applied once)."""
    apply_masks(module, global_magnitude_masks(prunable_weights(module), amount))


@dataclass(frozen=True)
class Sparsity:
    zeros: int
    total: int

    @property
    def fraction(self) -> float:
        return self.zeros / max(self.total, 1)


def weight_sparsity(module: nn.Module) -> Sparsity:
    """Exact zeros among the prunable weights."""
    ws = prunable_weights(module).values()
    return Sparsity(sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws))


def cubic_sparsity(step: int, *, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - t / T)^3, then s_f from step T on."""
    if total_steps <= 0 or step >= total_steps:
        return final
    return final + (initial - final) * (1.0 - step / total_steps) ** 3


class MaskedFineTuning(pl.Callback):
    """Global magnitude pruning during fine-tuning, on a cubic schedule.

    Every ``update_every`` optimiser steps during the first ``ramp_steps``, the masks are
    recomputed for the scheduled sparsity (pruned weights are zero, so they stay pruned); after
    every step the masks are applied again, so pruned weights stay exactly zero whatever the
    optimiser does (momentum, weight decay). ``ramp_steps=0`` holds ``final`` from the start.
    """

    def __init__(
        self,
        *,
        final: float,
        ramp_steps: int,
        update_every: int = 1,
        initial: float = 0.0,
        prefix: str = "net.",
    ) -> None:
        self.final, self.initial = check_amount(final), check_amount(initial, field="initial")
        self.ramp_steps, self.update_every = int(ramp_steps), max(1, int(update_every))
        self.prefix = prefix
        self.masks: Masks = {}
        self.current = 0.0

    def _weights(self, pl_module: nn.Module) -> dict[str, Tensor]:
        return {n: p for n, p in prunable_weights(pl_module).items() if n.startswith(self.prefix)}

    def update(self, pl_module: nn.Module, step: int) -> None:
        target = cubic_sparsity(
            step, total_steps=self.ramp_steps, final=self.final, initial=self.initial
        )
        if not self.masks or target != self.current:
            self.masks = global_magnitude_masks(self._weights(pl_module), target)
            self.current = target
        apply_masks(pl_module, self.masks)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.update(pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimiser steps taken so far
        if step % self.update_every == 0 or step >= self.ramp_steps:
            self.update(pl_module, step)
        else:
            apply_masks(pl_module, self.masks)
        pl_module.log("prune/sparsity", self.current, batch_size=1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.update(pl_module, max(trainer.global_step, self.ramp_steps))  # final sparsity


class L1Penalty(pl.Callback):
    """Adds the subgradient of ``l1 * sum|w|`` (plus ``group * sum_c ||w_c||_2`` over output
    channels c, a group lasso) to the gradients of the prunable weights after every backward.

    The loss itself is untouched, so this works with any LightningModule; the penalty drives
    unimportant weights (or whole filters) towards zero before they are thresholded.
    """

    def __init__(self, *, l1: float, group: float = 0.0, prefix: str = "net.") -> None:
        if l1 < 0 or group < 0:
            raise ValueError(f"prune.l1 and prune.group_lasso must be >= 0, got {l1}, {group}")
        self.l1, self.group, self.prefix = float(l1), float(group), prefix

    def params(self, pl_module: nn.Module) -> Iterable[Tensor]:
        return (p for n, p in prunable_weights(pl_module).items() if n.startswith(self.prefix))

    @torch.no_grad()
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for w in self.params(pl_module):
            if w.grad is None:
                continue
            if self.l1:
                w.grad.add_(torch.sign(w), alpha=self.l1)
            if self.group:
                norms = w.reshape(len(w), -1).norm(dim=1).clamp_min(1e-12)  # (out,)
                shape = (len(w),) + (1,) * (w.ndim - 1)
                w.grad.add_(w / norms.reshape(shape), alpha=self.group)

    def penalty(self, pl_module: nn.Module) -> float:
        total = 0.0
        for w in self.params(pl_module):
            total += self.l1 * float(w.abs().sum())
            total += self.group * float(w.reshape(len(w), -1).norm(dim=1).sum())
        return total
