"""Label many files on one or many processes with Lightning's predict loop, resumably.

``pointseg-predict`` hands its planned files to ``trainer.predict``: a :class:`FileList`
dataset (item = one file's index), a :class:`RankShards` sampler that gives each rank a share
of the files balanced by point count (LAS headers, else file sizes), a :class:`FileLabeller`
module around the one :class:`~pointseg.segmenter.Segmenter` whose ``predict_step`` labels one
file, and a :class:`ManifestWriter` that writes each file's outputs atomically (through
``pointseg.io``'s writers) and then its record ``<output>/predict.manifest/<stem>.json``. A record
holds a key (a hash of the input's size and mtime, the checkpoint's and the options) and the
size and mtime of every output: a re-run skips a file whose record matches and whose outputs
are all there unchanged, and redoes the others. Each rank writes ``rank<k>.json``; after the
strategy's barrier rank 0 merges them into ``predict.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import Dataset, Sampler

from pointseg.io import PointFileError, detect_format
from pointseg.segmenter import Segmenter
from pointseg.utils import write_json

log = logging.getLogger(__name__)
MANIFEST_DIR = "predict.manifest"
# test hook: a process SIGKILLs itself after writing this many files (a node dying mid-run)
KILL_AFTER_ENV = "POINTSEG_TEST_KILL_AFTER_FILES"


def file_points(path: Path, fmt: str | None = None) -> int:
    """A file's point count for balancing: the LAS header's, else its size in bytes / 16."""
    if detect_format(path, fmt) == "las":
        import laspy

        try:
            with laspy.open(path) as reader:
                return int(reader.header.point_count)
        except Exception:  # an unreadable file is reported when it is labelled
            pass
    return max(1, path.stat().st_size // 16)


def shard(weights: Sequence[int], world: int) -> list[list[int]]:
    """Indices per rank, heaviest first to the lightest rank (LPT); every rank computes the
    same plan from the same weights. Each rank's share keeps the input order."""
    loads, shares = [0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        loads[r] += weights[i]
        shares[r].append(i)
    return [sorted(s) for s in shares]


class FileList(Dataset):
    """Item ``i`` is just ``i``: the file's index in the plan (the module reads the file)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> int:
        return i


class RankShards(Sampler[int]):
    """This rank's files of a point-balanced plan (no padding: no file is labelled twice)."""

    def __init__(self, weights: Sequence[int], *, rank: int, world: int) -> None:
        self.indices = shard(weights, world)[rank]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def record_key(path: Path, ckpt: Path, options: dict[str, Any]) -> str:
    """Hash of the input (path, size, mtime), the checkpoint (same) and the output options."""
    st, ck = path.stat(), ckpt.stat()
    ident = [str(path.resolve()), st.st_size, st.st_mtime_ns, str(ckpt.resolve()), ck.st_size,
             ck.st_mtime_ns, options]  # fmt: skip
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def done_record(record_path: Path, key: str) -> dict[str, Any] | None:
    """The file's record if it matches ``key`` and every output it lists is there unchanged."""
    try:
        rec = json.loads(record_path.read_text())
        if rec.get("key") != key:
            return None
        for p, stamp in rec["stamps"].items():
            if _stamp(Path(p)) != stamp:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, damaged or partial: redo the file
    return rec


class FileLabeller(pl.LightningModule):
    """The Segmenter as a LightningModule: ``predict_step`` labels one planned file."""

    def __init__(
        self,
        segmenter: Segmenter,
        *,
        files: Sequence[Path],
        plans: Sequence[dict[str, Path]],
        label_file: Callable[[Path, dict[str, Path], Segmenter], dict[str, Any]],
        weights: Sequence[int],
        keys: Sequence[str],
        record_dir: Path,
        skip_errors: bool,
    ) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.net = segmenter.net  # registered, so the strategy moves it to this rank's device
        self.files, self.plans, self.label_file = list(files), list(plans), label_file
        self.weights, self.keys = list(weights), list(keys)
        self.record_dir, self.skip_errors = record_dir, skip_errors

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        sampler = RankShards(
            self.weights, rank=self.trainer.global_rank, world=self.trainer.world_size
        )
        return torch.utils.data.DataLoader(
            FileList(len(self.files)), batch_size=None, sampler=sampler, num_workers=0
        )

    def on_predict_start(self) -> None:
        self.segmenter.device = self.device
        self.net.eval()

    def predict_step(self, batch: Any, batch_idx: int = 0) -> dict[str, Any]:
        i = int(batch)
        path, plan = self.files[i], self.plans[i]
        record = done_record(self.record_dir / f"{path.stem}.json", self.keys[i])
        # the outputs this run plans (a COPC copy once copclib is installed) must be the ones
        # the record lists
        if record is not None and set(record["entry"]["outputs"].values()) == set(
            map(str, plan.values())
        ):
            return {**record["entry"], "index": i, "status": "skipped"}
        try:
            entry = self.label_file(path, plan, self.segmenter)
        except Exception as err:  # any failure reading, labelling or writing this one file
            if not self.skip_errors:
                raise
            error = str(err) if isinstance(err, PointFileError | OSError) else (
                f"{type(err).__name__}: {err}"
            )  # fmt: skip
            log.error("skipped %s: %s", path, error, exc_info=not isinstance(err, PointFileError))
            return {"input": str(path), "index": i, "status": "failed", "error": error}
        return {**entry, "index": i, "status": "done"}


class ManifestWriter(BasePredictionWriter):
    """Per file: its record (after its outputs were written); per rank: ``rank<k>.json``;
    at the end, after the barrier, rank 0's ``predict.json`` merges them."""

    def __init__(self, *, out: Path, header: dict[str, Any]) -> None:
        super().__init__(write_interval="batch")
        self.out, self.header = out, header
        self.entries: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.summary: dict[str, Any] = {}
        self.kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)

    @property
    def record_dir(self) -> Path:
        return self.out / MANIFEST_DIR

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:  # fmt: skip
        entry = dict(prediction)
        self.entries.append(entry)
        if entry["status"] != "done":
            return
        stamps = {p: _stamp(Path(p)) for p in entry["outputs"].values()}
        rec = {"key": pl_module.keys[int(batch)], "stamps": stamps, "entry": entry}
        write_json(self.record_dir / f"{Path(entry['input']).stem}.json", rec)
        done = sum(e["status"] == "done" for e in self.entries)
        if self.kill_after and done >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank, seconds = trainer.global_rank, time.perf_counter() - self.t0
        done = [e for e in self.entries if e["status"] == "done"]
        points = sum(e["points"] for e in done)
        mine = {"rank": rank, "seconds": seconds, "points": points,
                "points_per_s": points / seconds if seconds > 0 else 0.0,
                "peak_rss_mb": _peak_rss_mb(), "files": self.entries}  # fmt: skip
        write_json(self.record_dir / f"rank{rank}.json", mine)
        trainer.strategy.barrier("pointseg-predict-manifests")
        if trainer.is_global_zero:
            self.summary = merge(self.out, trainer.world_size, self.header)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def merge(out: Path, world: int, header: dict[str, Any]) -> dict[str, Any]:
    """``predict.json`` from the ranks' manifests: every file's entry, done/skipped/failed
    lists, and points/s and peak memory per rank."""
    ranks = [json.loads((out / MANIFEST_DIR / f"rank{r}.json").read_text()) for r in range(world)]
    entries = sorted((e for r in ranks for e in r["files"]), key=lambda e: e["index"])
    by = {s: [e["input"] for e in entries if e["status"] == s] for s in ("done", "skipped")}
    failed = [
        {"input": e["input"], "error": e["error"]} for e in entries if e["status"] == "failed"
    ]
    labelled = [e for e in entries if e["status"] != "failed"]
    summary = {
        **header,
        "files": labelled,
        "done": by["done"],
        "skipped": by["skipped"],
        "failed": failed,
        "points": sum(e["points"] for e in labelled),
        "seconds": max(r["seconds"] for r in ranks),
        "ranks": [
            {k: r[k] for k in ("rank", "points", "seconds", "points_per_s", "peak_rss_mb")}
            for r in ranks
        ],  # fmt: skip
    }
    write_json(out / "predict.json", summary)
    print(f"{len(by['done'])} file(s) labelled, {len(by['skipped'])} skipped (already done), "
          f"{len(failed)} failed -> {out}")  # fmt: skip
    for r in summary["ranks"]:
        print(f"  rank {r['rank']}: {r['points']:,} points in {r['seconds']:.1f} s: "
              f"{r['points_per_s']:,.0f} points/s, "
              f"peak RSS {r['peak_rss_mb']:,.0f} MB")  # fmt: skip
    if failed:
        print("failed: " + ", ".join(f["input"] for f in failed))
    return summary
