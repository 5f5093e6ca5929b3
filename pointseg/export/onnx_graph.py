"""An ONNX graph of a pointseg U-Net whose sparse convs are plain ops on rulebook inputs.

Built node by node from the eval-mode network (no tracing: ``torch.onnx`` stalls on the
data-dependent rulebook code). Every sparse conv reads the rulebook of its ``indice_key``
(``pointseg.export.rulebooks``: pairs computed outside the graph):

- submanifold: ``x @ W[centre]``, then per other offset ``ScatterND(add)`` of
  ``Gather(x, in_k) @ W[k]`` into ``out_k`` (within one offset every output row appears once,
  which ORT's parallel ScatterND needs: with repeated rows its sums race);
- strided (k = s = 2): the same per offset, scattered into zeros of the coarse size;
- inverse: per offset ``Gather(x, out_k) @ W[k]``, concatenated, back in fine row order by
  one ``Gather`` (``unsort``): every fine row gets exactly one product.

Depthwise convs multiply instead of matmul; grouped layers become block-diagonal matmuls.
BatchNorm is folded into the layer before it (per output channel scale and a bias). Graph
inputs: ``feat`` (M, C_in), the rulebooks, and for a network with a point branch
``inverse`` (N,) int64 and ``point_feat`` (N, C_in + 3); output ``logits`` (M or N, K).
Every size is dynamic, so one graph serves any block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

OPSET = 17


def _bn(bn: nn.BatchNorm1d) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an eval-mode BatchNorm: y = x * scale + shift."""
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    b = (bn.bias - bn.running_mean * s).detach()
    return s.numpy().astype(np.float32), b.numpy().astype(np.float32)


def _dense(weight: np.ndarray, groups: int) -> np.ndarray:
    """(G, ci, co) grouped weights as one block-diagonal (G * ci, G * co) matrix."""
    g, ci, co = weight.shape
    out = np.zeros((g * ci, g * co), dtype=np.float32)
    for i in range(g):
        out[i * ci : (i + 1) * ci, i * co : (i + 1) * co] = weight[i]
    return out


class GraphBuilder:
    """Nodes, constants and rulebook inputs of one exported network."""

    def __init__(self) -> None:
        from onnx import helper

        self.h = helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.rulebooks: dict[str, dict[str, Any]] = {}  # key -> kind, kernel, level
        self._pieces: dict[str, tuple[list[str], list[str]]] = {}
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value: np.ndarray, stem: str = "w") -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], stem: str | None = None, **attrs: Any) -> str:
        out = self.name(stem or op.lower())
        self.nodes.append(self.h.make_node(op, inputs, [out], **attrs))
        return out

    def ops(self, op: str, inputs: list[str], n: int, **attrs: Any) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n)]
        self.nodes.append(self.h.make_node(op, inputs, outs, **attrs))
        return outs

    # ---- layers -------------------------------------------------------------------------
    def affine(self, x: str, scale: np.ndarray | None, shift: np.ndarray | None) -> str:
        if scale is not None:
            x = self.op("Mul", [x, self.const(scale, "scale")])
        if shift is not None:
            x = self.op("Add", [x, self.const(shift, "shift")])
        return x

    def linear(self, x: str, layer: nn.Module, bn: nn.BatchNorm1d | None = None) -> str:
        """``nn.Linear`` or ``GroupedPointwise`` (then BN), as one MatMul and an Add."""
        w = layer.weight.detach().numpy().astype(np.float32)
        # GroupedPointwise: (G, ci, co); nn.Linear: (out, in)
        w = _dense(w, w.shape[0]) if w.ndim == 3 else w.T
        bias = getattr(layer, "bias", None)
        b = None if bias is None else bias.detach().numpy().astype(np.float32)
        if bn is not None:
            s, t = _bn(bn)
            w = w * s[None, :]
            b = t if b is None else b * s + t
        y = self.op("MatMul", [x, self.const(w)])
        return y if b is None else self.op("Add", [y, self.const(b, "bias")])

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def _rulebook(self, key: str, kind: str, kernel: list[int], level: int) -> None:
        entry = {"key": key, "kind": kind, "kernel": kernel, "level": level}
        known = self.rulebooks.setdefault(key, entry)
        if known != entry:
            raise ValueError(f"indice_key {key!r} is used by convs of different shapes")

    def _split(self, key: str, kv: int) -> tuple[list[str], list[str]]:
        """The per-offset pieces of a rulebook's flat inputs: (in rows, out rows (n, 1))."""
        if key not in self._pieces:
            counts = f"{key}_counts"
            ins = self.ops("Split", [f"{key}_in", counts], kv, axis=0)
            outs = self.ops("Split", [f"{key}_out", counts], kv, axis=0)
            axes = self.const(np.array([1], np.int64), "axes")
            outs2 = [self.op("Unsqueeze", [o, axes]) for o in outs]
            self._pieces[key] = (ins, outs + outs2)
        ins, outs = self._pieces[key]
        return ins, outs

    def sparse_conv(self, x: str, conv: nn.Module, level: int, bn: nn.BatchNorm1d | None) -> str:
        """One of pointseg's sparse convs (``pointseg.sparse.conv``), BN folded in."""
        kind, key = conv.kind, conv.indice_key
        kernel = [int(k) for k in conv.kernel_size]
        kv = int(np.prod(kernel))
        w = conv.weight.detach().numpy().astype(np.float32)  # (C_out, kD, kH, kW, C_in / G)
        c_out, c_ig = w.shape[0], w.shape[-1]
        w = w.reshape(c_out, kv, c_ig)
        groups = int(conv.groups)
        s, t = _bn(bn) if bn is not None else (np.ones(c_out, np.float32), None)
        if conv.bias is not None:
            b = conv.bias.detach().numpy().astype(np.float32)
            t = b * s + (t if t is not None else 0)
        depthwise = groups > 1 and c_ig == 1 and groups == c_out

        def weight(k: int) -> str:
            if depthwise:
                return self.const(w[:, k, 0] * s, "dw")  # (C,)
            if groups > 1:
                per = w[:, k].reshape(groups, c_out // groups, c_ig).transpose(0, 2, 1)
                return self.const(_dense(per, groups) * s[None, :])
            return self.const(w[:, k].T * s[None, :])  # (C_in, C_out)

        def product(rows: str, k: int) -> str:
            return self.op("Mul" if depthwise else "MatMul", [rows, weight(k)])

        if kind == "subm":
            if key is None:
                raise ValueError("export needs an indice_key on every submanifold conv")
            self._rulebook(key, "subm", kernel, level)
            others = [k for k in range(kv) if k != kv // 2]
            ins, outs = self._split(key, kv - 1)
            acc = product(x, kv // 2)
            for i, k in enumerate(others):
                rows = product(self.op("Gather", [x, ins[i]], axis=0), k)
                acc = self.op("ScatterND", [acc, outs[kv - 1 + i], rows], reduction="add")
        elif kind == "conv":
            if kernel != [2, 2, 2] or list(conv.stride) != [2, 2, 2] or any(conv.padding):
                raise ValueError(f"export supports strided convs with k = s = 2, got {conv}")
            self._rulebook(key, "strided", kernel, level)
            ins, outs = self._split(key, kv)
            shape = self.op("Concat", [f"{key}_size", self.const(np.array([c_out], np.int64))],
                            axis=0)  # fmt: skip
            acc = self.op("ConstantOfShape", [shape],
                          value=self.h.make_tensor("zero", 1, [1], [0.0]))  # fmt: skip
            for k in range(kv):
                rows = product(self.op("Gather", [x, ins[k]], axis=0), k)
                acc = self.op("ScatterND", [acc, outs[kv + k], rows], reduction="add")
        else:  # inverse: rows of level + 1 back to the sites of level
            ins, outs = self._split(key, kv)
            parts = [product(self.op("Gather", [x, outs[k]], axis=0), k) for k in range(kv)]
            acc = self.op("Gather", [self.op("Concat", parts, axis=0), f"{key}_unsort"], axis=0)
        return self.affine(acc, None, t)


def _conv_bn_relu(g: GraphBuilder, x: str, unit: nn.Module, level: int) -> str:
    return g.relu(g.sparse_conv(x, unit.conv, level, unit.bn))


def _block(g: GraphBuilder, x: str, block: nn.Module, level: int) -> str:
    """A residual block: ``BasicBlock`` (pointseg.models.blocks) or ``LiteBlock``."""
    from pointseg.models.blocks import BasicBlock
    from pointseg.models.lite_unet import LiteBlock

    identity = x
    if block.proj is not None:
        identity = g.linear(x, block.proj[0], block.proj[1])
    if isinstance(block, BasicBlock):
        h = g.relu(g.sparse_conv(x, block.conv1, level, block.bn1))
        out = g.sparse_conv(h, block.conv2, level, block.bn2)
    elif isinstance(block, LiteBlock):
        h = g.relu(_separable(g, x, block.unit1, level))
        if block.shuffle_groups > 1:
            c, groups = block.unit1.pw.out_features, block.shuffle_groups
            perm = np.arange(c).reshape(groups, c // groups).T.reshape(-1)  # channel_shuffle
            h = g.op("Gather", [h, g.const(perm.astype(np.int64), "perm")], axis=1)
        out = _separable(g, h, block.unit2, level)
    else:
        raise NotImplementedError(f"cannot export a {type(block).__name__} block")
    return g.relu(g.op("Add", [out, identity]))


def _separable(g: GraphBuilder, x: str, unit: nn.Module, level: int) -> str:
    return g.linear(g.sparse_conv(x, unit.dw, level, unit.bn_dw), unit.pw, unit.bn_pw)


def _stage(g: GraphBuilder, x: str, seq: nn.Module, level: int) -> str:
    for block in seq:
        x = _block(g, x, block, level)
    return x


def build_graph(net: nn.Module) -> tuple[Any, list[dict[str, Any]]]:
    """(onnx ModelProto, rulebook plan) of an eval-mode ``UNetSkeleton`` network."""
    from onnx import TensorProto, helper

    from pointseg.models.sparse_unet import UNetSkeleton

    if not isinstance(net, UNetSkeleton):
        raise NotImplementedError(
            f"pointseg-export handles SparseUNet and LiteUNet networks, not {type(net).__name__}"
        )
    net = net.eval()
    g = GraphBuilder()
    x = _conv_bn_relu(g, "feat", net.stem, 0)
    skips = []
    for i, encoder in enumerate(net.encoders):
        skips.append(x)
        x = _conv_bn_relu(g, x, encoder[0], i)
        x = _stage(g, x, encoder[1], i + 1)
    n = net.num_stages
    for j, (up, decoder) in enumerate(zip(net.ups, net.decoders, strict=True)):
        level = n - j - 1
        x = _conv_bn_relu(g, x, up, level)
        x = g.op("Concat", [x, skips.pop()], axis=1)
        x = _stage(g, x, decoder, level)
    point = net.point_mlp is not None
    if point:
        mlp = net.point_mlp
        p = g.relu(g.linear("point_feat", mlp[0], mlp[1]))
        p = g.relu(g.linear(p, mlp[3], mlp[4]))
        x = g.op("Concat", [g.op("Gather", [x, "inverse"], axis=0), p], axis=1)
    logits = g.linear(x, net.head)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))

    plan = sorted(g.rulebooks.values(), key=lambda r: (r["level"], r["kind"] != "strided"))
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("feat", f, ["voxels", net.in_channels])]
    for rb in plan:
        key = rb["key"]
        for part in ("in", "out"):
            inputs.append(helper.make_tensor_value_info(f"{key}_{part}", i64, [f"{key}_pairs"]))
        kv = int(np.prod(rb["kernel"]))
        counts = kv - 1 if rb["kind"] == "subm" else kv
        inputs.append(helper.make_tensor_value_info(f"{key}_counts", i64, [counts]))
        if rb["kind"] == "strided":
            inputs.append(helper.make_tensor_value_info(f"{key}_size", i64, [1]))
            inputs.append(helper.make_tensor_value_info(f"{key}_unsort", i64, [f"{key}_pairs"]))
    if point:
        inputs.append(helper.make_tensor_value_info("inverse", i64, ["points"]))
        width = net.in_channels + 3
        inputs.append(helper.make_tensor_value_info("point_feat", f, ["points", width]))
    rows = "points" if point else "voxels"
    outputs = [helper.make_tensor_value_info("logits", f, [rows, net.num_classes])]
    graph = helper.make_graph(g.nodes, "pointseg", inputs, outputs, g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pointseg"
    )
    model.ir_version = 8  # readable by every ONNX Runtime >= 1.10
    return model, plan
