"""Training step and eval forward at 1 thread, at pointseg's default (the CPUs available,
following the load) and at the default count fixed, alone and next to one busy process, each
configuration in a fresh process (``thread_worker``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.threads import WAIT_SETTINGS

from .core import ROOT, Context, Section, log

SCRIPTS = Path(__file__).resolve().parents[1]
BUSY = "while True: pass"


def worker_env() -> dict[str, str]:
    """The environment of a worker: this one's, less the OpenMP wait settings (the worker's
    pointseg import sets its own), with ``scripts/`` and the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS}
    paths = [str(SCRIPTS), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def thread_run(kind: str, mode: str, repeat: int) -> tuple[float, int, int]:
    """(median seconds, voxels, threads at the end) of ``thread_worker kind mode repeat``."""
    argv = [sys.executable, "-m", "benchmarks.thread_worker", kind, mode, str(repeat)]
    proc = subprocess.run(argv, env=worker_env(), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"thread worker {argv[3:]} failed:\n{proc.stderr[-2000:]}")
    seconds, voxels, threads = proc.stdout.split()
    return float(seconds), int(voxels), int(threads)


def threads_under_load(rounds: int, repeat: int) -> dict[str, Any]:
    """Rounds interleave every configuration: kind x mode (1 thread, default, fixed) x busy (a
    process running ``while True: pass`` next to it, in a session of its own, or not)."""
    from pointseg.threads import available_cpus

    from .thread_worker import MODES

    times: dict[str, list[float]] = {}
    ended: dict[str, list[int]] = {}
    voxels = 0
    for _ in range(rounds):
        for busy in (False, True):
            competitor = (
                subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True)
                if busy
                else None
            )
            try:
                for kind in ("step", "predict"):
                    for mode in MODES:
                        t, voxels, n = thread_run(kind, mode, repeat)
                        times.setdefault(f"{kind}/{mode}/{busy:d}", []).append(t)
                        ended.setdefault(f"{kind}/{mode}/{busy:d}", []).append(n)
                        log(f"threads: {kind} {mode} busy={busy}: {t:.3f}s (ended at {n})")
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    med = {k: round(float(np.median(v)), 3) for k, v in times.items()}
    ratios = {}
    for kind in ("step", "predict"):
        for mode in MODES:
            ratios[f"{kind}/{mode}: busy / alone"] = round(
                med[f"{kind}/{mode}/1"] / med[f"{kind}/{mode}/0"], 2
            )
        for busy in ("0", "1"):
            for mode in ("default", "fixed"):
                ratios[f"{kind}/busy={busy}: {mode} / 1 thread"] = round(
                    med[f"{kind}/{mode}/{busy}"] / med[f"{kind}/1/{busy}"], 2
                )
    return {"default_threads": available_cpus(), "voxels": voxels, "median_s": med,
            "ratios": ratios, "all_times_s": times, "threads_at_end": ended}  # fmt: skip


class Threads(Section):
    name = "threads"
    summary = (
        "spunet_small training step and eval forward at 1 thread and at the default thread "
        "count, alone and next to one busy process, each in a fresh process"
    )

    def run(self, ctx: Context) -> dict[str, Any]:
        return threads_under_load(1 if ctx.quick else 2, 3 if ctx.quick else 5)

    def markdown(self, res: dict[str, Any]) -> list[str]:
        t = res
        return [
            f"## Threads ({t['voxels']:,} voxels; default = {t['default_threads']} threads)",
            "",
            "| figure | ratio |",
            "|---|---|",
            *[f"| {k} | {v}x |" for k, v in t["ratios"].items()],
            "",
            "| configuration (kind/threads/busy) | median s |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in t["median_s"].items()],
            "",
        ]
