"""Shared machinery of the ``pointseg-prepare`` commands.

A preparer lists its scenes as ``SceneJob``s; ``run_jobs`` converts them one at a time (or
in ``workers`` processes), skipping scenes whose output folder already exists. Each job
writes through ``write_scene``, so a scene folder that exists is complete.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pointseg.data.scenes import remove_partial

log = logging.getLogger(__name__)


class PrepareError(RuntimeError):
    """A raw file could not be converted; the message names the file (and line)."""


@dataclass(frozen=True)
class SceneJob:
    name: str  # for messages, e.g. "Area_1/office_1"
    output: Path  # the scene folder to write
    inputs: tuple[Path, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


def run_jobs(
    jobs: Sequence[SceneJob],
    convert: Callable[[SceneJob], Any],
    *,
    dst: Path,
    workers: int = 1,
    overwrite: bool = False,
    desc: str = "scenes",
) -> dict[str, int]:
    """Run ``convert(job)`` for every job whose output is missing; returns counts.

    ``convert`` must be a module-level function (it is pickled to worker processes). A
    failing scene stops the run with its error; finished scenes stay, and a re-run goes on
    from where it stopped.
    """
    dst.mkdir(parents=True, exist_ok=True)
    removed = remove_partial(dst)
    if removed:
        log.info("removed %d partial scene folder(s) left by an interrupted run", removed)
    todo = [j for j in jobs if overwrite or not j.output.is_dir()]
    skipped = len(jobs) - len(todo)
    if skipped:
        print(f"{skipped} of {len(jobs)} {desc} already prepared; skipping them")
    bar = tqdm(total=len(todo), desc=f"preparing {desc}", unit="scene")
    try:
        if workers <= 1:
            for job in todo:
                convert(job)
                bar.update()
        else:
            # forkserver, not fork: a forked worker inherits the parent's thread pools (torch's
            # OpenMP, lazrs' rayon) without their threads and can hang in them
            context = multiprocessing.get_context("forkserver")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(convert, job): job for job in todo}
                for fut in as_completed(futures):
                    fut.result()  # re-raises the worker's error, which names the file
                    bar.update()
    finally:
        bar.close()
    return {"prepared": len(todo), "skipped": skipped, "total": len(jobs)}
