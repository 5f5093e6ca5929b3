"""LightningDataModule: datasets + transforms from the config, batched by ``collate``.

Under DDP Lightning wraps each loader in a ``DistributedSampler``, so every rank sees its
own shard; the metrics all-reduce their confusion matrices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pointseg.data.collate import collate
from pointseg.data.transforms import Compose

DatasetFactory = Callable[..., Dataset]
log = logging.getLogger(__name__)


class UnpaddedDistributedSampler(DistributedSampler):
    """Every sample exactly once across ranks (rank r takes r, r + W, ...).

    Lightning's default sampler pads the last round with repeats, which would count some
    validation scenes twice; the confusion matrices are summed, so shards may be uneven.
    """

    def __iter__(self):  # type: ignore[override]
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class SegmentationDataModule(pl.LightningDataModule):
    def __init__(
        self,
        *,
        num_classes: int,
        class_names: Sequence[str],
        in_channels: int,
        ignore_index: int = -1,
        voxel_size: float,
        train_dataset: DatasetFactory | None = None,
        val_dataset: DatasetFactory | None = None,
        test_dataset: DatasetFactory | None = None,
        train_transforms: Sequence[Callable] = (),
        val_transforms: Sequence[Callable] = (),
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        feat_keys: Sequence[str] = ("color",),
        feature_widths: Mapping[str, int] | None = None,  # what in_channels was derived from
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(
                f"data.class_names has {len(class_names)} names but data.num_classes is "
                f"{num_classes}; make them agree"
            )
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.num_classes, self.class_names = num_classes, list(class_names)
        self.in_channels, self.ignore_index = in_channels, ignore_index
        self.voxel_size, self.feat_keys = voxel_size, list(feat_keys)
        self.factories = {"train": train_dataset, "val": val_dataset, "test": test_dataset}
        self.transforms = {
            "train": Compose(train_transforms),
            "val": Compose(val_transforms),
            "test": Compose(val_transforms),
        }
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset] = {}

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` ('train', 'val' or 'test'), built on first use."""
        if split not in self.datasets:
            factory = self.factories.get(split)
            if factory is None:
                raise ValueError(f"no {split} dataset is configured (data.{split}_dataset)")
            ds = factory(transform=self.transforms[split])
            self._check_first_sample(ds, split)
            self.datasets[split] = ds
        return self.datasets[split]

    def _check_first_sample(self, ds: Dataset, split: str) -> None:
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"the {split} dataset is empty; check data.{split}_dataset")
        sample = ds[0]
        width = sample["feat"].shape[1]
        if width != self.in_channels:
            raise ValueError(
                f"the {split} samples have {width} feature channels (feat_keys="
                f"{self.feat_keys}) but data.in_channels is {self.in_channels}; set "
                f"data.in_channels={width} or change data.feat_keys"
            )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            _check_no_leak(self.dataset("train"), self.dataset("val"))
        if stage == "validate":
            self.dataset("val")
        if stage == "test":
            self.dataset("test")

    def _loader(
        self, split: str, batch_size: int, shuffle: bool, drop_last: bool = False
    ) -> DataLoader:
        ds = self.dataset(split)
        sampler = None
        if not shuffle and dist.is_available() and dist.is_initialized():
            sampler = UnpaddedDistributedSampler(ds, shuffle=False)
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        # the last incomplete batch is dropped (a batch of one scene would skew BatchNorm),
        # unless that would leave no batch at all
        world = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
        per_process = math.ceil(len(self.dataset("train")) / world)  # type: ignore[arg-type]
        drop_last = per_process >= self.batch_size
        if not drop_last:
            log.warning(
                "the training set has %d sample(s)%s, fewer than data.batch_size=%d: training "
                "on one batch of %d per epoch; set data.batch_size<=%d to silence this",
                per_process, " per process" if world > 1 else "", self.batch_size,
                per_process, per_process,
            )  # fmt: skip
        return self._loader("train", self.batch_size, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        return {}


def _check_no_leak(train: Any, val: Any) -> None:
    """Refuse scene-folder splits that are both trained and validated on (e.g. an S3DIS area)."""
    if val is None or not all(hasattr(d, "root") and hasattr(d, "splits") for d in (train, val)):
        return
    if Path(train.root).resolve() != Path(val.root).resolve():
        return
    both = sorted(set(train.splits) & set(val.splits))
    if both:
        raise ValueError(
            f"split(s) {both} of {train.root} are in both data.train_dataset.splits "
            f"({list(train.splits)}) and data.val_dataset.splits ({list(val.splits)}); "
            "validation must be held out: remove them from the training splits"
        )
