"""Dataset over prepared scene folders (``pointseg.data.scenes``), for every public dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pointseg.data.scenes import read_scene


class SceneFolder(Dataset):
    """Scenes under ``<root>/<split>/<scene>/`` for one or more splits.

    ``splits`` are sub-folders of ``root`` (``train``/``val`` for ScanNet, ``Area_1``... for
    S3DIS). ``keys`` are the arrays to load; a missing optional key raises with the
    scene's path. ``loop`` repeats the list per epoch (cheap epochs over few big scenes).
    """

    def __init__(
        self,
        root: str | Path,
        splits: str | Sequence[str],
        *,
        keys: Sequence[str] = ("coord", "color", "segment"),
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        loop: int = 1,
        prepare_hint: str = "pointseg-prepare <dataset> src=<raw data> dst=<root>",
    ) -> None:
        self.root = Path(root)
        self.splits = [splits] if isinstance(splits, str) else list(splits)
        self.keys, self.transform, self.loop = tuple(keys), transform, int(loop)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset root {self.root} does not exist; prepare it first: {prepare_hint}"
            )
        self.scenes: list[Path] = []
        for split in self.splits:
            folder = self.root / split
            if not folder.is_dir():
                have = sorted(p.name for p in self.root.iterdir() if p.is_dir())
                raise FileNotFoundError(
                    f"split folder {folder} does not exist (found: {have}); "
                    f"prepare it with: {prepare_hint}"
                )
            self.scenes += sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0] != ".")
        if not self.scenes:
            raise FileNotFoundError(
                f"no scenes under {self.root} for splits {self.splits}; {prepare_hint}"
            )

    def __len__(self) -> int:
        return len(self.scenes) * self.loop

    def scene_name(self, index: int) -> str:
        scene = self.scenes[index % len(self.scenes)]
        return f"{scene.parent.name}/{scene.name}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        arrays = read_scene(self.scenes[index % len(self.scenes)], self.keys)
        sample: dict[str, Any] = {k: np.array(v) for k, v in arrays.items()}  # off the mmap
        sample["name"] = self.scene_name(index)
        return self.transform(sample) if self.transform else sample
