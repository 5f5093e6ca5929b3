"""``pointseg-prepare s3dis src=Stanford3dDataset_v1.2 dst=data/s3dis [--workers N]``.

    src/Area_N/<room>/Annotations/<class>_<k>.txt   one object per file, lines "x y z r g b"
 -> dst/Area_N/<room>/coord.npy    (N, 3) float32, metres (the release's frame, not moved)
                      color.npy    (N, 3) float32 in [0, 1]
                      segment.npy  (N,) int64, index into CLASS_NAMES
                      instance.npy (N,) int64, the annotation file's index in the room
                      meta.json    source folder, files, skipped lines, origin, reader

The annotation files are read by ``pointseg.io.text.read_table``, the reader
``pointseg.io.read_points`` uses for text files, and the room's points (the files in sorted
order) go through the steps ``read_points`` takes after parsing (``finish_sample``: colour
scaling, coordinate checks). So ``pointseg-predict`` on the room-level ``<room>.txt`` (the
same points without labels; not read here) gives these coord and color arrays exactly.
S3DIS rooms lie within metres of 0, so the reader keeps the release's frame; a room beyond
10 km would be re-centred as predict re-centres it (world = coord + meta.json's ``origin``).

``stairs`` and any class name not in CLASS_NAMES become clutter, as in the benchmark. A line
that is not 6 numbers (the release has one in ``Area_5/office_19/Annotations/ceiling_1.txt``)
is skipped with a warning naming the file and line; a file with more than ``max_bad_lines``
such lines, a truncated last line, a colour outside 0-255 or an unreadable file raises
``PrepareError``. Points with NaN/Inf coordinates are left out with a warning, as predict
leaves them out (``nonfinite_points`` in meta.json counts them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pointseg.data.scenes import write_scene
from pointseg.io import PointFileError
from pointseg.io.read import finish_sample
from pointseg.io.text import read_table
from pointseg.prepare.common import PrepareError, SceneJob, run_jobs

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door",
    "table", "chair", "sofa", "bookcase", "board", "clutter",
)  # fmt: skip
CLUTTER = CLASS_NAMES.index("clutter")
# names the benchmark folds into clutter without a warning
ALIASES = {"stairs": CLUTTER}


# key=value options of ``pointseg-prepare s3dis`` (printed by its --help)
OPTIONS = {
    "max_bad_lines": "annotation lines that fail to parse (Area_5 has a known corrupt one) "
    "tolerated per room before the run stops",
}


def prepare(
    src: Path, dst: Path, *, workers: int = 1, overwrite: bool = False, max_bad_lines: int = 10
) -> dict[str, int]:
    """Convert every room of every ``Area_*`` under ``src``; returns ``run_jobs``' counts."""
    src, dst = Path(src), Path(dst)
    jobs = [
        SceneJob(
            name=f"{room.parent.name}/{room.name}",
            output=dst / room.parent.name / room.name,
            inputs=annotation_files(room),
            options={"max_bad_lines": int(max_bad_lines), "room": str(room)},
        )
        for room in find_rooms(src)
    ]
    return run_jobs(
        jobs, convert_room, dst=dst, workers=workers, overwrite=overwrite, desc="S3DIS rooms"
    )


def find_rooms(src: Path) -> list[Path]:
    areas = sorted(p for p in src.glob("Area_*") if p.is_dir())
    if not areas:
        raise PrepareError(
            f"no Area_* folders under {src}; src must be the extracted "
            "Stanford3dDataset_v1.2 (or _Aligned_Version) folder holding Area_1 ... Area_6"
        )
    rooms = [room for area in areas for room in sorted(area.iterdir()) if room.is_dir()]
    if not rooms:
        raise PrepareError(f"the Area_* folders under {src} hold no room folders")
    return rooms


def annotation_files(room: Path) -> tuple[Path, ...]:
    folder = room / "Annotations"
    if not folder.is_dir():
        raise PrepareError(
            f"{folder} does not exist; every S3DIS room folder has an Annotations/ folder "
            "with one <class>_<k>.txt per object: re-extract this area from the archive"
        )
    files = tuple(sorted(folder.glob("*.txt")))  # a non-file among them fails when read
    if not files:
        raise PrepareError(f"{folder} holds no <class>_<k>.txt files; re-extract this area")
    return files


def class_index(path: Path) -> int:
    """``chair_3.txt`` -> index of ``chair``; stairs and unknown names -> clutter."""
    name = path.stem.rsplit("_", 1)[0].lower()
    if name in CLASS_NAMES:
        return CLASS_NAMES.index(name)
    if name not in ALIASES:
        log.warning("%s: unknown class %r, labelled clutter", path, name)
    return ALIASES.get(name, CLUTTER)


def convert_room(job: SceneJob) -> None:
    room, max_bad = Path(job.options["room"]), job.options["max_bad_lines"]
    parts, labels, instances, skipped = [], [], [], {}
    for index, path in enumerate(job.inputs):
        try:  # the reader pointseg-predict uses on a room's .txt file
            table = read_table(
                path, width=6, header=False, max_bad_lines=max_bad, byte_columns=(3, 4, 5)
            )
        except PointFileError as err:
            raise PrepareError(
                f"{err}; S3DIS lines are 'x y z r g b' (re-extract the file from the archive)"
            ) from err
        if table.skipped:
            skipped[f"{path.parent.name}/{path.name}"] = table.skipped
        if len(table.values) == 0:
            log.warning("%s holds no points", path)
            continue
        parts.append(table.values)  # (M, 6) float64
        labels.append(np.full(len(table.values), class_index(path), dtype=np.int64))
        instances.append(np.full(len(table.values), index, dtype=np.int64))
    if not parts:
        raise PrepareError(f"room {room}: none of its annotation files has points")
    points = np.concatenate(parts)
    # the room's points through the steps read_points takes after parsing a text file, so
    # coord and color equal what pointseg-predict reads from the room's .txt file
    try:
        sample = finish_sample(room, {"coord": points[:, :3], "color": points[:, 3:6]},
                               nonfinite="drop")  # fmt: skip
    except PointFileError as err:
        raise PrepareError(str(err)) from err
    segment, instance = np.concatenate(labels), np.concatenate(instances)
    kept = sample.get("kept")
    if kept is not None:  # points with NaN/Inf coordinates, left out as predict leaves them
        segment, instance = segment[kept], instance[kept]
    arrays = {"coord": sample["coord"], "color": sample["color"], "segment": segment,
              "instance": instance}  # fmt: skip
    meta = {
        "dataset": "s3dis",
        "source": str(room),
        "annotation_files": [p.name for p in job.inputs],
        "class_names": list(CLASS_NAMES),
        "skipped_lines": skipped,
        "nonfinite_points": 0 if kept is None else int((~kept).sum()),
        "origin": sample["origin"].tolist(),  # world = coord + origin (0 for S3DIS rooms)
        "reader": {},  # read_points' defaults read a room's .txt file into these arrays
    }
    write_scene(job.output, arrays, meta)
