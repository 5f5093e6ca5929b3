"""Text tables of numbers (``.xyz .txt .csv .pts``, S3DIS rooms): one reader for
``pointseg.io.read_points`` and ``pointseg-prepare s3dis``.

``np.loadtxt`` (a C parser) reads a clean file. A file it refuses is read again in blocks of
lines, and only a block that fails is parsed line by line, so one bad line costs
milliseconds, not seconds. Up to ``max_bad_lines`` bad lines are skipped with a warning
naming the file and the line (0, the default: the first one raises); a truncated last line
always raises.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pointseg.io.formats import PointFileError

log = logging.getLogger("pointseg.io")  # the package's logger: log lines keep its name

COMMENTS = ("#", "//")
BLOCK_LINES = 20_000  # lines re-read together when a file has a bad line


class Table(NamedTuple):
    values: np.ndarray  # (M, W) float64, one row per data line read
    header: list[str] | None  # the names on the file's header line, if it has one
    skipped: list[int]  # numbers (from 1) of the bad lines skipped


def read_table(
    path: str | Path,
    *,
    width: int | None = None,
    header: bool | None = None,
    max_bad_lines: int = 0,
    byte_columns: Sequence[int] = (),
) -> Table:
    """The numbers of a text table: whitespace- or comma-separated (a comma on the first data
    line decides), ``#`` and ``//`` comments, blank lines ignored.

    ``width``: values a line must hold (None: as many as the first data line). ``header``:
    whether the first data line holds column names (None: when it is not all numbers).
    ``byte_columns``: columns that must hold 0-255 (8-bit colours); the first data row
    outside raises. A file without data lines gives an empty table."""
    path = Path(path)
    try:
        first, first_number = _first_line(path)
    except OSError as err:
        raise PointFileError(f"cannot read {path}: {err}") from err
    if first is None:
        return Table(np.empty((0, width or 0)), None, [])
    delim = "," if "," in first else None
    tokens = _split(first, delim)
    if header is None:
        header = not all(_is_number(t) for t in tokens)
    names = tokens if header else None
    width = width or len(tokens)
    skiprows = first_number if header else 0  # the header and any comment lines before it
    try:
        values = _loadtxt(path, delim, skiprows, width)
    except OSError as err:
        raise PointFileError(f"cannot read {path}: {err}") from err
    skipped: list[int] = []
    if values is None:  # a bad value or a line with another count (also UnicodeDecodeError)
        values, skipped = _read_blocks(path, delim, skiprows, width, max_bad_lines)
    _check_bytes(path, values, byte_columns)
    return Table(values, names, skipped)


def _first_line(path: Path) -> tuple[str | None, int]:
    """The first data line (not blank, not a comment) and its number (from 1)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.decode("latin-1").strip()  # latin-1 decodes any byte
            if line and not line.startswith(COMMENTS):
                return line, number
    return None, 0


def _split(line: str, delim: str | None) -> list[str]:
    return [t.strip() for t in line.split(delim)] if delim else line.split()


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _loadtxt(
    source: Path | io.BytesIO, delim: str | None, skiprows: int, width: int
) -> np.ndarray | None:
    """``(M, width)`` float64, or None when a line is not ``width`` numbers."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            values = np.loadtxt(source, dtype=np.float64, delimiter=delim, comments=COMMENTS,
                                skiprows=skiprows, ndmin=2)  # fmt: skip
    except ValueError:
        return None
    if values.size == 0:
        return np.empty((0, width))
    return values if values.shape[1] == width else None


def _read_blocks(
    path: Path, delim: str | None, skiprows: int, width: int, max_bad_lines: int
) -> tuple[np.ndarray, list[int]]:
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise PointFileError(f"cannot read {path}: {err}") from err
    lines[:skiprows] = [b""] * min(skiprows, len(lines))  # the header is not data
    blocks: list[np.ndarray] = []
    bad: list[int] = []
    for start in range(0, len(lines), BLOCK_LINES):
        block = lines[start : start + BLOCK_LINES]
        values = _loadtxt(io.BytesIO(b"\n".join(block)), delim, 0, width)
        if values is None:
            values = _parse_lines(path, block, start, len(lines), delim, width, bad, max_bad_lines)
        blocks.append(values)
    values = np.concatenate(blocks)
    if len(values) == 0 and bad:
        raise PointFileError(f"{path}: no line could be read as {width} numbers")
    return values, bad


def _parse_lines(
    path: Path, lines: list[bytes], start: int, total: int, delim: str | None, width: int,
    bad: list[int], max_bad_lines: int,
) -> np.ndarray:  # fmt: skip
    """Parse ``lines`` (file lines ``start + 1 ...``) one by one; appends skipped to ``bad``."""
    rows: list[list[float]] = []
    for number, raw in enumerate(lines, start=start + 1):
        text = raw.decode("latin-1")
        data = text[: min((i for i in map(text.find, COMMENTS) if i >= 0), default=len(text))]
        if not data.strip():
            continue
        values = _split(data.strip(), delim)
        if len(values) == width:
            try:
                rows.append([float(v) for v in values])
                continue
            except ValueError:
                pass
        text = text.strip()
        if number == total:  # no newline after it: the file ends inside this line
            raise PointFileError(
                f"{path}: the last line ({number}: {text[:40]!r}) is incomplete, the file "
                "looks truncated; re-export or re-extract it"
            )
        bad.append(number)
        if max_bad_lines == 0:
            raise PointFileError(
                f"{path}: line {number} ({text[:40]!r}) is not a row of {width} numbers; fix or "
                "delete that line (or skip up to N such lines with max_bad_lines=N)"
            )
        if len(bad) > max_bad_lines:
            raise PointFileError(
                f"{path}: more than {max_bad_lines} lines are not {width} numbers (lines "
                f"{bad[:5]}...): the file is damaged; re-export or re-extract it (or raise "
                "max_bad_lines=N to skip them)"
            )
        log.warning("%s: line %d is not %d numbers (%r), skipping it", path, number, width,
                    text[:60])  # fmt: skip
    return np.array(rows, dtype=np.float64).reshape(-1, width)


def _check_bytes(path: Path, values: np.ndarray, columns: Sequence[int]) -> None:
    if not columns or len(values) == 0:
        return
    v = values[:, list(columns)]
    outside = ~((v >= 0) & (v <= 255))  # NaN is outside too
    if outside.any():
        row = int(np.flatnonzero(outside.any(axis=1))[0])
        raise PointFileError(
            f"{path}: colour {v[row].tolist()} in data row {row + 1} is outside 0-255; "
            "the colours of this file must be 8-bit (0-255)"
        )
