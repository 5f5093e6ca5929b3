"""``pointseg-prune``: prune a trained checkpoint, fine-tune it, save it, report the trade-off.

Steps: rebuild model and data from the checkpoint's stored config; score the dense model on
val; sweep one-shot pruning levels (the before-fine-tuning curve); prune with the chosen
method and fine-tune through Lightning on the checkpoint's own training data; save the
pruned weights (dense layout and, for unstructured sparsity, the compressed format); time the
dense and the pruned network on the same CPU scene; write ``prune_report.md``,
``prune_curve.png`` and ``metrics.json`` into the run dir.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pointseg.checkpoint import (
    build_module,
    load_checkpoint,
    save_checkpoint,
    weights_checkpoint,
)
from pointseg.data.collate import collate
from pointseg.guards import guard_task
from pointseg.prune import measure, unstructured
from pointseg.prune.budget import finetune_budget
from pointseg.prune.finetune import finetune, recalibrate_bn
from pointseg.prune.methods import PruneContext, PruneMethod
from pointseg.prune.report import write_prune_report
from pointseg.recipe import RECIPE_KEY, stored_recipe
from pointseg.threads import set_threads
from pointseg.utils import CONF_DIR, reuse_freed_memory, write_json

log = logging.getLogger(__name__)


def prune(cfg: DictConfig) -> dict[str, Any]:
    method = PruneMethod.from_config(cfg.prune)  # conf/prune/*.yaml: _target_ + options
    amount = method.amount
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    ckpt = load_checkpoint(cfg.ckpt_path, trust=bool(cfg.get("trust_checkpoint")))
    stored = OmegaConf.create(ckpt["pointseg_config"])
    method.check_model(stored, str(cfg.ckpt_path))
    data_cfg = OmegaConf.merge(stored.data, cfg.get("data") or {})
    datamodule = hydra.utils.instantiate(data_cfg)
    dense = build_module(ckpt)
    ignore = int(data_cfg.ignore_index)

    recipe = stored_recipe(ckpt, data_overrides=cfg.get("data"), where=str(cfg.ckpt_path))
    val_scenes = datamodule.factories["val"](transform=None)

    def evaluate(module: torch.nn.Module) -> float:
        """Val mIoU through the same Segmenter as pointseg-eval's scene path."""
        return measure.val_miou(module.net, recipe, val_scenes, ignore_index=ignore)

    progress = bool(cfg.get("progress", True))
    sweep_levels = sorted(set(method.sweep) | {amount})
    bar = tqdm(total=1 + len(sweep_levels), desc="one-shot sweep (val)", disable=not progress)
    dense_miou = evaluate(dense)
    bar.update(1)
    sweep: list[dict[str, Any]] = []
    before_module, net_cfg = None, None
    for a in sweep_levels:
        one_shot, cfg_a = method.one_shot(dense, stored, a)
        miou = evaluate(one_shot)
        sweep.append({"amount": a, "sparsity": method.sparsity(one_shot, a), "miou": miou})
        if a == amount:
            before_module, net_cfg = one_shot, cfg_a
        bar.update(1)
    bar.close()
    before = next(s for s in sweep if s["amount"] == amount)
    log.info("dense val mIoU %.4f; one-shot %s", dense_miou, sweep)

    # --- prune + fine-tune -------------------------------------------------------------
    # the trained run's own step budget: its epoch (limit_train_batches of a looped dataset)
    # and its length; fine-tuning never plans more steps than the model was trained for
    trained = dict(OmegaConf.to_container(stored.get("trainer") or {}, resolve=True))
    if cfg.trainer.get("limit_train_batches") is not None:
        trained["limit_train_batches"] = cfg.trainer.limit_train_batches
    budget = finetune_budget(trained, len(datamodule.train_dataloader()))
    planned = budget.steps(method.finetune_epochs)
    log.info(
        "fine-tuning: %d epoch(s) of %d steps, at most %d steps in all (the trained run's "
        "budget: %d steps)", method.finetune_epochs, budget.steps_per_epoch, planned,
        budget.trained_steps,
    )  # fmt: skip
    steps_done: list[int] = []

    def fit(module: Any, callbacks: list, *, epochs: int, stage: str) -> None:
        steps = min(budget.steps(epochs), budget.trained_steps - sum(steps_done))
        if steps <= 0:
            log.warning("fine-tuning stage %s skipped: the trained run's %d steps are spent",
                        stage, budget.trained_steps)  # fmt: skip
            return
        done = finetune(
            module, datamodule, callbacks, optimizer=stored.model.optimizer, lr=float(method.lr),
            epochs=epochs, stage=stage, run_dir=run_dir, trainer_cfg=cfg.trainer,
            progress=progress, steps_per_epoch=budget.steps_per_epoch, max_steps=steps,
        )  # fmt: skip
        steps_done.append(done)

    def recalibrate(module: Any, stage: str) -> None:
        """Fresh BatchNorm statistics of the pruned weights (the running averages still hold
        those of the weights before pruning), then the val score."""
        if not cfg.get("recalibrate_bn", True):
            return
        recalibrate_bn(module, datamodule.train_dataloader(), progress=progress,
                       max_batches=budget.steps_per_epoch)  # fmt: skip
        ctx.record(stage, module, method.sparsity(module, amount))

    trajectory: list[dict[str, Any]] = []
    ctx = PruneContext(
        dense=dense, stored=stored, budget=budget,
        fit=fit, evaluate=evaluate, recalibrate=recalibrate, trajectory=trajectory,
    )  # fmt: skip
    module = method.prune_and_finetune(ctx, before_module)
    ctx.record("fine-tuned", module, method.sparsity(module, amount))
    recalibrate(module, "fine-tuned, BN recalibrated")
    after_miou = trajectory[-1]["miou"]

    # --- save ---------------------------------------------------------------------------
    config = OmegaConf.to_container(stored, resolve=True)
    if net_cfg is not None:  # a rebuilt, smaller network
        config["model"]["net"] = net_cfg
    meta = {
        RECIPE_KEY: recipe.to_dict(),
        "pruning": {
            "method": method.name,
            "amount": amount,
            "weight_sparsity": unstructured.weight_sparsity(module.net).fraction,
            "source": str(Path(cfg.ckpt_path).resolve()),
        },
    }
    ckpt_dir = run_dir / "checkpoints"
    files: dict[str, dict[str, Any]] = {}
    pruned_path = save_checkpoint(
        weights_checkpoint(module.state_dict(), config, extra=meta), ckpt_dir / "pruned.ckpt"
    )
    files["weights only, dense layout"] = {"path": str(pruned_path)}
    final_path = pruned_path
    if method.compressed:
        sparse_path = save_checkpoint(
            weights_checkpoint(module.state_dict(), config, compressed=True, extra=meta),
            ckpt_dir / "pruned_sparse.ckpt",
        )
        files["compressed (bitmask + values)"] = {"path": str(sparse_path)}
        final_path = sparse_path
        restored = load_checkpoint(sparse_path)["state_dict"]
        for k, v in module.state_dict().items():  # the stored file must give these exact bits
            if not torch.equal(restored[k], v.cpu()):
                raise RuntimeError(f"{sparse_path}: {k} does not round-trip")
    for info in files.values():
        info["size_bytes"] = Path(info["path"]).stat().st_size
    dense_size = measure.serialized_size(weights_checkpoint(dense.state_dict(), config))

    # --- latency + MACs on one fixed val scene -------------------------------------------------
    scene = int(cfg.report.latency_scene)
    batch = collate([datamodule.dataset("val")[scene]])
    nets = {"dense": dense.net, "pruned": module.net}
    runs, warmup = int(cfg.report.latency_runs), int(cfg.report.latency_warmup)
    lbar = tqdm(total=runs + warmup, desc="CPU latency", disable=not progress)
    lat = measure.compare_latency(
        nets, batch, warmup=warmup, runs=runs, progress=lambda: lbar.update(1)
    )
    lbar.close()

    def summary(mod: Any, miou: float, sparsity: float, size: int | None, latency) -> dict:
        return {
            "miou": miou,
            "sparsity": sparsity,
            "params": measure.num_parameters(mod.net),
            "nonzero": measure.nonzero_parameters(mod.net),
            "size_bytes": size,
            "latency_ms": None if latency is None else latency.median_ms,
            "macs": measure.count_macs(mod.net, batch),
        }

    final_size = Path(final_path).stat().st_size
    sparsity_after = method.sparsity(module, amount)
    result: dict[str, Any] = {
        "method": method.name,
        "amount": amount,
        "x_label": method.x_label,
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "source_size_bytes": Path(cfg.ckpt_path).stat().st_size,
        "finetune": method.describe(),
        "finetune_steps": {
            "planned": planned,
            "done": sum(steps_done),
            "steps_per_epoch": budget.steps_per_epoch,
            "trained_steps": budget.trained_steps,
        },
        "dense": summary(dense, dense_miou, 0.0, dense_size, lat["dense"]),
        "before": summary(before_module, before["miou"], before["sparsity"], None, None),
        "after": summary(module, after_miou, sparsity_after, final_size, lat["pruned"]),
        "sweep": sweep,
        "trajectory": trajectory,
        "latency": {
            "scene": scene,
            "voxels": int(batch["feat"].shape[0]),
            "threads": torch.get_num_threads(),
            "runs": runs,
            "warmup": warmup,
            "dense_ms": lat["dense"].median_ms,
            "pruned_ms": lat["pruned"].median_ms,
            "speedup": lat["dense"].median_ms / lat["pruned"].median_ms,
            "dense_min_ms": lat["dense"].min_ms,
            "pruned_min_ms": lat["pruned"].min_ms,
            "speedup_min": lat["dense"].min_ms / lat["pruned"].min_ms,
        },
        "files": files,
        "pruned_ckpt": str(Path(final_path).resolve()),
        "run_dir": str(run_dir.resolve()),
    }
    if net_cfg is not None:
        result["widths"] = module.net.widths
    write_json(run_dir / "metrics.json", result)
    if (cfg.get("report") or {}).get("enabled", True):
        result["report"] = str(write_prune_report(run_dir, result))
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="prune")
@guard_task("pointseg-prune")
def hydra_main(cfg: DictConfig) -> None:
    reuse_freed_memory()
    set_threads(cfg.get("threads"))  # once, for the run: pointseg/threads.py
    result = prune(cfg)
    dense, after, lat = result["dense"], result["after"], result["latency"]
    print(f"dense val/miou: {dense['miou']:.4f}")
    print(f"pruned val/miou: {after['miou']:.4f} ({result['x_label']} {result['amount']})")
    ms = f"{lat['dense_ms']:.1f} ms -> {lat['pruned_ms']:.1f} ms"
    print(f"CPU latency: {ms} ({lat['speedup']:.2f}x)")
    print(f"pruned_ckpt: {result['pruned_ckpt']}")
    print(f"run_dir: {result['run_dir']}")
