"""``pointseg-prepare scannet src=<ScanNet v2> dst=data/scannet [labels=scannet20|scannet200]``.

    src/scans/<scene>/<scene>_vh_clean_2.ply                 mesh: x y z red green blue + faces
                      <scene>.aggregation.json               segGroups: label, objectId, segments
                      <scene>_vh_clean_2.0.010000.segs.json  segIndices: one per vertex
    src/scans_test/<scene>/<scene>_vh_clean_2.ply           (no labels)
    src/scannetv2-labels.combined.tsv                        raw category -> ids (label_map=...)
 -> dst/<split>/<scene>/coord.npy    (N, 3) float32, the mesh's vertices
                        color.npy    (N, 3) float32 in [0, 1]
                        normal.npy   (N, 3) float32, area-weighted vertex normals of the mesh
                        segment.npy  (N,) int64, benchmark class index, -1 = ignore / test
                        instance.npy (N,) int64, objectId, -1 where none

Preprocessed scenes (mmdetection3d's layout: ``<scene>/<scene>_vert_all.npy`` ``(N, 6)`` x y z
r g b, ``<scene>_sem_label_all.npy`` NYU40 ids, ``<scene>_ins_label_all.npy``) are read too,
when a scene folder has no mesh: no faces, so no ``normal.npy``; ``labels=scannet20`` only.

``<split>`` is train/val/test from the official lists shipped with pointseg (or the
``<name>.txt`` files of ``splits=<dir>``). A scene in no list is skipped with a warning that
names it. Vertices in no segGroup, and groups whose category is not a benchmark class, get
-1; where groups overlap, the later one wins.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.data.datasets.scannet_meta import LABEL_SETS, SPLITS_DIR
from pointseg.data.scenes import write_scene
from pointseg.io import PointFileError, read_points
from pointseg.prepare.common import PrepareError, SceneJob, run_jobs

log = logging.getLogger(__name__)

LABEL_MAP = "scannetv2-labels.combined.tsv"
UNLABELLED_SPLITS = ("test",)  # the benchmark's hidden test scenes come without annotations


# key=value options of ``pointseg-prepare scannet`` (printed by its --help)
OPTIONS = {
    "labels": "label set: scannet20 (the benchmark's 20 classes) or scannet200",
    "splits": "a folder of <split>.txt scene lists (train, val, test); default: the official "
    "lists shipped with pointseg",
    "label_map": f"the {LABEL_MAP} of a raw release (default: the one in src)",
}


def prepare(
    src: Path,
    dst: Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    labels: str = "scannet20",
    splits: str | None = None,
    label_map: str | None = None,
) -> dict[str, int]:
    """Convert every scene under ``src`` that is in a split list; returns the counts."""
    src, dst = Path(src), Path(dst)
    if labels not in LABEL_SETS:
        raise PrepareError(f"labels={labels} is unknown; use one of {sorted(LABEL_SETS)}")
    scenes = find_scenes(src)
    split_of = read_splits(Path(splits) if splits else SPLITS_DIR)
    unsplit = sorted(set(scenes) - set(split_of))
    if unsplit:
        log.warning(
            "%d scene(s) under %s are in no split list and are skipped: %s; give them a "
            "split with splits=<dir of <split>.txt lists>",
            len(unsplit), src, ", ".join(unsplit[:20]) + (" ..." if len(unsplit) > 20 else ""),
        )  # fmt: skip
    chosen = sorted(s for s in scenes if s in split_of)
    if not chosen:
        raise PrepareError(f"none of the {len(scenes)} scenes under {src} is in a split list")
    labelled = [s for s in chosen if split_of[s] not in UNLABELLED_SPLITS]
    if labelled and all(_npy_layout(scenes[s]) for s in labelled):  # NYU40 ids, no tsv needed
        if labels != "scannet20":
            raise PrepareError(
                f"labels={labels}: preprocessed _vert_all.npy scenes hold NYU40 ids, which "
                "give the 20 benchmark classes only (scannet20)"
            )
        class_of = {}
    else:  # raw category -> class index; only labelled scenes need the tsv
        class_of = read_label_map(find_label_map(src, label_map), labels) if labelled else {}
    jobs = [
        SceneJob(
            name=f"{split_of[s]}/{s}",
            output=dst / split_of[s] / s,
            inputs=(scenes[s],),
            options={
                "class_of": class_of if split_of[s] not in UNLABELLED_SPLITS else None,
                "labels": labels,
            },
        )
        for s in chosen
    ]
    counts = run_jobs(
        jobs, convert_scene, dst=dst, workers=workers, overwrite=overwrite, desc="ScanNet scenes"
    )
    in_split = {
        split: sum(split_of[s] == split for s in chosen) for split in set(split_of.values())
    }
    if labelled and not in_split.get("val"):
        where = ", ".join(f"{n} in {split}/" for split, n in sorted(in_split.items()) if n)
        log.warning(
            "no scene is in val/ (%s), so training on %s validates on nothing; to get a "
            "validation split, pass splits=<dir> holding train.txt and val.txt (scene names, "
            "one a line)", where, dst,
        )  # fmt: skip
    return counts


def find_scenes(src: Path) -> dict[str, Path]:
    """Scene name -> folder, from ``src/scans`` and ``src/scans_test`` (or ``src`` itself)."""
    roots = [src / "scans", src / "scans_test"]
    roots = [r for r in roots if r.is_dir()] or [src]
    scenes = {p.name: p for r in roots for p in sorted(r.glob("scene*_*")) if p.is_dir()}
    if not scenes:
        raise PrepareError(
            f"no scene folders (scans/sceneXXXX_XX) under {src}; src must be the ScanNet v2 "
            "root that holds scans/ (and scans_test/)"
        )
    return scenes


def read_splits(folder: Path) -> dict[str, str]:
    """Scene -> split from every ``<split>.txt`` (``scannetv2_`` prefix dropped) in ``folder``."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise PrepareError(f"splits={folder} holds no <split>.txt scene lists")
    split_of: dict[str, str] = {}
    for path in files:
        split = path.stem.removeprefix("scannetv2_")
        for scene in path.read_text().split():
            if scene in split_of and split_of[scene] != split:
                raise PrepareError(
                    f"{path}: {scene} is also in the {split_of[scene]} list; a scene may be "
                    "in one split only"
                )
            split_of[scene] = split
    return split_of


def find_label_map(src: Path, label_map: str | None) -> Path:
    # src may be the root (the download script puts the tsv there) or its scans/ folder
    candidates = [Path(label_map)] if label_map else [src / LABEL_MAP, src.parent / LABEL_MAP]
    for path in candidates:
        if path.is_file():
            return path
    raise PrepareError(
        f"{candidates[0]} does not exist; ScanNet's download script fetches it with "
        f"--label_map. Put {LABEL_MAP} in src or pass label_map=<path>"
    )


def read_label_map(path: Path, labels: str) -> dict[str, int]:
    """Raw category -> class index of ``labels`` (-1 for categories outside the benchmark)."""
    column, valid_ids, _ = LABEL_SETS[labels]
    index_of = {class_id: i for i, class_id in enumerate(valid_ids)}
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"raw_category", column} - set(reader.fieldnames or ())
        if missing:
            raise PrepareError(
                f"{path} has no column(s) {sorted(missing)}; is it {LABEL_MAP} from ScanNet v2?"
            )
        class_of: dict[str, int] = {}
        for row in reader:
            raw, value = row["raw_category"], (row[column] or "").strip()
            if raw in class_of:  # the first row of a category counts
                continue
            class_of[raw] = index_of.get(int(value), -1) if value.isdigit() else -1
    return class_of


def convert_scene(job: SceneJob) -> None:
    folder = job.inputs[0]
    scene = folder.name
    if _npy_layout(folder):
        convert_npy_scene(job)
        return
    ply = folder / f"{scene}_vh_clean_2.ply"
    if not ply.is_file():
        raise PrepareError(f"{ply} is missing; download the scene's _vh_clean_2.ply again")
    try:  # the reader pointseg-predict uses on the raw mesh: the same colours and normals
        mesh = read_points(ply, format="ply", require=("color", "normal"))
    except PointFileError as err:
        raise PrepareError(f"{err}; it must be a triangle mesh with x y z red green blue") from err
    coord = mesh["coord"]
    arrays = {"coord": coord, "color": mesh["color"], "normal": mesh["normal"]}
    class_of = job.options["class_of"]
    if class_of is None:  # a test scene
        arrays["segment"] = np.full(len(coord), -1, dtype=np.int64)
        arrays["instance"] = np.full(len(coord), -1, dtype=np.int64)
    else:
        arrays["segment"], arrays["instance"] = read_labels(folder, len(coord), class_of)
    meta = {"dataset": "scannet", "source": str(folder), "labels": job.options["labels"],
            "origin": mesh["origin"].tolist(), "reader": {}}  # fmt: skip
    write_scene(job.output, arrays, meta)


def _npy_layout(folder: Path) -> bool:
    """A preprocessed scene (``_vert_all.npy``) with no mesh to read instead."""
    name = folder.name
    return (folder / f"{name}_vert_all.npy").is_file() and not (
        folder / f"{name}_vh_clean_2.ply"
    ).is_file()


def convert_npy_scene(job: SceneJob) -> None:
    """A preprocessed scene: vertices with colour, NYU40 semantic ids, instance ids."""
    folder = job.inputs[0]
    scene = folder.name
    vert = np.load(folder / f"{scene}_vert_all.npy")
    if vert.ndim != 2 or vert.shape[1] < 6:
        raise PrepareError(f"{folder}: {scene}_vert_all.npy is {vert.shape}, expected (N, 6)")
    arrays = {
        "coord": np.ascontiguousarray(vert[:, :3], dtype=np.float32),
        "color": np.clip(vert[:, 3:6] / 255.0, 0.0, 1.0).astype(np.float32),
    }
    n = len(vert)
    if job.options["class_of"] is None:  # a test scene
        arrays["segment"] = np.full(n, -1, dtype=np.int64)
        arrays["instance"] = np.full(n, -1, dtype=np.int64)
    else:
        _, valid_ids, _ = LABEL_SETS["scannet20"]
        lut = np.full(max(valid_ids) + 1, -1, dtype=np.int64)
        lut[list(valid_ids)] = np.arange(len(valid_ids))
        nyu = np.load(folder / f"{scene}_sem_label_all.npy").astype(np.int64)
        if len(nyu) != n:
            raise PrepareError(f"{folder}: {len(nyu)} labels for {n} vertices")
        arrays["segment"] = np.where(
            (nyu >= 0) & (nyu < len(lut)), lut[nyu.clip(0, len(lut) - 1)], -1
        )
        ins_path = folder / f"{scene}_ins_label_all.npy"
        ins = np.load(ins_path).astype(np.int64) if ins_path.is_file() else np.zeros(n, np.int64)
        arrays["instance"] = np.where(ins > 0, ins, -1)
    meta = {"dataset": "scannet", "source": str(folder), "labels": "scannet20", "layout": "npy"}
    write_scene(job.output, arrays, meta)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise PrepareError(
            f"{path} is missing; labelled scenes need it (download it with ScanNet's script, "
            "or list the scene under test in splits=<dir> to prepare it without labels)"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PrepareError(f"cannot read {path}: {err}; download it again") from err


def read_labels(folder: Path, n: int, class_of: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """``segment (N,), instance (N,)`` int64 of a scene's vertices from its segGroups."""
    scene = folder.name
    segs_path = folder / f"{scene}_vh_clean_2.0.010000.segs.json"
    agg_path = folder / f"{scene}.aggregation.json"
    seg_ids = np.asarray(_load_json(segs_path).get("segIndices", []), dtype=np.int64)
    if len(seg_ids) != n:
        raise PrepareError(
            f"{segs_path}: segIndices has {len(seg_ids)} entries but the mesh has {n} vertices;"
            " the files belong to different versions, download both again"
        )
    groups = _load_json(agg_path).get("segGroups")
    if not isinstance(groups, list):
        raise PrepareError(f"{agg_path} has no segGroups list; download it again")
    uniq, inverse = np.unique(seg_ids, return_inverse=True)
    label_lut = np.full(len(uniq), -1, dtype=np.int64)
    instance_lut = np.full(len(uniq), -1, dtype=np.int64)
    unknown = set()
    for group in groups:  # later groups overwrite earlier ones where they overlap
        try:
            raw, segments = group["label"], np.asarray(group["segments"], dtype=np.int64)
            object_id = int(group.get("objectId", group["id"]))
        except (KeyError, TypeError, ValueError) as err:
            raise PrepareError(f"{agg_path}: a segGroup lacks label/segments/objectId") from err
        if raw not in class_of:
            unknown.add(raw)
        pos = np.searchsorted(uniq, segments)
        hit = pos < len(uniq)
        hit[hit] = uniq[pos[hit]] == segments[hit]  # segments no vertex has are ignored
        label_lut[pos[hit]] = class_of.get(raw, -1)
        instance_lut[pos[hit]] = object_id
    if unknown:
        log.warning("%s: categories not in the label map, ignored: %s", agg_path, sorted(unknown))
    return label_lut[inverse], instance_lut[inverse]
