"""Structured (channel) pruning of ``SparseUNet``: rank channels, remove them, rebuild smaller.

The network's channels fall into groups that must be pruned together:

- ``stem``: the stem's output, also the level-0 skip;
- ``down.i``: encoder stage i's stream, written by its strided conv and, through the identity
  shortcuts, by the last conv of every residual block (also the skip of level i + 1);
- ``up.j``: the inverse conv of decoder stage j (first part of the concatenation);
- ``dec.j``: decoder stage j's stream: its first block's projection shortcut and the last
  conv of every block (then the next inverse conv, or the head);
- ``enc_mid.i.b`` / ``dec_mid.j.b``: the inner width of one residual block;
- ``point_mid`` / ``point``: the point branch's two layers (the second feeds the head, after
  the last decoder's channels).

Every channel of a group ends in a BatchNorm. Zeroing the BN scale and shift of a channel in
all of its group's BNs makes that channel exactly 0 after the ReLU (in eval mode), so removing
it, with the matching input slices of every consumer (next convs, concatenations, shortcuts,
the head), computes the same function: ``zero_channels`` is that reference. Channels are
ranked by mean |gamma| over the group's BNs (``bn``) or by the mean L1 norm of the filters
that write them (``l1``); every group keeps the same fraction, at least one channel.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pointseg.models.sparse_unet import SparseUNet
from pointseg.prune.unstructured import check_amount


@dataclass
class ChannelGroup:
    name: str  # e.g. "down.1", "enc_mid.1.0"
    key: tuple[Any, ...]  # where its width sits in SparseUNet.widths: ("down", 1)
    width: int
    producers: list[str]  # modules that write these channels (convs/linears, BNs)


@dataclass
class ChannelPlan:
    groups: dict[str, ChannelGroup]
    inputs: dict[str, list[str]]  # module -> groups concatenated at its input, in order


def channel_plan(net: SparseUNet) -> ChannelPlan:
    """The channel groups of ``net`` and which groups feed every conv/linear."""
    if not isinstance(net, SparseUNet):
        raise TypeError(f"structured pruning needs a SparseUNet, got {type(net).__name__}")
    w, n, names = net.widths, net.num_stages, {k for k, _ in net.named_modules()}
    groups: dict[str, ChannelGroup] = {}
    inputs: dict[str, list[str]] = {}

    def group(name: str, key: tuple, producers: list[str]) -> str:
        width = w[key[0]] if len(key) == 1 else w[key[0]][key[1]]
        width = width[key[2]] if len(key) == 3 else width
        groups[name] = ChannelGroup(name, key, int(width), producers)
        return name

    def blocks(prefix: str, stream: str, mids: str, index: int, first_in: list[str]) -> None:
        b = 0
        while f"{prefix}.{b}.conv1" in names:
            mid = group(f"{mids}.{index}.{b}", (mids, index, b), [f"{prefix}.{b}.conv1"])
            groups[mid].producers.append(f"{prefix}.{b}.bn1")
            inputs[f"{prefix}.{b}.conv1"] = first_in if b == 0 else [stream]
            inputs[f"{prefix}.{b}.conv2"] = [mid]
            groups[stream].producers += [f"{prefix}.{b}.conv2", f"{prefix}.{b}.bn2"]
            if f"{prefix}.{b}.proj" in names:
                groups[stream].producers += [f"{prefix}.{b}.proj.0", f"{prefix}.{b}.proj.1"]
                inputs[f"{prefix}.{b}.proj.0"] = first_in if b == 0 else [stream]
            b += 1

    level = [group("stem", ("stem",), ["stem.conv", "stem.bn"])]  # level -> its group
    inputs["stem.conv"] = []  # the raw input features: never pruned
    for i in range(n):
        g = group(f"down.{i}", ("down", i), [f"encoders.{i}.0.conv", f"encoders.{i}.0.bn"])
        inputs[f"encoders.{i}.0.conv"] = [level[i]]
        blocks(f"encoders.{i}.1", g, "enc_mid", i, [g])
        level.append(g)
    prev = level[n]
    for j in range(n):
        up = group(f"up.{j}", ("up", j), [f"ups.{j}.conv", f"ups.{j}.bn"])
        inputs[f"ups.{j}.conv"] = [prev]
        dec = group(f"dec.{j}", ("dec", j), [])
        blocks(f"decoders.{j}", dec, "dec_mid", j, [up, level[n - j - 1]])
        prev = dec
    inputs["head"] = [prev]
    if net.point_mlp is not None:  # the point branch: two Linear + BN layers, then the head
        mid = group("point_mid", ("point_mid",), ["point_mlp.0", "point_mlp.1"])
        out = group("point", ("point",), ["point_mlp.3", "point_mlp.4"])
        inputs["point_mlp.0"] = []  # the raw point inputs: never pruned
        inputs["point_mlp.3"] = [mid]
        inputs["head"] = [prev, out]
    return ChannelPlan(groups, inputs)


@torch.no_grad()
def channel_scores(net: SparseUNet, plan: ChannelPlan, *, by: str = "bn") -> dict[str, Tensor]:
    """Importance of every channel of every group: (width,) float32 per group."""
    if by not in ("bn", "l1"):
        raise ValueError(f"prune.criterion must be 'bn' or 'l1', got {by!r}")
    out = {}
    for name, g in plan.groups.items():
        parts = []
        for p in g.producers:
            mod = net.get_submodule(p)
            is_bn = isinstance(mod, nn.BatchNorm1d)
            if by == "bn" and is_bn:
                parts.append(mod.weight.abs())
            elif by == "l1" and not is_bn:
                parts.append(mod.weight.abs().reshape(g.width, -1).mean(1))
        out[name] = torch.stack(parts).mean(0).float()  # (width,)
    return out


def select_channels(scores: Mapping[str, Tensor], amount: float) -> dict[str, Tensor]:
    """Sorted indices of the channels each group keeps: the best ``1 - amount``, at least 1."""
    amount = check_amount(amount)
    keep = {}
    for name, s in scores.items():
        k = max(1, round(len(s) * (1.0 - amount)))
        top = torch.sort(s, descending=True, stable=True).indices[:k]
        keep[name] = torch.sort(top).values
    return keep


@torch.no_grad()
def zero_channels(net: SparseUNet, plan: ChannelPlan, keep: Mapping[str, Tensor]) -> None:
    """In place: every channel not kept outputs exactly 0 (its BN scale and shift set to 0)."""
    for name, g in plan.groups.items():
        drop = torch.ones(g.width, dtype=torch.bool)
        drop[keep[name]] = False
        for p in g.producers:
            mod = net.get_submodule(p)
            if isinstance(mod, nn.BatchNorm1d):
                mod.weight[drop] = 0.0
                mod.bias[drop] = 0.0


def pruned_widths(net: SparseUNet, plan: ChannelPlan, keep: Mapping[str, Tensor]) -> dict:
    widths = copy.deepcopy(net.widths)
    for name, g in plan.groups.items():
        k = len(keep[name])
        if len(g.key) == 1:
            widths[g.key[0]] = k
        elif len(g.key) == 2:
            widths[g.key[0]][g.key[1]] = k
        else:
            widths[g.key[0]][g.key[1]][g.key[2]] = k
    return widths


@torch.no_grad()
def slice_state_dict(
    net: SparseUNet, plan: ChannelPlan, keep: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``net``'s state dict with the removed channels cut out of every tensor."""
    out_of = {p: g.name for g in plan.groups.values() for p in g.producers}
    sd = {}
    for key, t in net.state_dict().items():
        mod, _, leaf = key.rpartition(".")
        if mod in out_of and t.ndim >= 1:  # output channels: dim 0 (conv, linear, BN vectors)
            t = t.index_select(0, keep[out_of[mod]])
        if mod in plan.inputs and leaf == "weight" and plan.inputs[mod]:
            idx, offset = [], 0
            for name in plan.inputs[mod]:
                idx.append(keep[name] + offset)
                offset += plan.groups[name].width
            if offset != t.shape[-1]:
                raise RuntimeError(f"{key}: {t.shape[-1]} input channels, plan says {offset}")
            t = t.index_select(t.ndim - 1, torch.cat(idx))  # input channels: last dim
        sd[key] = t.clone()
    return sd


def prune_channels(
    net: SparseUNet, net_cfg: Mapping[str, Any], keep: Mapping[str, Tensor]
) -> tuple[SparseUNet, dict[str, Any]]:
    """A new, smaller network without the removed channels, and its config (with ``widths``)."""
    import hydra

    plan = channel_plan(net)
    cfg = dict(net_cfg)
    cfg["widths"] = pruned_widths(net, plan, keep)
    small = hydra.utils.instantiate(cfg)
    try:
        small.load_state_dict(slice_state_dict(net, plan, keep))
    except RuntimeError as err:
        # e.g. a decoder block whose concatenated input width equals its output width loses
        # its projection shortcut: keep one more channel somewhere or prune less
        raise RuntimeError(f"the pruned widths {cfg['widths']} do not fit: {err}") from err
    return small.train(net.training), cfg
