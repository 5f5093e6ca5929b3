"""Pruning methods, each a class that a ``prune:`` config names by ``_target_``.

``conf/prune/<name>.yaml`` holds ``_target_: pointseg.prune.methods.<Class>`` and the method's
options; ``PruneMethod.from_config`` builds it and checks every option, naming the
``prune.<field>`` at fault. The pipeline (``pointseg.prune.run``) is the same for every method;
a method supplies what differs:

- ``one_shot``: the dense model pruned to an amount with no training (the sweep's points);
- ``prune_and_finetune``: the pruned, fine-tuned model, recording its stages;
- ``sparsity``: the x of the trade-off curve;
- ``describe``: one line for the report.

A new method is a subclass here (or anywhere importable) and a yaml file in ``conf/prune``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import hydra
from omegaconf import DictConfig, OmegaConf

from pointseg.prune import structured, unstructured
from pointseg.prune.budget import FinetuneBudget

Fit = Callable[..., None]  # fit(module, callbacks, *, epochs, stage)
Evaluate = Callable[[Any], float]  # val mIoU of a module


@dataclass
class PruneContext:
    """What a method's fine-tuning needs from the pipeline."""

    dense: Any  # the checkpoint's LightningModule
    stored: DictConfig  # the checkpoint's run config
    budget: FinetuneBudget  # the trained run's epoch length and step count
    fit: Fit
    evaluate: Evaluate
    recalibrate: Callable[[Any, str], None]  # fresh BN statistics, then a trajectory point
    trajectory: list[dict[str, Any]]

    def record(self, stage: str, module: Any, sparsity: float) -> None:
        """A point of the trajectory: ``module``'s val mIoU after ``stage``."""
        self.trajectory.append(
            {"stage": stage, "sparsity": sparsity, "miou": self.evaluate(module)}
        )


@dataclass
class PruneMethod:
    """Options every method has; subclasses add their own."""

    name: ClassVar[str] = ""
    x_label: ClassVar[str] = "weight sparsity"
    compressed: ClassVar[bool] = True  # also write the bitmask + values checkpoint

    amount: float = 0.8  # fraction removed, in [0, 1)
    epochs: int = 4
    lr: float = 1e-3
    sweep: tuple[float, ...] = ()  # one-shot levels for the curve; amount is always added

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | DictConfig) -> PruneMethod:
        """The method of a ``prune:`` config node, by its ``_target_``."""
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        target = cfg.pop("_target_", None)
        if target is None:
            raise ValueError(
                "prune._target_ is missing: choose a method with prune=magnitude|l1|structured"
            )
        try:
            method = hydra.utils.get_class(target)
        except Exception as e:  # hydra's import error is long; the field is what matters
            raise ValueError(f"prune._target_={target} cannot be imported ({e})") from None
        if not (isinstance(method, type) and issubclass(method, PruneMethod)):
            raise ValueError(f"prune._target_={target} is not a PruneMethod class")
        fields = {f.name for f in dataclasses.fields(method)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ValueError(
                f"unknown prune option(s) {unknown} for {method.__name__}; it has {sorted(fields)}"
            )
        return method(**cfg)

    def __post_init__(self) -> None:
        self.amount = unstructured.check_amount(self.amount, field="prune.amount")
        self.sweep = tuple(
            unstructured.check_amount(a, field="prune.sweep") for a in (self.sweep or ())
        )
        for key in ("epochs", "recover_epochs"):
            v = getattr(self, key, 0)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"prune.{key} must be an integer >= 0, got {v!r}")
        if not float(self.lr) > 0:
            raise ValueError(f"prune.lr must be > 0, got {self.lr!r}")

    @property
    def finetune_epochs(self) -> int:
        """Epochs of all the method's fine-tuning stages together."""
        return int(self.epochs) + int(getattr(self, "recover_epochs", 0))

    def check_model(self, stored: DictConfig, where: str) -> None:
        """Raise when the checkpoint's network cannot be pruned this way."""

    def sparsity(self, module: Any, amount: float) -> float:
        """x of the curve for ``module`` pruned at ``amount``: its weight sparsity."""
        return unstructured.weight_sparsity(module.net).fraction

    def one_shot(self, dense: Any, stored: DictConfig, amount: float) -> tuple[Any, dict | None]:
        """``dense`` pruned to ``amount`` with no training: global magnitude masks; the net
        config is unchanged (None)."""
        module = fresh_copy(dense, stored)
        unstructured.magnitude_prune(module.net, amount)
        return module, None

    def prune_and_finetune(self, ctx: PruneContext, one_shot: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no fine-tuning")

    def describe(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} defines no description")


def fresh_copy(dense: Any, stored: DictConfig) -> Any:
    """A new LightningModule of the stored config holding ``dense``'s weights."""
    module = hydra.utils.instantiate(stored.model)
    module.load_state_dict(dense.state_dict())
    return module


@dataclass
class MagnitudePruning(PruneMethod):
    """Global unstructured magnitude pruning, sparsity ramped 0 -> amount on a cubic schedule
    (Zhu & Gupta 2017) while fine-tuning, masks kept to the end."""

    name: ClassVar[str] = "magnitude"

    epochs: int = 6
    ramp: float = 0.5  # fraction of the fine-tuning steps over which the sparsity ramps up
    update_every: int = 2  # recompute the masks every N optimiser steps during the ramp

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.ramp) <= 1.0:
            raise ValueError("prune.ramp (fraction of fine-tuning steps) must be in [0, 1]")
        if not isinstance(self.update_every, int) or self.update_every < 1:
            raise ValueError(
                f"prune.update_every must be an integer >= 1, got {self.update_every!r}"
            )

    def prune_and_finetune(self, ctx: PruneContext, one_shot: Any) -> Any:
        module = fresh_copy(ctx.dense, ctx.stored)
        steps = ctx.budget.steps(self.epochs)
        cb = unstructured.MaskedFineTuning(
            final=self.amount, ramp_steps=int(self.ramp * steps), update_every=self.update_every
        )
        ctx.fit(module, [cb], epochs=self.epochs, stage="finetune")
        return module

    def describe(self) -> str:
        return (
            f"{self.epochs} epochs at lr {self.lr}; global magnitude sparsity ramped 0 -> "
            f"{self.amount} (cubic) over the first {100 * float(self.ramp):.0f} % of the steps, "
            f"masks recomputed every {self.update_every} step(s)"
        )


@dataclass
class L1Pruning(PruneMethod):
    """L1 (and optional group-lasso) penalty during fine-tuning, then global magnitude
    thresholding to ``amount``, then ``recover_epochs`` of masked fine-tuning."""

    name: ClassVar[str] = "l1"

    recover_epochs: int = 2
    l1: float = 2e-5  # subgradient l1 * sign(w) added to every prunable weight's gradient
    group_lasso: float = 0.0  # over output channels: group_lasso * w_c / ||w_c||

    def prune_and_finetune(self, ctx: PruneContext, one_shot: Any) -> Any:
        module = fresh_copy(ctx.dense, ctx.stored)
        cb = unstructured.L1Penalty(l1=float(self.l1), group=float(self.group_lasso))
        ctx.fit(module, [cb], epochs=self.epochs, stage="l1")
        ctx.record("after L1 fine-tuning", module, self.sparsity(module, self.amount))
        unstructured.magnitude_prune(module.net, self.amount)
        ctx.record("thresholded", module, self.amount)
        hold = unstructured.MaskedFineTuning(final=self.amount, ramp_steps=0)
        ctx.fit(module, [hold], epochs=self.recover_epochs, stage="recover")
        return module

    def describe(self) -> str:
        return (
            f"{self.epochs} epochs at lr {self.lr} with L1 penalty {self.l1} and group lasso "
            f"{self.group_lasso}, thresholded to {self.amount}, then {self.recover_epochs} "
            "masked epochs"
        )


@dataclass
class ChannelPruning(PruneMethod):
    """Channel pruning of a SparseUNet: every channel group (stem, encoder/decoder streams with
    their residual shortcuts, inverse convs, block inner widths) keeps its best (1 - amount)
    channels, the network is rebuilt smaller (widths stored in the checkpoint config), then
    fine-tuned."""

    name: ClassVar[str] = "structured"
    x_label: ClassVar[str] = "fraction of channels removed"
    compressed: ClassVar[bool] = False  # the smaller network is dense

    amount: float = 0.5
    epochs: int = 12
    lr: float = 4e-3
    criterion: str = "bn"  # rank channels by BatchNorm |gamma| (bn) or filter L1 norm (l1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.criterion not in ("bn", "l1"):
            raise ValueError(f"prune.criterion must be bn or l1, got {self.criterion!r}")

    @property
    def finetune_epochs(self) -> int:
        """Epochs of all the method's fine-tuning stages together."""
        return int(self.epochs) + int(getattr(self, "recover_epochs", 0))

    def check_model(self, stored: DictConfig, where: str) -> None:
        if stored.model.net.get("_target_") != "pointseg.models.sparse_unet.SparseUNet":
            raise ValueError(f"prune=structured needs a SparseUNet checkpoint, got {where}")

    def sparsity(self, module: Any, amount: float) -> float:
        return amount

    def one_shot(self, dense: Any, stored: DictConfig, amount: float) -> tuple[Any, dict | None]:
        """The network rebuilt with each group's best channels, and its new net config."""
        net = dense.net
        plan = structured.channel_plan(net)
        scores = structured.channel_scores(net, plan, by=self.criterion)
        keep = structured.select_channels(scores, amount)
        small_net, net_cfg = structured.prune_channels(
            net, OmegaConf.to_container(stored.model.net, resolve=True), keep
        )
        model_cfg = OmegaConf.to_container(stored.model, resolve=True)
        model_cfg["net"] = net_cfg
        module = hydra.utils.instantiate(model_cfg)
        module.net.load_state_dict(small_net.state_dict())
        return module, net_cfg

    def prune_and_finetune(self, ctx: PruneContext, one_shot: Any) -> Any:
        module = copy.deepcopy(one_shot)
        ctx.recalibrate(module, "channels removed, BN recalibrated")
        ctx.fit(module, [], epochs=self.epochs, stage="finetune")
        return module

    def describe(self) -> str:
        return (
            f"{self.epochs} epochs at lr {self.lr} after removing channels "
            f"(ranked by {self.criterion})"
        )
