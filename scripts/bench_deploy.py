"""ONNX Runtime against torch for the exported models: label agreement, predict points/s, sizes.

    python scripts/bench_deploy.py [--threads 1] [--repeats 2] [--out docs/deploy_bench.json]

One run, one machine: the default model (spunet_small), its 80 % magnitude-pruned and 50 %
structured-pruned versions and spunet_lite, with random weights (speed does not depend on
the values; accuracy is not measured here), on a synthetic room (data=synthetic's recipe)
and, where ../shared/data/4_6_crop.las exists, the data=las plan (point branch) on that real
tile. Each model is predicted through ``Segmenter.from_checkpoint`` (torch) and
``Segmenter.from_pretrained(runtime="onnx")``; the best of ``--repeats`` runs counts, and
every speed is also given against the full model in torch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
LAS_TILE = ROOT.parent / "shared" / "data" / "4_6_crop.las"


def _config(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _random_bn(net: torch.nn.Module) -> None:
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.weight.data.uniform_(0.2, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


def _models(cfg: Any, recipe: Any, lite: bool) -> dict[str, tuple[dict, dict, bool]]:
    """name -> (net config, net state dict, compressed) of the benchmarked variants."""
    from pointseg.prune import structured
    from pointseg.prune.unstructured import magnitude_prune
    from pointseg.targets import instantiate

    net_cfg = OmegaConf.to_container(cfg.model.net, resolve=True)
    net = instantiate(net_cfg).eval()
    _random_bn(net)
    out = {"full": (net_cfg, net.state_dict(), False)}
    sparse = instantiate(net_cfg).eval()
    sparse.load_state_dict(net.state_dict())
    magnitude_prune(sparse, 0.8)
    out["magnitude 80 %"] = (net_cfg, sparse.state_dict(), True)
    plan = structured.channel_plan(net)
    keep = structured.select_channels(structured.channel_scores(net, plan), 0.5)
    small, small_cfg = structured.prune_channels(net, net_cfg, keep)
    out["structured 50 %"] = (small_cfg, small.state_dict(), False)
    if lite:
        lite_cfg = OmegaConf.to_container(_config(["model=spunet_lite"]).model.net, resolve=True)
        lite_net = instantiate(lite_cfg).eval()
        _random_bn(lite_net)
        out["spunet_lite"] = (lite_cfg, lite_net.state_dict(), False)
    return out


def _time(seg: Any, sample: dict, repeats: int) -> tuple[float, Any]:
    best, pred = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        pred = seg.predict(sample)
        best = min(best, time.perf_counter() - t)
    return best, pred


def bench_scene(name: str, cfg: Any, sample: dict, *, repeats: int, threads: int, tmp: Path,
                lite: bool) -> list[dict[str, Any]]:  # fmt: skip
    from pointseg.checkpoint import save_checkpoint, weights_checkpoint
    from pointseg.export.export import export
    from pointseg.inference import InferenceOptions
    from pointseg.segmenter import RECIPE_KEY, FeatureRecipe, Segmenter

    recipe = FeatureRecipe.from_data_config(OmegaConf.to_container(cfg.data, resolve=True))
    opts = InferenceOptions()  # pointseg-predict's defaults
    rows, base = [], None
    for model, (net_cfg, state, compressed) in _models(cfg, recipe, lite).items():
        d = tmp / f"{name}-{model.replace(' ', '_').replace('%', 'pc')}"
        d.mkdir()
        sd = {f"net.{k}": v for k, v in state.items()}
        ck = weights_checkpoint(sd, {"model": {"net": net_cfg}}, compressed=compressed,
                                extra={RECIPE_KEY: recipe.to_dict()})  # fmt: skip
        ckpt = save_checkpoint(ck, d / "model.ckpt")
        meta = export(ckpt, d / "export", check=False)
        torch.set_num_threads(threads)
        t_torch, p_torch = _time(Segmenter.from_checkpoint(ckpt, options=opts, device="cpu"),
                                 sample, repeats)  # fmt: skip
        ort = Segmenter.from_pretrained(d / "export", runtime="onnx", options=opts,
                                        threads=threads)  # fmt: skip
        t_ort, p_ort = _time(ort, sample, repeats)
        n = len(p_torch.labels)
        probs = lambda p: p.voxel_probs if p.probs is None else p.probs  # noqa: E731
        base = base or t_torch
        rows.append({
            "scene": name, "model": model, "points": n, "blocks": p_torch.num_blocks,
            "torch_pts_s": n / t_torch, "ort_pts_s": n / t_ort, "ort_vs_torch": t_torch / t_ort,
            "torch_vs_full_torch": base / t_torch, "ort_vs_full_torch": base / t_ort,
            "equal_labels": float((p_torch.labels == p_ort.labels).mean()),
            "max_prob_diff": float(np.abs(probs(p_torch) - probs(p_ort)).max()),
            "ckpt_bytes": ckpt.stat().st_size, **meta["bytes"],
            "parameters": meta["network"]["parameters"],
            "zero_parameters": meta["network"]["zero_parameters"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "deploy_bench.json")
    args = ap.parse_args()
    from pointseg.data.datasets.synthetic import generate_room, scene_seed

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(["data=synthetic"])
        room = generate_room(scene_seed(0, "val", 0))
        sample = {k: room[k] for k in ("coord", "color")}
        rows += bench_scene("synthetic room", cfg, sample, repeats=args.repeats,
                            threads=args.threads, tmp=Path(tmp), lite=True)  # fmt: skip
        if LAS_TILE.is_file():
            from pointseg.segmenter import FeatureRecipe

            cfg = _config(["data=las"])
            recipe = FeatureRecipe.from_data_config(OmegaConf.to_container(cfg.data, resolve=True),
                                                    reader={"las": {}})  # fmt: skip
            tile = recipe.read(LAS_TILE)
            tile.pop("kept", None)
            rows += bench_scene("4_6_crop.las", cfg, tile, repeats=args.repeats,
                                threads=args.threads, tmp=Path(tmp), lite=False)  # fmt: skip
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
