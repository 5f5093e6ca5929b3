"""What every transform shares: the sample type, ``Compose`` and the random base class.

``pointseg.data.transforms`` (voxelizing and the basic augmentations) and
``pointseg.data.augment`` (the Pointcept recipes' augmentations) both build on this module.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Sample = dict[str, Any]


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample


class RandomTransform:
    """Base for random transforms.

    The generator is created lazily in the process that uses it. In a DataLoader worker
    it is seeded from the worker's torch seed (distinct per worker and per epoch, and
    reproducible under ``seed_everything``); in the main process from ``seed`` or else
    ``torch.initial_seed()``. Without this every worker would replay the same draws.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._rng: np.random.Generator | None = None
        self._owner: tuple[int, int | None] | None = None

    @property
    def rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if info is None else info.seed)
        if self._rng is None or owner != self._owner:
            if info is not None:
                base = info.seed if self._seed is None else self._seed + info.id
            else:
                base = torch.initial_seed() if self._seed is None else self._seed
            salt = zlib.crc32(type(self).__name__.encode())
            self._rng = np.random.default_rng([base % 2**63, salt])
            self._owner = owner
        return self._rng
