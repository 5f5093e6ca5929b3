"""``pointseg-predict`` end to end (read -> voxelize -> network -> write) on a generated LAZ
scan, in points/s, with the peak RSS of the processes it ran."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .core import ROOT, Context, Section, log


def untrained_checkpoint(path: Path) -> Path:
    """A weights-only checkpoint of the default preset, untrained: it costs the same per point
    as a trained one. Written by pointseg's own checkpoint writer, so predict loads it safely."""
    import hydra
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pointseg.checkpoint import save_checkpoint, weights_checkpoint
    from pointseg.utils import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train")
    module = hydra.utils.instantiate(cfg.model)
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model")}
    return save_checkpoint(weights_checkpoint(module.state_dict(), config), path)


def predict_scan(points: int, workdir: Path, ckpt: Path | None = None) -> dict[str, Any]:
    """``ckpt``: a trained checkpoint (e.g. from ``make train``); by default an untrained
    network of the default preset."""
    trained = ckpt is not None
    ckpt = ckpt if trained else untrained_checkpoint(workdir / "bench.ckpt")
    laz = workdir / "scan.laz"
    log(f"inference: writing a {points:,}-point LAZ")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/make_big_laz.py"), str(laz), "--points", str(points)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    log("inference: pointseg-predict")
    out = workdir / "pred"
    argv = [sys.executable, "-m", "pointseg.predict", f"ckpt_path={ckpt}", f"input={laz}",
            f"output={out}", "progress=false", f"hydra.run.dir={workdir / 'run'}"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads((out / "predict.json").read_text())
    return {
        "points": points,
        "checkpoint": str(ckpt) if trained else "untrained default preset",
        "wall_s": round(wall, 1),
        "points_per_s": round(points / wall),
        "peak_rss_gb": round(peak_kb / 1024**2, 2),
        "peak_rss_note": "max RSS of the benchmark's child processes (the LAZ writer included)",
        # pointseg-predict's own figure: read -> write per file, without interpreter start-up
        "predict_points_per_s": round(summary["points"] / summary["seconds"]),
    }


class Inference(Section):
    name = "inference"
    summary = (
        "pointseg-predict end to end (read -> voxelize -> network -> write) on a generated "
        "LAZ scan, in points/s, with the peak RSS of the process (--ckpt: a trained model)"
    )

    def run(self, ctx: Context) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="pointseg-bench-") as tmp:
            return predict_scan(2_000_000 if ctx.quick else 50_000_000, Path(tmp), ctx.ckpt)

    def markdown(self, res: dict[str, Any]) -> list[str]:
        i = res
        return [
            "## Inference end to end (pointseg-predict on a LAZ scan)",
            "",
            "| points | wall (process) | points/s (process) | points/s (predict.json) | peak RSS |",
            "|---|---|---|---|---|",
            f"| {i['points']:,} | {i['wall_s']} s | {i['points_per_s']:,} | "
            f"{i['predict_points_per_s']:,} | {i['peak_rss_gb']} GB |",
            "",
        ]
