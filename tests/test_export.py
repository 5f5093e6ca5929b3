"""pointseg-export: a folder with no pickle that labels points like the checkpoint it came from,
in torch (rebuilt from JSON and safetensors) and in ONNX Runtime (rulebooks built in numpy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")

from pointseg.checkpoint import UntrustedCheckpointError, save_checkpoint, weights_checkpoint
from pointseg.export import rulebooks
from pointseg.export.export import export
from pointseg.inference import InferenceOptions
from pointseg.segmenter import RECIPE_KEY, FeatureRecipe, Segmenter
from pointseg.targets import instantiate
from tests.conftest import SHARED_DATA

TINY = {"stem_channels": 8, "channels": [8] * 8, "layers": [1] * 8}
LAS_KEYS = ("hag", "strength", "returns", "geom")  # data=las: 12 input columns
UNET = "pointseg.models.sparse_unet.SparseUNet"
NETS: dict[str, tuple[dict[str, Any], FeatureRecipe]] = {
    # data=las's plan: a 3^3 stem and the point branch
    "las": (
        {
            "_target_": UNET,
            "in_channels": 12,
            "num_classes": 3,
            "stem_kernel": 3,
            "point_channels": 8,
            **TINY,
        },
        FeatureRecipe(
            class_names=("ground", "vegetation", "building"),
            feat_keys=LAS_KEYS,
            voxel_size=1.0,
            class_codes=(2, 3, 6),
            reader={"las": {"hag_radii": [2.0, 5.0, 15.0, 30.0, 60.0]}},
        ),
    ),  # fmt: skip
    # the synthetic rooms' plan: a 5^3 stem, colour in, voxel labels
    "synthetic": (
        {"_target_": UNET, "in_channels": 3, "num_classes": 3, **TINY},
        FeatureRecipe(class_names=("floor", "wall", "chair"), feat_keys=("color",), voxel_size=0.1),
    ),  # fmt: skip
    # depthwise-separable blocks, grouped pointwise layers with a channel shuffle
    "lite": (
        {
            "_target_": "pointseg.models.lite_unet.LiteUNet",
            "in_channels": 3,
            "num_classes": 3,
            "pw_groups": 2,
            "shuffle": True,
            **TINY,
        },
        FeatureRecipe(class_names=("floor", "wall", "chair"), feat_keys=("color",), voxel_size=0.1),
    ),  # fmt: skip
    # a structured-pruned network: smaller widths in its config
    "pruned": (
        {
            "_target_": UNET,
            "in_channels": 3,
            "num_classes": 3,
            "point_channels": 8,
            **TINY,
            "widths": {
                "stem": 5,
                "down": [6, 3, 7, 4],
                "up": [3, 5, 2, 6],
                "dec": [4, 6, 3, 5],
                "point_mid": 4,
                "point": 3,
            },
        },
        FeatureRecipe(class_names=("floor", "wall", "chair"), feat_keys=("color",), voxel_size=0.1),
    ),  # fmt: skip
}


def _checkpoint(path: Path, cfg: dict[str, Any], recipe: FeatureRecipe) -> Path:
    """A weights-only checkpoint of a random network with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = instantiate(cfg)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    extra = {RECIPE_KEY: recipe.to_dict()}
    return save_checkpoint(weights_checkpoint(state, {"model": {"net": cfg}}, extra=extra), path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(checkpoint, export folder) of every network of ``NETS``."""
    out = {}
    for name, (cfg, recipe) in NETS.items():
        d = tmp_path_factory.mktemp(name)
        ckpt = _checkpoint(d / "model.ckpt", cfg, recipe)
        export(ckpt, d / "export", check=name == "las")
        out[name] = (ckpt, d / "export")
    return out


def _sample(recipe: FeatureRecipe, n: int = 3000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    extent = 24.0 * recipe.voxel_size
    s = {"coord": (rng.random((n, 3)) * [extent, extent, extent / 8]).astype(np.float32)}
    widths = {"hag": 5, "strength": 1, "returns": 2, "geom": 4, "color": 3}
    for key in recipe.feat_keys:
        s[key] = rng.random((n, widths[key])).astype(np.float32).squeeze()
    return s


def test_numpy_rulebooks_are_pointsegs() -> None:
    from pointseg.sparse import rulebook

    rng = np.random.default_rng(3)
    cells = rng.choice(30 * 30 * 12 * 2, size=3000, replace=False)
    grid = np.stack(np.unravel_index(cells, (2, 30, 30, 12)), 1).astype(np.int32)  # 2 samples
    idx = torch.from_numpy(grid)
    for k in (3, 5):
        want = rulebook.subm_pairs(idx, 2, [32, 32, 16], [k] * 3)
        got = rulebooks.subm_pairs(grid, [k] * 3)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(w.numpy(), g)
    want = rulebook.strided_pairs(idx, 2, [32, 32, 16], [2, 2, 2])
    got = rulebooks.strided_pairs(grid, [2, 2, 2])
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w.numpy(), g)


def test_export_folder_holds_no_pickle(exported: dict[str, tuple[Path, Path]]) -> None:
    ckpt, folder = exported["las"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.onnx", "model.safetensors", "pointseg.json",
    ]  # fmt: skip
    meta = json.loads((folder / "pointseg.json").read_text())
    assert meta["class_names"] == ["ground", "vegetation", "building"]
    assert meta["class_codes"] == [2, 3, 6]
    assert meta["recipe"] == NETS["las"][1].to_dict()
    assert meta["network"]["config"] == NETS["las"][0]
    assert meta["check"]["label_agreement"] >= 0.999
    # safetensors: an 8-byte header length, then JSON (no pickle opcode stream)
    head = (folder / "model.safetensors").read_bytes()[:9]
    assert head[8:9] == b"{"


@pytest.mark.parametrize("name", list(NETS))
def test_runtimes_label_like_the_checkpoint(
    name: str, exported: dict[str, tuple[Path, Path]]
) -> None:
    ckpt, folder = exported[name]
    recipe = NETS[name][1]
    # several blocks with margins, so block voting runs through both runtimes
    opts = InferenceOptions(block_size=12 * recipe.voxel_size, overlap=2 * recipe.voxel_size,
                            single_pass_max_voxels=0)  # fmt: skip
    sample = _sample(recipe)
    want = Segmenter.from_checkpoint(ckpt, options=opts, device="cpu").predict(sample)
    assert want.num_blocks > 1
    probs = lambda p: p.voxel_probs if p.probs is None else p.probs  # noqa: E731
    same = Segmenter.from_pretrained(folder, runtime="torch", options=opts).predict(sample)
    np.testing.assert_array_equal(same.labels, want.labels)
    np.testing.assert_array_equal(probs(same), probs(want))
    onnx = Segmenter.from_pretrained(folder, runtime="onnx", options=opts).predict(sample)
    assert (onnx.labels == want.labels).mean() >= 0.999
    assert np.abs(probs(onnx) - probs(want)).max() < 1e-4


def test_pruned_network_exports_its_widths(exported: dict[str, tuple[Path, Path]]) -> None:
    meta = json.loads((exported["pruned"][1] / "pointseg.json").read_text())
    widths = meta["network"]["widths"]
    assert widths["down"] == [6, 3, 7, 4] and widths["point"] == 3
    full = json.loads((exported["synthetic"][1] / "pointseg.json").read_text())
    assert meta["bytes"]["model.onnx"] < full["bytes"]["model.onnx"]


def test_untrusted_checkpoint_is_refused(tmp_path: Path) -> None:
    from tests.test_checkpoint_safety import _MakeDir, _with_payload

    marker = tmp_path / "ran"
    evil = _with_payload(None, tmp_path / "evil.ckpt", _MakeDir(marker))
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint=true"):
        export(evil, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_onnx_runtime_needs_no_spconv_hydra_or_lightning(
    exported: dict[str, tuple[Path, Path]],
) -> None:
    folder = exported["las"][1]
    code = f"""
import sys, numpy as np
from pointseg.segmenter import Segmenter
seg = Segmenter.from_pretrained({str(folder)!r}, runtime="onnx")
rng = np.random.default_rng(0)
n = 2000
s = {{"coord": rng.random((n, 3), dtype=np.float32) * 30, "hag": rng.random((n, 5), np.float32),
     "strength": rng.random(n, np.float32), "returns": rng.random((n, 2), np.float32),
     "geom": rng.random((n, 4), np.float32)}}
assert len(seg.predict(s).labels) == n
loaded = [m for m in ("spconv", "cumm", "hydra", "pytorch_lightning", "lightning")
          if m in sys.modules]
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_predict_command_from_the_export(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    from pointseg.predict import predict
    from tests.conftest import compose_config

    ckpt, folder = exported["synthetic"]
    sample = _sample(NETS["synthetic"][1], n=4000)
    np.savez(tmp_path / "room.npz", coord=sample["coord"], color=sample["color"])
    labels = {}
    for name, args in {"ckpt": [f"ckpt_path={ckpt}"],
                       "onnx": [f"ckpt_path={folder}", "runtime=onnx"]}.items():  # fmt: skip
        out = tmp_path / name
        cfg = compose_config("predict", [*args, f"input={tmp_path / 'room.npz'}",
                                         f"output={out}", "progress=false"], tmp_path)  # fmt: skip
        predict(cfg)
        labels[name] = np.load(out / "room.labels.npy")
    assert (labels["onnx"] == labels["ckpt"]).mean() >= 0.999


@pytest.mark.skipif(not (SHARED_DATA / "4_6_crop.las").is_file(), reason="no shared LAS tile")
def test_real_las_tile_through_both_runtimes(exported: dict[str, tuple[Path, Path]]) -> None:
    ckpt, folder = exported["las"]
    opts = InferenceOptions(block_size=50.0, overlap=5.0, single_pass_max_voxels=0)
    ref = Segmenter.from_checkpoint(ckpt, options=opts, device="cpu")
    sample = ref.read(SHARED_DATA / "4_6_crop.las")
    want = ref.predict(sample)
    got = Segmenter.from_pretrained(folder, runtime="onnx", options=opts).predict(sample)
    assert want.num_blocks > 1
    assert (got.labels == want.labels).mean() >= 0.999
    assert np.abs(got.probs - want.probs).max() < 1e-4


def test_predict_command_runs_without_spconv(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """``pointseg-predict ckpt_path=<export> runtime=onnx`` with spconv not installed."""
    folder = exported["synthetic"][1]
    sample = _sample(NETS["synthetic"][1], n=2000)
    np.savez(tmp_path / "room.npz", coord=sample["coord"], color=sample["color"])
    argv = ["pointseg-predict", f"ckpt_path={folder}", "runtime=onnx",
            f"input={tmp_path / 'room.npz'}", f"output={tmp_path / 'out'}", "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    code = (
        "import sys; sys.modules['spconv'] = sys.modules['cumm'] = None; "
        f"sys.argv = {argv!r}; from pointseg.predict import main; main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(np.load(tmp_path / "out" / "room.labels.npy")) == 2000
