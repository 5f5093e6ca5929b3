"""A trained model's whole path from raw points to labels, as one object.

``Segmenter.from_checkpoint(path)`` is the one way pointseg turns a checkpoint into
something that labels points. It holds the network, the class names and the
:class:`FeatureRecipe`: how the training samples were made from raw files (the reader
options, such as the LAS heights above ground, the transforms before voxelization, the
voxel size and the feature keys). The recipe is written into every checkpoint at training
time, so a model trained on prepared scenes labels the raw file the scenes came from with
the same features. Block inference and test-time augmentation come from
``pointseg.inference``. Every command that labels points uses it: ``pointseg-eval``'s scene
path, ``pointseg-predict``, ``pointseg-submit`` and pruning's measurements (the viewer
reads the files predict writes). The recipe itself lives in ``pointseg.recipe``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pointseg.data.voxelize import voxel_offsets, voxelize_chunked
from pointseg.inference import BlockPoints, InferenceOptions, Prediction, _transform, plan_blocks
from pointseg.io import label_dtype
from pointseg.models.point_branch import has_point_branch
from pointseg.recipe import RECIPE_KEY, FeatureRecipe, feature_recipe, reader_options, stored_recipe

Sample = dict[str, Any]


class Segmenter:
    """Network + classes + feature recipe + inference options: raw points in, labels out."""

    def __init__(
        self,
        net: nn.Module,
        recipe: FeatureRecipe,
        *,
        options: InferenceOptions | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        stages = getattr(net, "num_stages", None)
        if not isinstance(stages, int) or stages < 0:
            raise ValueError(
                f"{type(net).__name__} has no integer `num_stages` (how many times it halves "
                "the grid); block inference needs it to keep blocks on the pooling grid"
            )
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.recipe = recipe
        self.options = options or InferenceOptions()
        self.align = 2**stages
        self.pre_transform = recipe.build_transforms()
        # called before every block by pointseg-predict (its ThreadGovernor); None in a library
        self.block_hook: Callable[[], Any] | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.recipe.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.recipe.class_names)

    @property
    def feat_keys(self) -> list[str]:
        return list(self.recipe.feat_keys)

    @property
    def voxel_size(self) -> float:
        return self.recipe.voxel_size

    @property
    def file_features(self) -> list[str]:
        return self.recipe.file_features

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        options: InferenceOptions | None = None,
        device: str = "auto",
        trust: bool = False,
        data_overrides: Mapping[str, Any] | None = None,
        ckpt: Mapping[str, Any] | None = None,
    ) -> Segmenter:
        """The checkpoint's network with its recipe (``ckpt``: ``path`` already loaded).
        ``data_overrides`` (eval's ``data.*``) change the stored data config; a checkpoint
        written before recipes were stored gets one from its stored data config."""
        from pointseg.checkpoint import build_net, load_checkpoint

        ckpt = load_checkpoint(path, trust=trust) if ckpt is None else ckpt
        recipe = stored_recipe(ckpt, data_overrides=data_overrides, where=str(path))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(build_net(ckpt), recipe, options=options, device=device)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        runtime: str = "torch",
        options: InferenceOptions | None = None,
        threads: int | None = None,
    ) -> Segmenter:
        """The pipeline of a ``pointseg-export`` folder, on the CPU, with no Lightning or
        Hydra: ``runtime="torch"`` rebuilds the network from its JSON config and safetensors
        weights; ``"onnx"`` runs its graph in ONNX Runtime (``threads``: its thread count),
        without spconv."""
        from pointseg.export.runtime import load_net

        net, meta = load_net(folder, runtime=runtime, threads=threads)
        recipe = FeatureRecipe.from_dict(meta["recipe"], where=str(folder))
        return cls(net, recipe, options=options, device="cpu")

    def read(self, path: str | Path, **options: Any) -> Sample:
        return self.recipe.read(path, chunk_size=self.options.chunk_size, **options)

    @torch.no_grad()
    def _scores(
        self,
        grid: np.ndarray,
        feat: np.ndarray,
        counts: np.ndarray,
        groups,
        points: BlockPoints | None = None,
    ) -> np.ndarray:
        """Mean softmax over the TTA copies of one block: (B, K) float32 for its voxels, or
        (n, K) for its ``points`` with a point branch."""
        total = None
        for angle, flip, scale in self.options.variants():
            g, f, back, pts = _transform(
                grid, feat, counts, groups, angle=angle, flip=flip, scale=scale, align=self.align,
                points=points,
            )  # fmt: skip
            idx = torch.zeros((len(g), 4), dtype=torch.int32)
            idx[:, 1:] = torch.from_numpy(g.astype(np.int32))
            x = torch.from_numpy(np.ascontiguousarray(f)).to(self.device)
            if pts is None:
                logits = self.net(x, idx.to(self.device), 1)
            else:
                logits = self.net(
                    x, idx.to(self.device), 1, inverse=torch.from_numpy(pts.local).to(self.device),
                    point_feat=torch.from_numpy(pts.feat).to(self.device),
                )  # fmt: skip
            probs = torch.softmax(logits.float(), 1).cpu().numpy()
            probs = probs if back is None or pts is not None else probs[back]
            total = probs if total is None else total + probs
        return total / len(self.options.variants())

    @property
    def labels_points(self) -> bool:
        """Whether the network labels every point itself (a point branch), not its voxel."""
        return has_point_branch(self.net)

    def predict(
        self, sample: Sample, *, progress: Any = None, grid_origin: np.ndarray | None = None
    ) -> Prediction:
        """Labels for every point of ``sample`` (from :meth:`read` or a dataset's raw
        scene); ``progress`` (a tqdm bar) is advanced once per block. ``grid_origin`` (3,)
        (``coord``'s frame): ``sample`` is a spatial chunk of a larger tile whose voxel grid
        starts there; it is voxelized on that grid and always labelled in blocks on the
        tile's block grid, so its voxels get the votes they get in a whole-tile block run.
        A network with a point branch votes per point: every block that holds a point's voxel
        adds its probabilities for that point, with the voxel's weight."""
        sample = self.pre_transform(dict(sample))
        missing = [k for k in self.feat_keys if k not in sample]
        if missing:
            raise KeyError(f"feature(s) {missing} missing (the sample has {sorted(sample)})")
        opts = self.options
        vox = voxelize_chunked(
            sample, self.feat_keys, voxel_size=self.voxel_size, chunk_size=opts.chunk_size,
            grid_origin=grid_origin,
        )  # fmt: skip
        point_in = self._point_inputs(sample, vox) if self.labels_points else None
        del sample
        m = len(vox.grid)
        whole = grid_origin is None and m <= opts.single_pass_max_voxels
        if opts.block_size is None or whole:
            nblocks, blocks = 1, iter([(np.arange(m), np.ones(m, np.float32))])
        else:
            tile = max(1, round(opts.block_size / self.voxel_size))
            margin = round(opts.overlap / self.voxel_size)
            nblocks, blocks = plan_blocks(
                vox.grid, tile=tile, margin=margin, margin_weight=opts.margin_weight
            )
        if progress is not None:
            progress.reset(total=nblocks)
        rows = m if point_in is None else len(vox.inverse)
        acc = np.zeros((rows, self.num_classes), np.float32)
        if point_in is not None:  # the points of each voxel, as ranges of one sorted order
            by_voxel = np.argsort(vox.inverse, kind="stable")
            first = np.concatenate([[0], np.cumsum(vox.counts)[:-1]])
        for ids, weight in blocks:
            if self.block_hook is not None:
                self.block_hook()
            grid = vox.grid[ids].astype(np.int64)
            if point_in is None:
                probs = self._scores(grid, vox.feat[ids], vox.counts[ids], vox.groups)
                acc[ids] += weight[:, None] * probs
            else:
                n_in = vox.counts[ids]
                local = np.repeat(np.arange(len(ids)), n_in)  # (n,) voxel row in the block
                start = np.repeat(first[ids] - np.cumsum(n_in) + n_in, n_in)
                pts = by_voxel[start + np.arange(len(local))]  # (n,) the block's points
                block = BlockPoints(point_in[pts], local)
                probs = self._scores(grid, vox.feat[ids], vox.counts[ids], vox.groups, block)
                acc[pts] += weight[local, None] * probs
            if progress is not None:
                progress.update(1)
        acc /= acc.sum(1, keepdims=True)
        dtype = label_dtype(self.num_classes)
        if point_in is not None:
            labels = acc.argmax(1).astype(dtype)
            return Prediction(labels, None, vox.inverse, nblocks, probs=acc)
        labels = acc.argmax(1).astype(dtype)[vox.inverse]
        return Prediction(labels=labels, voxel_probs=acc, inverse=vox.inverse, num_blocks=nblocks)

    def _point_inputs(self, sample: Sample, vox: Any) -> np.ndarray:
        """(N, C + 3) float32: every point's features (as ``Voxelize`` concatenates them) and
        its offset inside its voxel."""
        n = len(vox.inverse)
        cols = [np.asarray(sample[k], dtype=np.float32).reshape(n, -1) for k in self.feat_keys]
        offset = voxel_offsets(
            sample["coord"], vox.origin, self.voxel_size, vox.grid[vox.inverse]
        )  # fmt: skip
        return np.concatenate([*cols, offset], axis=1)


def score_scenes(
    segmenter: Segmenter,
    scenes: Iterable[Sample],
    *,
    ignore_index: int,
    progress: bool = False,
    total: int | None = None,
    on_scene: Callable[[int, Sample, np.ndarray], None] | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The one scene-scoring loop: label every raw scene (with ``segment``) and return the
    summed (K, K) confusion matrix and per-scene scores; ``on_scene(i, sample, labels)``
    sees each scene's labels (to write or render them)."""
    from tqdm import tqdm

    from pointseg.metrics import confusion_matrix, scores

    k = segmenter.num_classes
    confmat = torch.zeros((k, k), dtype=torch.long)
    per_scene = []
    bar = tqdm(scenes, total=total, desc="scenes", unit="scene", disable=not progress)
    for i, sample in enumerate(bar):
        labels = segmenter.predict(sample).labels
        cm = confusion_matrix(
            torch.from_numpy(labels.astype(np.int64)),
            torch.as_tensor(np.asarray(sample["segment"]), dtype=torch.long),
            k,
            ignore_index,
        )
        confmat += cm
        sc = scores(cm)
        name = str(sample.get("name", i))
        per_scene.append(
            {"scene": i, "name": name, "points": len(labels), "miou": sc.miou, "allacc": sc.allacc}
        )
        if on_scene is not None:
            on_scene(i, sample, labels)
    return confmat, per_scene


def dataset_scenes(dataset: Any) -> tuple[Iterable[Sample], int]:
    """(raw scenes of a map-style dataset, their count) for :func:`score_scenes`."""
    n = len(dataset)
    return (dataset[i] for i in range(n)), n


__all__: Sequence[str] = (
    "RECIPE_KEY",  # re-exported from pointseg.recipe, the recipe's home
    "FeatureRecipe",
    "Segmenter",
    "dataset_scenes",
    "feature_recipe",
    "reader_options",
    "score_scenes",
    "stored_recipe",
)
