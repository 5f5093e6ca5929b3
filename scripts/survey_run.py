"""Label a whole survey with several processes, kill one partway, resume, and check the result.

    python scripts/survey_run.py --ckpt model.ckpt --work /tmp/survey             # 40 x 5 M
    python scripts/survey_run.py --ckpt model.ckpt --work /tmp/s --tiles 4 --points 200000

1. Tiles: ``--distinct`` tiles from ``scripts/make_big_laz.py`` (seeds 0, 1, ...), each named
   ``--tiles / --distinct`` times (hard links), so the survey holds ``--tiles`` files.
2. ``pointseg-predict trainer=ddp_cpu trainer.devices=--procs`` on them; once ``--kill-after``
   tiles are recorded done, one rank (not rank 0) gets SIGKILL, and the job is torn down as a
   scheduler would after losing a node.
3. The same command again: finished tiles are skipped, the rest labelled.
4. Checks: no temporary file is left, every tile has its labels and LAZ copy, and the labels of
   ``--check`` tiles equal a single-process run on them.

The figures (time, points/s per process, peak RSS of every process) go to ``--out`` (JSON),
written atomically. Work files stay under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_big_laz import write_big  # noqa: E402

from pointseg.predict.survey import MANIFEST_DIR  # noqa: E402
from pointseg.utils import write_json  # noqa: E402


def make_tiles(folder: Path, *, tiles: int, distinct: int, points: int) -> list[Path]:
    src = folder.parent / "distinct"
    src.mkdir(parents=True, exist_ok=True)
    for seed in range(distinct):
        path = src / f"d{seed}.laz"
        if not path.is_file():
            write_big(path, points=points, rooms=16, seed=seed, cell=12.0,
                      offset=(500_000.0 + 2_000.0 * seed, 4_000_000.0, 100.0))  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(tiles):
        dst = folder / f"t{i:02d}.laz"
        if not dst.exists():
            os.link(src / f"d{i % distinct}.laz", dst)
        out.append(dst)
    return out


def predict_cmd(ckpt: Path, inp: Path, out: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pointseg.predict", f"ckpt_path={ckpt}", f"input={inp}",
            f"output={out}", f"hydra.run.dir={run_dir}", "progress=false", "write_ply=false",
            "asprs_map=index", *extra]  # fmt: skip


def peak_rss_mb(pids: list[int]) -> dict[int, float]:
    """VmHWM (peak resident set) of each live process, MB."""
    out = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[pid] = int(line.split()[1]) / 1024.0
        except OSError:
            pass
    return out


def job_pids(root: int) -> list[int]:
    import psutil

    try:
        proc = psutil.Process(root)
        return [root, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"LOCAL_RANK="):
            return int(item.split(b"=", 1)[1])
    return None


def run_killed(cmd: list[str], out: Path, kill_after: int, log: Path) -> dict[str, Any]:
    """Start the job; SIGKILL a non-zero rank once ``kill_after`` tiles are recorded, then
    tear the job down (a lost node). Returns when it is gone."""
    t0, peaks, killed = time.perf_counter(), {}, None
    with open(log, "w") as f:
        job = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                               start_new_session=True)  # fmt: skip
        while job.poll() is None:
            time.sleep(2)
            pids = job_pids(job.pid)
            for pid, mb in peak_rss_mb(pids).items():
                peaks[pid] = max(peaks.get(pid, 0.0), mb)
            done = len(list((out / MANIFEST_DIR).glob("t*.json"))) if out.is_dir() else 0
            if killed is None and done >= kill_after:
                victims = [p for p in pids if (rank_of(p) or 0) > 0]
                if victims:
                    os.kill(victims[0], signal.SIGKILL)
                    killed = {"pid": victims[0], "rank": rank_of(victims[0]), "after_s":
                              time.perf_counter() - t0, "tiles_done": done}  # fmt: skip
                    time.sleep(5)
                    os.killpg(job.pid, signal.SIGKILL)  # the scheduler ends the job
        job.wait()
    return {"seconds": time.perf_counter() - t0, "returncode": job.returncode, "killed": killed,
            "peak_rss_mb": sorted(peaks.values(), reverse=True)}  # fmt: skip


def run_plain(cmd: list[str], log: Path) -> dict[str, Any]:
    t0, peaks = time.perf_counter(), {}
    with open(log, "w") as f:
        job = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        while job.poll() is None:
            time.sleep(2)
            for pid, mb in peak_rss_mb(job_pids(job.pid)).items():
                peaks[pid] = max(peaks.get(pid, 0.0), mb)
    if job.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {job.returncode}); see {log}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": sorted(peaks.values())[::-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, required=True, help="a pointseg checkpoint")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pointseg-survey"))
    ap.add_argument("--tiles", type=int, default=40)
    ap.add_argument("--distinct", type=int, default=4, help="distinct tiles generated")
    ap.add_argument("--points", type=int, default=5_000_000, help="points per tile")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--kill-after", type=int, default=10, help="tiles done before the kill")
    ap.add_argument("--check", type=int, default=2, help="tiles compared with one process")
    ap.add_argument("--out", type=Path, help="results JSON (default: <work>/survey.json)")
    args = ap.parse_args()
    work = args.work
    tiles = make_tiles(work / "tiles", tiles=args.tiles, distinct=args.distinct,
                       points=args.points)  # fmt: skip
    out = work / "out"
    ddp = ["trainer=ddp_cpu", f"trainer.devices={args.procs}", f"threads={max(1, 2 // args.procs)}"]
    cmd = predict_cmd(args.ckpt, tiles[0].parent, out, work / "run", *ddp)
    print("$", " ".join(cmd), flush=True)
    first = run_killed(cmd, out, args.kill_after, work / "first.log")
    print(f"first run: {first}", flush=True)
    left = sorted(p.name for p in out.glob(".*tmp*")) if out.is_dir() else []
    second = run_plain(cmd, work / "resume.log")
    summary = json.loads((out / "predict.json").read_text())
    print(f"resume: {second['seconds']:.0f} s, {len(summary['done'])} labelled, "
          f"{len(summary['skipped'])} skipped", flush=True)  # fmt: skip
    missing = [t.name for t in tiles if not (out / f"{t.stem}.labels.npy").is_file()
               or not (out / t.name).is_file()]  # fmt: skip
    one = work / "single"
    check = tiles[: args.check]
    sub = work / "check_in"
    sub.mkdir(exist_ok=True)
    for t in check:
        if not (sub / t.name).exists():
            os.link(t, sub / t.name)
    single = run_plain(predict_cmd(args.ckpt, sub, one, work / "run1", "threads=2"),
                       work / "single.log")  # fmt: skip
    same = lambda t: np.array_equal(  # noqa: E731
        np.load(one / f"{t.stem}.labels.npy"), np.load(out / f"{t.stem}.labels.npy")
    )
    equal = {t.name: bool(same(t)) for t in check}
    points = sum(e["points"] for e in summary["files"])
    res = {
        "command": " ".join(cmd), "tiles": len(tiles), "points": points,
        "first_run": first, "temporary_files_left": left, "resume": second,
        "resume_done": len(summary["done"]), "resume_skipped": len(summary["skipped"]),
        "resume_ranks": summary["ranks"], "missing_outputs": missing,
        "single_process": single, "labels_equal_single_process": equal,
        "total_seconds": first["seconds"] + second["seconds"],
    }  # fmt: skip
    write_json(args.out or work / "survey.json", res)
    print(json.dumps({k: v for k, v in res.items() if k != "resume_ranks"}, indent=1))
    if left or missing or not all(equal.values()):
        raise SystemExit("survey check failed: see the JSON above")


if __name__ == "__main__":
    main()
