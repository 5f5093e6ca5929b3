"""SemanticKITTI, read in place from the official layout.

``<root>/sequences/NN/velodyne/XXXXXX.bin`` holds float32 ``x y z remission`` rows and
``<root>/sequences/NN/labels/XXXXXX.label`` one uint32 per point: the low 16 bits are the
raw semantic id, the high 16 bits the instance. Raw ids fold into 19 classes through the
benchmark's ``learning_map`` (shipped as ``semantic-kitti.yaml`` next to this file); its
class 0 is ignored, so ``segment = learning_map[raw] - 1`` with ignore ``-1``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch.utils.data import Dataset

SPLIT_KEYS = {"train": "train", "val": "valid", "test": "test"}  # our name -> yaml's
UNKNOWN = -2  # lookup value of raw ids that the label definition does not know
SOURCE_HINT = (
    "SemanticKITTI is not downloaded automatically: get the KITTI odometry velodyne scans "
    "(data_odometry_velodyne.zip) and the SemanticKITTI labels (data_odometry_labels.zip) "
    "from http://www.semantic-kitti.org/dataset.html, unzip both into one folder and point "
    "data.train_dataset.root at its dataset/ folder (see docs/datasets/semantickitti.md)"
)


class SemanticKITTIError(ValueError):
    """A scan or label file is malformed; the message names the file(s)."""


@dataclass(frozen=True)
class KittiLabels:
    """The benchmark's label definition (``semantic-kitti.yaml``)."""

    names: dict[int, str]  # raw id -> name
    learning_map: dict[int, int]  # raw id -> 0..19, 0 = ignored
    learning_map_inv: dict[int, int]  # 0..19 -> raw id written in a submission
    learning_ignore: dict[int, bool]
    content: dict[int, float]  # raw id -> share of all labelled-sequence points
    splits: dict[str, tuple[int, ...]]  # train / val / test -> sequence numbers

    @property
    def class_names(self) -> list[str]:
        """The 19 trained classes, in ``segment`` order."""
        return [self.names[self.learning_map_inv[k]] for k in range(1, len(self.learning_map_inv))]

    @functools.cached_property
    def lut(self) -> np.ndarray:
        """(max raw id + 1,) int64: raw id -> segment (0..18, -1 ignored, UNKNOWN)."""
        table = np.full(max(self.learning_map) + 1, UNKNOWN, dtype=np.int64)
        for raw, k in self.learning_map.items():
            table[raw] = k - 1
        return table

    def class_frequencies(self) -> np.ndarray:
        """(19,) share of each class among the non-ignored points, from ``content``."""
        freq = np.zeros(len(self.class_names))
        for raw, share in self.content.items():
            if self.learning_map[raw] > 0:
                freq[self.learning_map[raw] - 1] += share
        return freq / freq.sum()


@functools.cache
def kitti_labels() -> KittiLabels:
    text = (resources.files(__package__) / "semantic-kitti.yaml").read_text()
    cfg = yaml.safe_load(text)
    return KittiLabels(
        names={int(k): str(v) for k, v in cfg["labels"].items()},
        learning_map={int(k): int(v) for k, v in cfg["learning_map"].items()},
        learning_map_inv={int(k): int(v) for k, v in cfg["learning_map_inv"].items()},
        learning_ignore={int(k): bool(v) for k, v in cfg["learning_ignore"].items()},
        content={int(k): float(v) for k, v in cfg["content"].items()},
        splits={ours: tuple(int(s) for s in cfg["split"][key]) for ours, key in SPLIT_KEYS.items()},
    )


def sequence_names(split: str | None, sequences: Sequence[int | str] | None) -> list[str]:
    """Two-digit folder names: ``sequences`` if given, else the official ``split``."""
    if sequences is not None:
        try:
            return [f"{int(s):02d}" for s in sequences]
        except (TypeError, ValueError):
            raise ValueError(
                f"sequences must be numbers like [0, 8] or ['08'], got {sequences}"
            ) from None
    splits = kitti_labels().splits
    if split not in splits:
        raise ValueError(
            f"split must be one of {sorted(splits)} (or give sequences), got {split!r}"
        )
    return [f"{s:02d}" for s in splits[split]]


@dataclass(frozen=True)
class ScanFiles:
    name: str  # "08/000123"
    points: Path
    labels: Path | None  # None in the unlabelled test sequences


def list_scans(root: str | Path, sequences: Sequence[str]) -> list[ScanFiles]:
    """Every scan of ``sequences`` with its label file; checks that they pair up.

    A sequence with a ``labels/`` folder must have a label for every scan (and no label
    without a scan). Without one, only the official test sequences are accepted, unlabelled.
    """
    root = Path(root)
    labelled = {f"{s:02d}" for k in ("train", "val") for s in kitti_labels().splits[k]}
    out: list[ScanFiles] = []
    for seq in sequences:
        folder = root / "sequences" / seq
        velodyne, labels = folder / "velodyne", folder / "labels"
        if not velodyne.is_dir():
            raise FileNotFoundError(f"scan folder {velodyne} does not exist. {SOURCE_HINT}")
        bins = sorted(velodyne.glob("*.bin"))
        if not bins:
            raise FileNotFoundError(f"no .bin scans in {velodyne}. {SOURCE_HINT}")
        if not labels.is_dir():
            if seq in labelled:
                raise FileNotFoundError(
                    f"label folder {labels} does not exist but sequence {seq} is labelled; "
                    f"unzip data_odometry_labels.zip into the same folder. {SOURCE_HINT}"
                )
            out += [ScanFiles(f"{seq}/{b.stem}", b, None) for b in bins]
            continue
        names = {b.stem for b in bins}
        orphans = sorted(p.name for p in labels.glob("*.label") if p.stem not in names)
        if orphans:
            raise SemanticKITTIError(
                f"{labels} has label files without a scan in {velodyne}: {orphans[:5]}; the "
                "velodyne and label downloads must come from the same release"
            )
        for b in bins:
            lab = labels / f"{b.stem}.label"
            if not lab.is_file():
                raise SemanticKITTIError(f"scan {b} has no label file {lab}")
            out.append(ScanFiles(f"{seq}/{b.stem}", b, lab))
    return out


def count_points(path: Path) -> int:
    """Points in a ``.bin`` scan, from its size (16 bytes a point)."""
    size = path.stat().st_size
    if size % 16 or size == 0:
        raise SemanticKITTIError(
            f"{path} has {size} bytes, not a positive multiple of 16 (4 float32 per point): "
            "the file is truncated or not a velodyne scan; download it again"
        )
    return size // 16


def read_scan_points(path: Path) -> dict[str, np.ndarray]:
    """``coord (N, 3)`` and ``strength (N, 1)`` (remission) of one ``.bin`` scan, read by
    ``pointseg.io.read_points``, as ``pointseg-predict`` reads a raw scan."""
    from pointseg.io import read_points

    count_points(path)
    sample = read_points(path, format="kitti")
    return {"coord": sample["coord"], "strength": sample["strength"]}


def read_labels(path: Path, *, num_points: int, scan: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw semantic ids ``(N,) int64`` and instances ``(N,) int64`` of one ``.label`` file."""
    size = path.stat().st_size
    if size != 4 * num_points:
        raise SemanticKITTIError(
            f"{path} holds {size / 4:g} labels but {scan} has {num_points} points; the label "
            "file must have one uint32 per point of its scan"
        )
    raw = np.fromfile(path, dtype=np.uint32)
    return (raw & 0xFFFF).astype(np.int64), (raw >> 16).astype(np.int64)


def map_labels(raw: np.ndarray, *, source: Path | str) -> np.ndarray:
    """Raw ids -> ``segment`` (0..18, ignore -1); unknown ids raise, naming ``source``."""
    lut = kitti_labels().lut
    inside = raw < len(lut)
    segment = np.full(raw.shape, UNKNOWN, dtype=np.int64)
    segment[inside] = lut[raw[inside]]
    bad = segment == UNKNOWN
    if bad.any():
        ids = np.unique(raw[bad]).tolist()
        raise SemanticKITTIError(
            f"{source} has raw label id(s) {ids[:10]} that semantic-kitti.yaml does not know "
            f"({int(bad.sum())} points); known ids: {sorted(kitti_labels().learning_map)}"
        )
    return segment


def load_scan(files: ScanFiles) -> dict[str, Any]:
    """One scan as a sample: coord, strength, segment, instance, name."""
    pts = read_scan_points(files.points)
    n = len(pts["coord"])
    if files.labels is None:
        segment, instance = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    else:
        raw, instance = read_labels(files.labels, num_points=n, scan=files.points)
        segment = map_labels(raw, source=files.labels)
    return {
        "coord": np.ascontiguousarray(pts["coord"]),
        "strength": np.ascontiguousarray(pts["strength"]),
        "segment": segment,
        "instance": instance,
        "name": files.name,
    }


class SemanticKITTI(Dataset):
    """Scans of a split (``train``: 00-07, 09, 10; ``val``: 08; ``test``: 11-21, unlabelled)
    or of explicit ``sequences``, which replace the split's list when given.

    ``step`` keeps every ``step``-th scan of each sequence (consecutive scans overlap
    heavily, so a strided validation is a cheap, close estimate).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        *,
        sequences: Sequence[int | str] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        step: int = 1,
    ) -> None:
        self.root = Path(root)
        if not (self.root / "sequences").is_dir():
            raise FileNotFoundError(
                f"{self.root / 'sequences'} does not exist; root must be the folder that holds "
                f"sequences/. {SOURCE_HINT}; then check and index it with: pointseg-prepare "
                f"semantickitti src=<that dataset/ folder> dst=data/semantickitti/index, and train "
                f"with data.train_dataset.root=<that dataset/ folder>"
            )
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.sequences = sequence_names(split, sequences)
        self.transform = transform
        scans = list_scans(self.root, self.sequences)
        by_seq: dict[str, list[ScanFiles]] = {}
        for s in scans:
            by_seq.setdefault(s.name.split("/")[0], []).append(s)
        self.scans = [s for seq in by_seq.values() for s in seq[::step]]

    @property
    def class_names(self) -> list[str]:
        return kitti_labels().class_names

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scans")
        sample = load_scan(self.scans[index])
        return self.transform(sample) if self.transform else sample
