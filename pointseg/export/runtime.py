"""Networks of an export folder (``pointseg-export``), for ``Segmenter.from_pretrained``.

- ``runtime="onnx"``: ``OnnxNet``, an ONNX Runtime session called like the torch network
  (``net(feat, indices, 1, inverse=..., point_feat=...)``); the rulebooks come from
  ``pointseg.export.rulebooks`` (numpy). Neither spconv nor Hydra nor Lightning is imported.
- ``runtime="torch"``: the network class named by the stored config's ``_target_``, built
  with importlib and loaded from ``model.safetensors`` (this one needs spconv).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

META = "pointseg.json"
WEIGHTS = "model.safetensors"
GRAPH = "model.onnx"
FORMAT = "pointseg-export-v1"
RUNTIMES = ("torch", "onnx")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The folder's ``pointseg.json``, checked."""
    path = Path(folder) / META
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is no pointseg export folder (no {META}); write one with "
            "pointseg-export ckpt_path=<file.ckpt> output=<dir>"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown export format {meta.get('format')!r} (reads {FORMAT})")
    return meta


class OnnxNet(nn.Module):
    """An exported graph behind the torch network's call signature (CPU tensors in and out)."""

    def __init__(self, graph: str | Path, meta: dict[str, Any], *, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        net = meta["network"]
        self.num_stages = int(net["num_stages"])
        self.in_channels = int(net["in_channels"])
        self.num_classes = int(net["num_classes"])
        self.point_channels = int(net["point_channels"])
        self.plan = list(meta["rulebooks"])
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(
            str(graph), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def forward(
        self,
        feat: Tensor,
        indices: Tensor,
        batch_size: int = 1,
        *,
        inverse: Tensor | None = None,
        point_feat: Tensor | None = None,
    ) -> Tensor:
        """(M, K) voxel logits, or (N, K) point logits with ``inverse`` (see ``UNetSkeleton``)."""
        return torch.from_numpy(
            self.run(
                feat.cpu().numpy(),
                indices.cpu().numpy(),
                inverse=None if inverse is None else inverse.cpu().numpy(),
                point_feat=None if point_feat is None else point_feat.cpu().numpy(),
            )
        )

    def run(
        self,
        feat: np.ndarray,
        indices: np.ndarray,
        *,
        inverse: np.ndarray | None = None,
        point_feat: np.ndarray | None = None,
    ) -> np.ndarray:
        """The same in numpy: feat (M, C_in) float32, indices (M, 4) [b, x, y, z]."""
        from pointseg.export.rulebooks import graph_inputs

        if feat.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} feature channels, got {feat.shape[1]}")
        feeds = graph_inputs(np.asarray(indices), self.plan)
        feeds["feat"] = np.ascontiguousarray(feat, dtype=np.float32)
        if self.point_channels:
            if inverse is None or point_feat is None:
                raise ValueError("this network has a point branch: pass inverse= and point_feat=")
            feeds["inverse"] = np.asarray(inverse, dtype=np.int64)
            feeds["point_feat"] = np.ascontiguousarray(point_feat, dtype=np.float32)
        (logits,) = self.session.run(["logits"], feeds)
        if inverse is not None and not self.point_channels:
            logits = logits[np.asarray(inverse)]
        return logits


def torch_net(folder: str | Path, meta: dict[str, Any]) -> nn.Module:
    """The torch network of an export folder: its class from ``_target_``, its weights from
    the safetensors file (no pickle, no Hydra)."""
    from safetensors.torch import load_file

    from pointseg.targets import instantiate

    net = instantiate(dict(meta["network"]["config"]))
    net.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
    return net.eval()


def load_net(folder: str | Path, *, runtime: str = "torch", threads: int | None = None) -> Any:
    """(network, meta) of an export folder for ``runtime`` ("torch" or "onnx")."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: use one of {RUNTIMES}")
    meta = read_meta(folder)
    if runtime == "onnx":
        return OnnxNet(Path(folder) / GRAPH, meta, threads=threads), meta
    return torch_net(folder, meta), meta
