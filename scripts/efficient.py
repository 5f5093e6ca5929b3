"""Efficient networks on one footing: spunet_small, spunet_small with 50 % of its channels
pruned, spunet_lite and spunet_lite5, trained on the same synthetic rooms with the same short
schedule, then measured on the same val batch: parameters, multiply-adds, CPU latency (one
thread and the default, runs interleaved, medians) and val mIoU. Writes <out>/efficient.json
and prints the table of docs/efficient.md.

    python scripts/efficient.py --out logs/efficient            # train (skips done runs) + measure
    python scripts/efficient.py --out logs/efficient --stage measure

Training is ``pointseg.train.train`` on the real configs (``make train``'s recipe: AdamW,
one-cycle, the synthetic rooms' augmentations) with fewer scenes and epochs; the pruned network
is ``pointseg.prune.run.prune`` (prune=structured, amount 0.5, BN criterion) of the trained
spunet_small, fine-tuned ``--prune-epochs`` epochs.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from pointseg.checkpoint import load_checkpoint
from pointseg.prune import measure
from pointseg.prune.finetune import recalibrate_bn
from pointseg.sparse.grouped import use_fused_depthwise
from pointseg.utils import CONF_DIR

MODELS = ("spunet_small", "spunet_lite", "spunet_lite5")
PRUNED = "spunet_small_pruned50"
FUSED = " + fused dw"  # the same checkpoint with pointseg.sparse.grouped's compiled forward


class WithFusedDepthwise(torch.nn.Module):
    """``net`` whose depthwise convs run the compiled forward (``use_fused_depthwise``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *args: Any) -> torch.Tensor:
        with use_fused_depthwise():
            return self.net(*args)


def _compose(name: str, overrides: list[str], out: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out.parent)
    return cfg


def data_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"data.train_dataset.num_scenes={args.train_scenes}",
        f"data.val_dataset.num_scenes={args.val_scenes}",
    ]


def train_all(args: argparse.Namespace) -> dict[str, str]:
    """Checkpoint of every network (runs already done are reused)."""
    from pointseg.prune.run import prune
    from pointseg.train import train

    ckpts: dict[str, str] = {}
    for model in MODELS:
        run = args.out / model
        done = run / "result.json"
        if not done.exists():
            overrides = [
                f"model={model}",
                f"trainer.max_epochs={args.epochs}",
                f"trainer.check_val_every_n_epoch={args.epochs}",
                "logger=none",
                f"threads={args.train_threads}",
                f"seed={args.seed}",
                *data_overrides(args),
            ]
            result = train(_compose("train", overrides, run))
            done.write_text(json.dumps(result, indent=1))
        ckpts[model] = json.loads(done.read_text())["best_ckpt"]
    run = args.out / PRUNED
    done = run / "result.json"
    if not done.exists():
        overrides = [
            f"ckpt_path={ckpts['spunet_small']}",
            "prune=structured",
            "prune.amount=0.5",
            f"prune.epochs={args.prune_epochs}",
            "prune.sweep=[]",
            "report.enabled=false",
            "progress=false",
            f"threads={args.train_threads}",
            f"seed={args.seed}",
        ]
        result = prune(_compose("prune", overrides, run))
        done.write_text(json.dumps({"pruned_ckpt": result["pruned_ckpt"]}, indent=1))
    ckpts[PRUNED] = json.loads(done.read_text())["pruned_ckpt"]
    return ckpts


def measure_all(
    args: argparse.Namespace, ckpts: dict[str, str], *, default_threads: int
) -> dict[str, Any]:
    """Parameters, MACs, latency and val mIoU of every checkpoint on the same data."""
    import hydra

    from pointseg.checkpoint import build_module
    from pointseg.data.collate import collate

    first = load_checkpoint(ckpts["spunet_small"])
    data_cfg = _compose("train", data_overrides(args), args.out / "measure").data
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.setup("validate")
    val = datamodule.dataset("val")
    batch = collate([val[i] for i in range(min(args.latency_scenes, len(val)))])
    order = ["spunet_small", PRUNED, "spunet_lite", "spunet_lite5"]
    score = functools.partial(
        measure.val_miou,
        loader=datamodule.val_dataloader(),
        num_classes=int(data_cfg.num_classes),
        ignore_index=int(data_cfg.ignore_index),
    )
    nets: dict[str, torch.nn.Module] = {}
    rows: dict[str, Any] = {}
    for name in order:
        module = build_module(load_checkpoint(ckpts[name]))
        trained = score(module)
        # 40 steps at BN momentum 0.02 leave the running statistics half-way from their
        # initial values; recompute them (as pointseg-prune does) for every network alike
        torch.manual_seed(args.seed)
        recalibrate_bn(module, datamodule.train_dataloader())
        nets[name] = module.net.eval()
        rows[name] = {"val_miou_trained": trained, "val_miou": score(module)}
    for name in ("spunet_lite", "spunet_lite5"):
        module = build_module(load_checkpoint(ckpts[name]))
        module.net = nets[name + FUSED] = WithFusedDepthwise(nets[name])
        rows[name + FUSED] = {"val_miou_trained": None, "val_miou": score(module)}
    for name, net in nets.items():
        rows[name]["params"] = measure.num_parameters(net)
        rows[name]["macs"] = measure.count_macs(net, batch)
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        lat = measure.compare_latency(nets, batch, warmup=2, runs=args.latency_runs)
        for name in nets:
            rows[name][f"latency_ms_{threads}t"] = lat[name].median_ms
    torch.set_num_threads(default_threads)
    return {
        "voxels": int(batch["feat"].shape[0]),
        "scenes": int(batch["batch_size"]),
        "threads": [1, default_threads],
        "latency_runs": args.latency_runs,
        "stored_config": {k: first["pointseg_config"]["data"][k] for k in ("voxel_size",)},
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(res: dict[str, Any]) -> str:
    t1, tn = res["threads"]
    base = res["rows"]["spunet_small"]
    lines = [
        f"| network | parameters | MACs (G) | latency {t1} thread (ms) | speed-up | "
        f"latency {tn} threads (ms) | speed-up | val mIoU as trained | val mIoU, BN recalibrated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["rows"].items():
        lines.append(
            f"| {name} | {r['params']:,} | {r['macs'] / 1e9:.2f} | {r[f'latency_ms_{t1}t']:.0f} | "
            f"{base[f'latency_ms_{t1}t'] / r[f'latency_ms_{t1}t']:.2f}x | "
            f"{r[f'latency_ms_{tn}t']:.0f} | "
            f"{base[f'latency_ms_{tn}t'] / r[f'latency_ms_{tn}t']:.2f}x | "
            f"{_pct(r['val_miou_trained'])} | {_pct(r['val_miou'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("logs/efficient"))
    parser.add_argument("--stage", choices=["all", "measure"], default="all")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--prune-epochs", type=int, default=3)
    parser.add_argument("--train-scenes", type=int, default=12)
    parser.add_argument("--val-scenes", type=int, default=4)
    parser.add_argument("--latency-scenes", type=int, default=4)
    parser.add_argument("--latency-runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=42)
    # one thread: on a shared 2-core machine two threads run several times slower (NOTES.md)
    parser.add_argument("--train-threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    default_threads = torch.get_num_threads()  # before training sets its own
    if args.stage == "all":
        ckpts = train_all(args)
    else:
        ckpts = {name: json.loads((args.out / name / "result.json").read_text()) for name in
                 (*MODELS, PRUNED)}  # fmt: skip
        ckpts = {k: v.get("best_ckpt", v.get("pruned_ckpt")) for k, v in ckpts.items()}
    res = measure_all(args, ckpts, default_threads=default_threads)
    (args.out / "efficient.json").write_text(json.dumps(res, indent=1))
    print(table(res))


if __name__ == "__main__":
    sys.exit(main())
