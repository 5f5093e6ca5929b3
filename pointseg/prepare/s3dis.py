"""``pointseg-prepare s3dis src=Stanford3dDataset_v1.2 dst=data/s3dis [--workers N]``.

    src/Area_N/<room>/Annotations/<class>_<k>.txt   one object per file, lines "x y z r g b"
 -> dst/Area_N/<room>/coord.npy    (N, 3) float32, metres (the release's frame, not moved)
                      color.npy    (N, 3) float32 in [0, 1]
                      segment.npy  (N,) int64, index into CLASS_NAMES
                      instance.npy (N,) int64, the annotation file's index in the room
                      meta.json    source folder, files, skipped lines

The room-level ``<room>.txt`` (the same points without labels) is not read. ``stairs`` and
any class name not in CLASS_NAMES become clutter, as in the benchmark. A line that cannot
be parsed (the release has one in ``Area_5/office_19/Annotations/ceiling_1.txt``) is skipped
with a warning naming the file and line; a file with more than ``max_bad_lines`` such
lines, a truncated last line or an unreadable file raises ``PrepareError``.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from pointseg.data.scenes import write_scene
from pointseg.prepare.common import PrepareError, SceneJob, run_jobs

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door",
    "table", "chair", "sofa", "bookcase", "board", "clutter",
)  # fmt: skip
CLUTTER = CLASS_NAMES.index("clutter")
# names the benchmark folds into clutter without a warning
ALIASES = {"stairs": CLUTTER}
BLOCK_LINES = 20_000  # lines re-read together when a file has a bad line


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
    max_bad = job.options["max_bad_lines"]
    parts, labels, instances, skipped = [], [], [], {}
    for index, path in enumerate(job.inputs):
        points, bad = read_points(path, max_bad_lines=max_bad)  # (M, 6) float64
        if bad:
            skipped[f"{path.parent.name}/{path.name}"] = bad
        if len(points) == 0:
            log.warning("%s holds no points", path)
            continue
        parts.append(points)
        labels.append(np.full(len(points), class_index(path), dtype=np.int64))
        instances.append(np.full(len(points), index, dtype=np.int64))
    if not parts:
        raise PrepareError(f"room {job.options['room']}: none of its annotation files has points")
    points = np.concatenate(parts)
    arrays = {
        "coord": points[:, :3].astype(np.float32),
        "color": (points[:, 3:6] / 255.0).astype(np.float32),
        "segment": np.concatenate(labels),
        "instance": np.concatenate(instances),
    }
    meta = {
        "dataset": "s3dis",
        "source": job.options["room"],
        "annotation_files": [p.name for p in job.inputs],
        "class_names": list(CLASS_NAMES),
        "skipped_lines": skipped,
    }
    write_scene(job.output, arrays, meta)


def read_points(path: Path, *, max_bad_lines: int = 10) -> tuple[np.ndarray, list[int]]:
    """``(points (M, 6) float64, numbers of skipped lines)`` of one annotation file.

    ``np.loadtxt`` (a C parser since numpy 1.23) reads clean files and checks that every
    line has 6 values. A file it refuses is read again in blocks of lines, and only a block
    that fails is parsed line by line, so one bad line costs milliseconds, not seconds.
    """
    try:
        points = _loadtxt(path)
    except OSError as err:
        raise PrepareError(f"cannot read {path}: {err}") from err
    except ValueError:  # a bad value or a line with another count (also UnicodeDecodeError)
        return _read_blocks(path, max_bad_lines)
    if points is None:
        return _read_blocks(path, max_bad_lines)
    _check_colors(path, points)
    return points, []


def _loadtxt(source: Path | io.BytesIO) -> np.ndarray | None:
    """``(M, 6)`` float64, or None when a value is not finite or the width is not 6."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
        points = np.loadtxt(source, dtype=np.float64, ndmin=2, comments=None)
    if points.size == 0:
        return np.empty((0, 6))
    if points.shape[1] != 6 or not np.isfinite(points).all():
        return None
    return points


def _read_blocks(path: Path, max_bad_lines: int) -> tuple[np.ndarray, list[int]]:
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise PrepareError(f"cannot read {path}: {err}") from err
    blocks: list[np.ndarray] = []
    bad: list[int] = []
    for start in range(0, len(lines), BLOCK_LINES):
        block = lines[start : start + BLOCK_LINES]
        try:
            points = _loadtxt(io.BytesIO(b"\n".join(block)))
        except ValueError:
            points = None
        if points is None:
            points = _parse_lines(path, block, start, len(lines), bad, max_bad_lines)
        blocks.append(points)
    points = np.concatenate(blocks)
    if len(points) == 0 and bad:
        raise PrepareError(f"{path}: no line could be read as 'x y z r g b'; is it S3DIS?")
    _check_colors(path, points)
    return points, bad


def _parse_lines(
    path: Path, lines: list[bytes], start: int, total: int, bad: list[int], max_bad_lines: int
) -> np.ndarray:
    """Parse ``lines`` (file lines ``start + 1 ...``) one by one; appends skipped to ``bad``."""
    rows: list[list[float]] = []
    for number, raw in enumerate(lines, start=start + 1):
        text = raw.decode("latin-1").strip()  # latin-1 decodes any byte; float() checks
        if not text:
            continue
        values = text.split()
        if len(values) == 6:
            try:
                row = [float(v) for v in values]
            except ValueError:
                pass
            else:
                if all(math.isfinite(v) for v in row):
                    rows.append(row)
                    continue
        if number == total:  # no newline after it: the file ends inside this line
            raise PrepareError(
                f"{path}: the last line ({number}: {text[:40]!r}) is incomplete, the file "
                "looks truncated; re-extract it from the S3DIS archive"
            )
        bad.append(number)
        if len(bad) > max_bad_lines:
            raise PrepareError(
                f"{path}: more than {max_bad_lines} lines are not 'x y z r g b' (lines "
                f"{bad[:5]}...): the file is damaged, re-extract it from the S3DIS archive "
                "(or raise max_bad_lines=N to skip them)"
            )
        log.warning("%s: line %d is not 'x y z r g b' (%r), skipping it", path, number, text[:60])
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def _check_colors(path: Path, points: np.ndarray) -> None:
    rgb = points[:, 3:6]
    outside = (rgb < 0) | (rgb > 255)
    if outside.any():
        row = int(np.flatnonzero(outside.any(axis=1))[0])
        raise PrepareError(
            f"{path}: colour {rgb[row].tolist()} in data row {row + 1} is outside 0-255; "
            "S3DIS lines are 'x y z r g b' with 8-bit colours"
        )
