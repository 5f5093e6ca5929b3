"""``pointseg-prepare semantickitti src=<.../dataset> dst=<dir>``: check the release, index it.

Training reads SemanticKITTI scans in place (``pointseg.data.datasets.semantickitti``), so
nothing is copied. This command checks every scan of every sequence up front (scan/label
pairing, ``.bin`` sizes, label counts, unknown raw ids), so a broken download fails here,
naming the file, rather than hours into training; and it writes ``dst/index.json``: scan and
point counts per sequence and per-class point counts, from which :func:`index_class_weights`
derives loss weights. It reads the label files but only the sizes of the scans.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pointseg.data.datasets.semantickitti import (
    ScanFiles,
    count_points,
    kitti_labels,
    list_scans,
    map_labels,
    read_labels,
    sequence_names,
)
from pointseg.prepare.common import PrepareError
from pointseg.utils import write_json

INDEX_FORMAT = 1
ENET_C = 1.02  # the constant of the inverse log frequency weights


# key=value options of ``pointseg-prepare semantickitti`` (printed by its --help)
OPTIONS = {
    "sequences": "sequences to check and index, e.g. sequences=00,08 (default: all)",
}


def inverse_log_weights(freq: Sequence[float] | np.ndarray, *, c: float = ENET_C) -> np.ndarray:
    """Class weights ``1 / ln(c + f_k)`` (ENet's inverse log frequency), scaled to mean 1.

    ``f_k`` is the class's share of the labelled points. Unlike ``1 / f_k`` the weights are
    bounded by ``1 / ln(c)`` (about 50 for c = 1.02), so a class with a handful of points
    cannot swamp the loss. Cross-entropy with weights averages over the weights of the
    targets, so their overall scale does not change the loss; mean 1 keeps them readable.
    """
    f = np.asarray(freq, dtype=np.float64)
    if f.ndim != 1 or (f < 0).any() or not f.sum() > 0:
        raise ValueError(f"class frequencies must be a 1-D array >= 0 with a positive sum: {f}")
    w = 1.0 / np.log(c + f / f.sum())
    return w / w.mean()


def index_class_weights(
    index: str | Path | Mapping[str, Any],
    *,
    sequences: Sequence[int | str] | None = None,
    c: float = ENET_C,
) -> list[float]:
    """Inverse log frequency weights from the point counts of ``index.json``.

    ``sequences`` defaults to the training sequences present in the index; pass the list
    you train on otherwise. Set the result as ``model.class_weights``.
    """
    if not isinstance(index, Mapping):
        index = json.loads(Path(index).read_text())
    seqs = index["splits"]["train"] if sequences is None else sequence_names(None, sequences)
    info = index["sequences"]
    missing = [s for s in seqs if s not in info or not info[s]["labelled"]]
    if missing or not seqs:
        raise ValueError(
            f"no labelled counts in the index for sequences {missing or seqs}; prepare them "
            "first (pointseg-prepare semantickitti src=... dst=...) or pick others"
        )
    counts = np.sum([info[s]["class_points"] for s in seqs], axis=0)
    return [round(float(w), 4) for w in inverse_log_weights(counts, c=c)]


def check_scan(files: ScanFiles) -> tuple[int, np.ndarray]:
    """Points of one scan and its per-class counts ``(20,)``: ignored, then the 19 classes."""
    n = count_points(files.points)
    if files.labels is None:
        return n, np.zeros(20, dtype=np.int64)
    raw, _ = read_labels(files.labels, num_points=n, scan=files.points)
    segment = map_labels(raw, source=files.labels)
    return n, np.bincount(segment + 1, minlength=20)


def _sequences_option(src: Path, sequences: object) -> list[str]:
    if sequences is None:
        found = sorted(p.name for p in (src / "sequences").iterdir() if p.name.isdigit())
        if not found:
            raise PrepareError(f"no sequence folders (00, 01, ...) in {src / 'sequences'}")
        return found
    items = str(sequences).split(",") if not isinstance(sequences, list | tuple) else sequences
    return sequence_names(None, [str(s).strip() for s in items])


def prepare(
    src: Path,
    dst: Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    sequences: str | int | Sequence[int | str] | None = None,
) -> dict[str, int]:
    """Check every scan of ``src`` (the folder holding ``sequences/``) and write
    ``dst/index.json``. ``sequences`` (e.g. ``sequences=00,08``) limits the check."""
    index_path = Path(dst) / "index.json"
    if index_path.exists() and not overwrite:
        old = json.loads(index_path.read_text())
        print(f"{index_path} exists; not checking again (pass --overwrite to redo it)")
        scans = sum(s["scans"] for s in old["sequences"].values())
        return {"sequences": len(old["sequences"]), "scans": scans, "checked": 0}
    if not (src / "sequences").is_dir():
        nested = src / "dataset" / "sequences"
        hint = f"; did you mean src={src / 'dataset'}?" if nested.is_dir() else ""
        raise PrepareError(f"{src} has no sequences/ folder{hint}")
    seqs = _sequences_option(src, sequences)
    scans = list_scans(src, seqs)
    results: list[tuple[int, np.ndarray]] = []
    with tqdm(total=len(scans), desc="checking scans", unit="scan") as bar:
        if workers <= 1:
            for files in scans:
                results.append(check_scan(files))
                bar.update()
        else:
            chunk = max(1, min(64, math.ceil(len(scans) / (4 * workers))))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for res in pool.map(check_scan, scans, chunksize=chunk):
                    results.append(res)
                    bar.update()

    info: dict[str, dict[str, Any]] = {}
    for files, (n, counts) in zip(scans, results, strict=True):
        seq = files.name.split("/")[0]
        entry = info.setdefault(
            seq,
            {"scans": 0, "points": 0, "labelled": files.labels is not None, "counts": 0},
        )
        entry["scans"] += 1
        entry["points"] += n
        entry["counts"] = entry["counts"] + counts
    for entry in info.values():
        counts = entry.pop("counts")
        entry["ignored_points"] = int(counts[0])
        entry["class_points"] = [int(x) for x in counts[1:]]

    def present(nums: Sequence[int], *, labelled: bool) -> list[str]:
        names = (f"{n:02d}" for n in nums)
        return [s for s in names if s in info and (info[s]["labelled"] or not labelled)]

    splits = kitti_labels().splits
    index: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "dataset": "semantickitti",
        "root": str(src.resolve()),
        "class_names": kitti_labels().class_names,
        "sequences": info,
        "splits": {k: present(v, labelled=k != "test") for k, v in splits.items()},
    }
    if index["splits"]["train"]:
        index["class_weights"] = {
            "method": f"inverse log frequency 1/ln({ENET_C} + f), mean 1, train sequences",
            "weights": index_class_weights(index, c=ENET_C),
        }
    write_json(index_path, index)
    labelled = sum(e["scans"] for e in info.values() if e["labelled"])
    return {"sequences": len(info), "scans": len(scans), "labelled_scans": labelled}
