"""``pointseg-export ckpt_path=<file.ckpt> output=<dir>``: a model folder with no pickle.

``model.safetensors`` (the network's weights), ``pointseg.json`` (the feature recipe, the
class names and codes, the network config and the rulebook plan of the graph) and
``model.onnx`` (``pointseg.export.onnx_graph``). ``Segmenter.from_pretrained(dir)`` and
``pointseg-predict ckpt_path=<dir> runtime=onnx|torch`` load it. The checkpoint is read with
``pointseg.checkpoint.load_checkpoint``'s rules: one that needs ``trust_checkpoint=true``
is refused here too. With ``check``, the export labels a random block with both the torch
network and the graph and stores their agreement in ``pointseg.json``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointseg.export.runtime import FORMAT, GRAPH, META, WEIGHTS, OnnxNet

log = logging.getLogger(__name__)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def network_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``model.net`` config, resolved to plain JSON values."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(ckpt["pointseg_config"])
    return OmegaConf.to_container(cfg.model.net, resolve=True)


def self_check(net: torch.nn.Module, graph: Path, meta: dict[str, Any]) -> dict[str, float]:
    """Torch network and graph on one random block (1500 voxels of a 24^3 grid)."""
    from pointseg.models.point_branch import POINT_EXTRA

    rng = np.random.default_rng(0)
    cells = rng.choice(24**3, size=1500, replace=False)
    grid = np.stack(np.unravel_index(cells, (24, 24, 24)), 1)
    idx = torch.zeros((len(grid), 4), dtype=torch.int32)
    idx[:, 1:] = torch.from_numpy(grid.astype(np.int32))
    feat = torch.from_numpy(rng.standard_normal((len(grid), net.in_channels), np.float32))
    kw: dict[str, Any] = {}
    if meta["network"]["point_channels"]:
        inverse = torch.from_numpy(rng.integers(0, len(grid), 3 * len(grid)))
        width = net.in_channels + POINT_EXTRA
        kw = {"inverse": inverse, "point_feat": torch.randn(len(inverse), width)}
    with torch.no_grad():
        want = torch.softmax(net(feat, idx, 1, **kw), 1)
        got = torch.softmax(OnnxNet(graph, meta)(feat, idx, 1, **kw), 1)
    return {
        "label_agreement": float((want.argmax(1) == got.argmax(1)).float().mean()),
        "max_prob_diff": float((want - got).abs().max()),
    }


def export(
    ckpt_path: str | Path, output: str | Path, *, trust: bool = False, check: bool = True
) -> dict[str, Any]:
    """Write the export folder of a checkpoint; returns its ``pointseg.json`` content."""
    import onnx
    from safetensors.torch import save_file

    from pointseg.checkpoint import build_net, load_checkpoint
    from pointseg.export.onnx_graph import build_graph
    from pointseg.export.runtime import torch_net
    from pointseg.recipe import stored_recipe

    ckpt_path, out = Path(ckpt_path), Path(output)
    ckpt = load_checkpoint(ckpt_path, trust=trust)
    recipe = stored_recipe(ckpt, where=str(ckpt_path))
    net = build_net(ckpt).eval()
    config = network_config(ckpt)
    model, plan = build_graph(net)
    onnx.checker.check_model(model)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    weights = [v for v in state.values() if v.is_floating_point()]
    zeros = sum(int((v == 0).sum()) for v in weights)
    total = sum(v.numel() for v in weights)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "recipe": recipe.to_dict(),
        "class_names": list(recipe.class_names),
        "class_codes": None if recipe.class_codes is None else list(recipe.class_codes),
        "network": {
            "config": config,
            "in_channels": int(net.in_channels),
            "num_classes": int(net.num_classes),
            "num_stages": int(net.num_stages),
            "point_channels": int(getattr(net, "point_channels", 0) or 0),
            "widths": net.widths,
            "parameters": total,
            "zero_parameters": zeros,  # stored dense: unstructured sparsity does not shrink it
        },
        "rulebooks": plan,
        "source": {"checkpoint": ckpt_path.name, "bytes": ckpt_path.stat().st_size},
    }
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in out.iterdir() if p.suffix in (".ckpt", ".pt", ".pth", ".pkl"))
    if stale:
        raise FileExistsError(f"{out} holds pickle files {stale}; export into an empty folder")
    tmp = out / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, out / WEIGHTS)
    _atomic_write(out / GRAPH, model.SerializeToString())
    # the torch runtime's rebuild (importlib + safetensors) must give the checkpoint's net
    rebuilt = torch_net(out, meta).state_dict()
    if rebuilt.keys() != state.keys() or any(not torch.equal(rebuilt[k], state[k]) for k in state):
        raise RuntimeError(f"{out}: the stored network config does not rebuild the network")
    if check:
        meta["check"] = self_check(net, out / GRAPH, meta)
    meta["bytes"] = {WEIGHTS: (out / WEIGHTS).stat().st_size, GRAPH: (out / GRAPH).stat().st_size}
    _atomic_write(out / META, json.dumps(meta, indent=1).encode())
    return meta


def _hydra_main_impl(cfg: Any) -> dict[str, Any]:
    meta = export(
        cfg.ckpt_path, cfg.output, trust=bool(cfg.get("trust_checkpoint")), check=bool(cfg.check)
    )
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in meta["bytes"].items())
    net = meta["network"]
    print(
        f"exported {cfg.ckpt_path} ({meta['source']['bytes'] / 1e6:.2f} MB) to {cfg.output}: "
        f"{sizes}; {net['parameters']:,} parameters, {net['zero_parameters']:,} of them zero"
    )
    if "check" in meta:
        c = meta["check"]
        print(
            f"check on a random block: {100 * c['label_agreement']:.2f} % equal labels, "
            f"largest probability difference {c['max_prob_diff']:.2e}"
        )
    return meta


def main() -> None:
    import hydra

    from pointseg.guards import guard_task, run_hydra
    from pointseg.utils import CONF_DIR

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
    @guard_task("pointseg-export")
    def _hydra_main(cfg: Any) -> None:
        _hydra_main_impl(cfg)

    run_hydra(_hydra_main, "export")


if __name__ == "__main__":
    main()
