"""Datasets of scenes generated from a seed: seeded splits, caching and copy-on-read."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

SPLITS: tuple[str, ...] = ("train", "val", "test")


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def scene_seed(seed: int, split: str, index: int) -> int:
    """Seed of scene ``index`` of ``split``: a 61-bit hash of (seed, index) with the split in
    the two low bits, so the three splits can never share a scene seed."""
    sid = _split_id(split)
    seed, index = operator.index(seed), operator.index(index)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    hi, lo = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return ((int(hi) << 32 | int(lo)) >> 3) << 2 | sid


class IndexOutOfRange(IndexError, ValueError):
    """Both: IndexError for the sequence protocol, ValueError as the argument is invalid."""


class GeneratedScenes(torch.utils.data.Dataset):
    """``num_scenes`` generated scenes of one split, made on demand (and cached).

    Scene ``i`` is ``generate(scene_seed(seed, split, i), **options)``; ``transform`` gets a
    fresh copy, so in-place edits never reach the cache. With ``cache=True`` each scene is
    generated once per process (DataLoader workers keep their own caches). Subclasses set
    ``generate`` (a function of the seed and keyword options) and ``class_names``.
    """

    generate: Callable[..., dict[str, np.ndarray]]
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        split: str = "train",
        *,
        num_scenes: int,
        seed: int = 0,
        transform: Callable[[dict], dict] | None = None,
        cache: bool = True,
        **options: Any,
    ) -> None:
        _split_id(split)
        try:
            n = operator.index(num_scenes)
        except TypeError:
            n = 0
        if isinstance(num_scenes, bool) or n < 1:
            raise ValueError(f"num_scenes must be an integer >= 1, got {num_scenes!r}")
        scene_seed(seed, split, 0)  # validates seed
        knobs = {p for p in inspect.signature(self.generate).parameters if p != "seed"}
        unknown = sorted(set(options) - knobs)
        if unknown:
            name = type(self).__name__
            raise TypeError(f"unknown {name} option(s) {unknown}; valid: {sorted(knobs)}")
        self.split, self.num_scenes, self.seed = split, n, seed
        self.transform, self.cache, self.options = transform, cache, options
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = operator.index(i)
        if not -self.num_scenes <= i < self.num_scenes:
            raise IndexOutOfRange(
                f"index {i} out of range for {type(self).__name__}(split={self.split!r}) with "
                f"num_scenes={self.num_scenes}"
            )
        i %= self.num_scenes
        raw = self._cache.get(i)
        if raw is None:
            raw = type(self).generate(scene_seed(self.seed, self.split, i), **self.options)
            if self.cache:
                self._cache[i] = raw
        sample = {k: v.copy() for k, v in raw.items()}
        return self.transform(sample) if self.transform is not None else sample
