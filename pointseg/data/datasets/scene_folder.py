"""Dataset over prepared scene folders (``pointseg.data.scenes``), for every public dataset."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pointseg.data.scenes import read_scene
from pointseg.guards import DataError, check_labels


class SceneFolder(Dataset):
    """Scenes under ``<root>/<split>/<scene>/`` for one or more splits.

    ``splits`` are sub-folders of ``root`` (``train``/``val`` for ScanNet, ``Area_1``... for
    S3DIS). ``keys`` are the arrays to load; a missing optional key raises with the
    scene's path. ``loop`` repeats the list per epoch (cheap epochs over few big scenes).
    Every scene read is checked (see ``check_scene``): arrays of one length, finite
    coordinates, and with ``num_classes`` labels in ``0..num_classes-1`` or ``ignore_index``.
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
        num_classes: int | None = None,
        ignore_index: int = -1,
    ) -> None:
        self.root = Path(root)
        self.prepare_hint = prepare_hint
        self.num_classes, self.ignore_index = num_classes, ignore_index
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

    def reader_options(self) -> dict[str, Any]:
        """How ``pointseg.io.read_points`` must read the raw files these scenes came from to
        make the same features: for LAS tiles, the options the preparer gave
        ``pointseg.io.las_features.las_features`` (recorded in each scene's ``meta.json``)."""
        meta_path = self.scenes[0] / "meta.json"
        if not meta_path.is_file():
            return {}
        meta = json.loads(meta_path.read_text())
        if "reader" in meta:  # written by this version's preparers
            return dict(meta["reader"])
        if "feature_options" in meta:
            return {"las": dict(meta["feature_options"])}
        hag = (meta.get("features") or {}).get("hag")
        if hag is not None:  # scenes written before the options were recorded whole
            return {"las": {"hag_cell": hag["cell"], "hag_radii": list(hag["radii"])}}
        return {}

    def class_map(self) -> dict[str, Any] | None:
        """The preparer's class map (``{classes: {name: [codes]}, ...}``) from ``meta.json``,
        or None for scenes prepared without one."""
        meta_path = self.scenes[0] / "meta.json"
        if not meta_path.is_file():
            return None
        return json.loads(meta_path.read_text()).get("class_map")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        folder = self.scenes[index % len(self.scenes)]
        arrays = read_scene(folder, self.keys)
        sample: dict[str, Any] = {k: np.array(v) for k, v in arrays.items()}  # off the mmap
        self.check_scene(folder, sample)
        sample["name"] = self.scene_name(index)
        return self.transform(sample) if self.transform else sample

    def check_scene(self, folder: Path, arrays: dict[str, np.ndarray]) -> None:
        """Refuse a damaged scene, naming its file and the command that rewrites it."""
        redo = f"re-prepare it ({self.prepare_hint} --overwrite)"
        n = len(arrays["coord"]) if "coord" in arrays else None
        if n == 0:
            raise DataError(f"{folder / 'coord.npy'} holds no points; {redo} or delete the scene")
        for key, arr in arrays.items():
            if n is not None and len(arr) != n:
                raise DataError(
                    f"{folder / f'{key}.npy'} has {len(arr)} rows but coord.npy has {n} points; "
                    f"{redo}"
                )
        if n is not None and not np.isfinite(arrays["coord"]).all():
            bad = int((~np.isfinite(arrays["coord"]).all(1)).sum())
            raise DataError(f"{folder / 'coord.npy'} has {bad} point(s) with NaN/Inf; {redo}")
        if self.num_classes is not None and "segment" in arrays:
            check_labels(
                arrays["segment"], num_classes=self.num_classes, ignore_index=self.ignore_index,
                where=str(folder / "segment.npy"),
                fix=f"The dataset's class map and data.num_classes={self.num_classes} disagree: "
                f"{redo} with the right class map, or set data.num_classes and data.class_names",
            )  # fmt: skip
