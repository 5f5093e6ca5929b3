"""Train and score pointseg on every real labelled sample, next to two classical baselines
computed in the same run, and write docs/real_data.md.

    python scripts/real_data.py                 (make realdata)
    python scripts/real_data.py --only ahn3,ign --out docs/real_data.md

The samples are read from ../shared/data/real (or $POINTSEG_REAL_DATA); see its README.md.
pointseg rows use the command line tools (``python -m pointseg.prepare|train|eval``) through
subprocess, so the commands in the report are the ones a user types; work files (prepared
scenes, runs) go to --work, never into the project.

Baselines, on the same train/val points:
- rule (airborne only): a point is ground when its height above the lowest point within r
  (on a 1-unit grid) is <= t; r and t tuned on the training tiles (ground vs rest mIoU);
- HistGradientBoosting (scikit-learn) on hand-crafted per-point features: heights above
  ground at several radii, eigenvalue features (linearity, planarity, scattering, |normal z|)
  of the 16 nearest neighbours, and intensity, returns and colour where the data has them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from baselines import (  # noqa: E402
    fit_baselines,
    ground_vs_rest,
    iou_of,
    load_points,
    miou_of,
)

from pointseg.utils import atomic_write_text  # noqa: E402

AHN3_MAP = "{classes: {ground: [2], building: [6], water: [9], other: [1, 26]}}"
ASPRS_NAMES = [
    "ground", "low_vegetation", "medium_vegetation", "high_vegetation", "building", "water",
    "other",
]  # fmt: skip
# 2 epochs of 50 steps (data/las.yaml's trainer.limit_train_batches), validated at the end
LAS_VOXEL = 1.0  # data/las.yaml's voxel_size: the voxel ceiling is taken at it
AIRBORNE_STEPS = ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2"]


def real_data_dir() -> Path:
    return Path(os.environ.get("POINTSEG_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))


@dataclass
class Split:
    name: str
    kind: str  # las | scannet | semantickitti
    train: list[str]
    val: list[str]
    class_names: list[str]
    prepare: list[str] = field(default_factory=list)  # extra pointseg-prepare options
    train_args: list[str] = field(default_factory=list)  # extra pointseg-train overrides
    note: str = ""


SPLITS = [
    Split(
        "ahn3", "las", ["ahn3/ahn3_cropped_1.laz"], ["ahn3/ahn3_cropped_2.laz"],
        ["ground", "building", "water", "other"],
        prepare=[f"class_map={AHN3_MAP}"],
        train_args=AIRBORNE_STEPS,
        note="AHN3 code 1 (vegetation and the rest) and 26 (bridges) are `other`",
    ),
    Split(
        "ign", "las",
        ["ign/test_data_77050_627755_LA93_IGN69.laz", "ign/test_data_77055_627755_LA93_IGN69.laz"],
        ["ign/test_data_77060_627755_LA93_IGN69.laz"],
        ASPRS_NAMES,
        prepare=["unknown=ignore"],
        train_args=AIRBORNE_STEPS,
        note="ASPRS map; codes 0, 1 and 64 ignored",
    ),
    Split(
        "scannet", "scannet", ["scannet/scene0000_00"], ["scannet/scene0000_01"], [],
        train_args=["experiment=real_scannet", "trainer.max_epochs=4",
                    "trainer.check_val_every_n_epoch=4"],
    ),
    Split(
        "semantickitti", "semantickitti",
        [f"semantickitti/sequences/00/velodyne/00000{i}.bin" for i in range(4)],
        ["semantickitti/sequences/00/velodyne/000004.bin"], [],
        train_args=["experiment=real_semantickitti", "trainer.max_epochs=10",
                    "trainer.check_val_every_n_epoch=10"],
    ),
]  # fmt: skip


# ---------------------------------------------------------------- pointseg via its CLI


def run_cmd(cmd: list[str], log: Path) -> tuple[float, float, str]:
    """Run ``cmd`` (output to ``log``); returns wall seconds, peak RSS (GiB) and its stdout.
    The log is streamed, not written atomically: it can be followed while the step runs and
    keeps what a crashed step printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POINTSEG_ROOT": str(ROOT)}
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = log.read_text()
    if proc.returncode:
        raise RuntimeError(
            f"{shlex.join(cmd)} failed ({proc.returncode}); see {log}:\n{text[-3000:]}"
        )
    return wall, usage.ru_maxrss / 2**20, text


def pointseg_run(split: Split, data: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    py = sys.executable
    cmds: list[list[str]] = []
    work.mkdir(parents=True, exist_ok=True)
    if split.kind == "las":
        src = work / "src"
        for sub, files in (("train", split.train), ("val", split.val)):
            for f in files:
                _link(src / sub / Path(f).name, data / f)
        dst = work / "scenes"
        cmds.append([py, "-m", "pointseg.prepare", "las", f"src={src}", f"dst={dst}",
                     "split_by=folder", *split.prepare])  # fmt: skip
        names = ",".join(split.class_names)
        k = len(split.class_names)
        train_args = ["data=las", f"data.train_dataset.root={dst}", f"data.num_classes={k}",
                      f"data.class_names=[{names}]"]  # fmt: skip
    elif split.kind == "scannet":
        splits = work / "splits"
        for sub, files in (("train", split.train), ("val", split.val)):
            atomic_write_text(splits / f"{sub}.txt", "\n".join(Path(s).name for s in files) + "\n")
        dst = work / "scenes"
        cmds.append([py, "-m", "pointseg.prepare", "scannet", f"src={data / 'scannet'}",
                     f"dst={dst}", f"splits={splits}"])  # fmt: skip
        train_args = [f"data.train_dataset.root={dst}"]
    else:  # SemanticKITTI is read in place; the held-out scan is linked as sequence 08
        root = work / "kitti"
        for seq, files in (("00", split.train), ("08", split.val)):
            for f in files:
                scan = data / f
                label = scan.parent.parent / "labels" / (scan.stem + ".label")
                for path, sub in ((scan, "velodyne"), (label, "labels")):
                    _link(root / "sequences" / seq / sub / path.name, path)
        train_args = [f"data.train_dataset.root={root}"]
    run_dir = work / "train"
    cmds.append([py, "-m", "pointseg.train", *train_args, *split.train_args, *extra,
                 "logger=none", f"hydra.run.dir={run_dir}"])  # fmt: skip
    timings = []
    for i, cmd in enumerate(cmds):
        timings.append(run_cmd(cmd, work / f"step{i}.log"))
        print(f"[{split.name}] {timings[-1][0]:.0f} s: {shlex.join(cmd)}", flush=True)
    train_wall, train_rss, text = timings[-1]
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        raise RuntimeError(f"{split.name}: no best checkpoint in {run_dir}; see {work}")
    eval_dir = work / "eval"
    cmd = [py, "-m", "pointseg.eval", f"ckpt_path={ckpt}", "report.enabled=false",
           f"hydra.run.dir={eval_dir}"]  # fmt: skip
    eval_wall, eval_rss, _ = run_cmd(cmd, work / "eval.log")
    print(f"[{split.name}] {eval_wall:.0f} s: {shlex.join(cmd)}", flush=True)
    cmds.append(cmd)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    names = list(metrics["val/iou"])
    return {
        "confusion": np.asarray(metrics["confusion_matrix"], dtype=np.int64),
        "class_names": names,
        "train_s": train_wall,
        "train_gib": train_rss,
        "eval_s": eval_wall,
        "commands": [shlex.join(c) for c in cmds],
    }


def _link(link: Path, target: Path) -> None:
    """A symlink to ``target`` at ``link`` (its folder made), unless one is there."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(target)


# ---------------------------------------------------------------- the report


def _save(path: Path, obj: dict) -> None:
    conv = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in obj.items()}
    atomic_write_text(path, json.dumps(conv, indent=1))


def _load(path: Path, arrays: tuple[str, ...]) -> dict | None:
    if not path.is_file():
        return None
    obj = json.loads(path.read_text())
    return {k: np.asarray(v) if k in arrays else v for k, v in obj.items()}


def run_split(
    split: Split, data: Path, work: Path, extra: list[str], skip_net: bool, reuse: bool
) -> dict:
    if split.kind == "scannet":
        from pointseg.data.datasets.scannet_meta import CLASS_NAMES_20

        split.class_names = list(CLASS_NAMES_20)
    elif split.kind == "semantickitti":
        from pointseg.data.datasets.semantickitti import kitti_labels

        split.class_names = kitti_labels().class_names
    k = len(split.class_names)
    # each part is saved under --work; --reuse takes a saved part instead of redoing it
    base_file, net_file = work / split.name / "baselines.json", work / split.name / "net.json"
    res: dict[str, Any] = {"split": split}
    saved = _load(base_file, ("val_counts", "hgb", "ceiling")) if reuse else None
    if saved is not None and split.kind == "las" and "csf" not in saved:
        saved = None  # written before the CSF baseline: fit again
    if saved is None:
        t0 = time.perf_counter()
        train = load_points(split.kind, [data / f for f in split.train], split.prepare)
        val = load_points(split.kind, [data / f for f in split.val], split.prepare)
        read_s = time.perf_counter() - t0
        ground = split.class_names.index("ground") if split.kind == "las" else None
        saved = fit_baselines(train, val, k, ground=ground, voxel_size=LAS_VOXEL)
        saved["hgb_s"] += read_s  # the report's HGB time includes reading the points
        _save(base_file, saved)
    res.update(saved)
    if "rule" in res:
        rule = res["rule"]
        print(f"[{split.name}] rule r={rule['r']} t={rule['t']}: {miou_of(rule['cm']):.3f}")
    print(f"[{split.name}] HistGradientBoosting mIoU {miou_of(res['hgb']):.3f}", flush=True)
    if not skip_net:
        net = _load(net_file, ("confusion",)) if reuse else None
        if net is None:
            net = pointseg_run(split, data, work / split.name, extra)
            _save(net_file, net)
        res["net"] = net
        print(f"[{split.name}] pointseg mIoU {miou_of(net['confusion']):.3f}", flush=True)
    return res


def fmt(x: float) -> str:
    return "-" if x != x else f"{x:.3f}"


def targets(res: dict) -> str:
    s, net = res["split"], res.get("net")
    if not net:
        return "pointseg not run"
    cm, gap = net["confusion"], miou_of(net["confusion"]) - miou_of(res["hgb"])
    need = 0.05 if "rule" in res else 0.03
    parts = [f"mIoU {gap:+.3f} vs HGB ({'met' if gap >= need else 'missed'} +{need:g})"]
    if "rule" in res:
        g = s.class_names.index("ground")
        gap = miou_of(ground_vs_rest(cm, g)) - miou_of(res["csf"]["cm"])
        parts.append(f"ground-vs-rest {gap:+.3f} vs CSF ({'met' if gap >= 0.01 else 'missed'} "
                     "+0.01)")  # fmt: skip
        iou = iou_of(cm)
        low = [f"{n} {v:.2f}" for n, c, v in zip(s.class_names, res["val_counts"], iou,
               strict=True) if c > 500 and v < 0.30]  # fmt: skip
        parts.append(f"classes > 500 points below IoU 0.30: {', '.join(low) or 'none'}")
    return "; ".join(parts)


def write_report(results: list[dict], out: Path, argv: list[str]) -> None:
    reused = " (with --reuse, parts that an earlier run saved under --work are taken)"
    reused = reused if "--reuse" in argv else ""
    lines = [
        "# pointseg on real labelled samples",
        "",
        f"Written by `python scripts/real_data.py {shlex.join(argv)}` (`make realdata`) on "
        f"{time.strftime('%Y-%m-%d')}: every figure below comes from one run of it{reused}. "
        "The samples "
        "are `../shared/data/real` (see its README.md); train on the first, score every point "
        "of the second. CPU only, 2 cores shared with other jobs: times are wall-clock on a busy "
        "machine and vary by 2-3x with the load.",
        "",
        "Baselines, fitted on the same training points: **rule**, ground when the height "
        "above the lowest point within r (1-unit grid) is <= t, r and t tuned on the training "
        "tiles (ground vs rest mIoU); **HGB**, scikit-learn HistGradientBoosting (200 "
        "iterations, balanced class weights, at most 300k training points) on per-point "
        "features: airborne, the preparer's own `las_features` (heights above the lowest point "
        "within 2-60 m, eigenvalue features of the 16 nearest neighbours, p99-scaled intensity, "
        "returns; colour where present); ScanNet, height, colour and eigenvalue features of 16 "
        "and 48 neighbours; SemanticKITTI, z, heights above the lowest point within 2, 5 and "
        "10 m and eigenvalue features of 16 neighbours; **CSF**, the Cloth Simulation Filter "
        "(PyPI `cloth-simulation-filter`) with cloth resolution, rigidness, class threshold "
        "and slope smoothing tuned on the training tiles (ground vs rest). **Ceiling**: a "
        "perfect 1-unit voxel classifier, every point given its voxel's true majority class "
        "(the best any voxel-labelling model can do). Ground vs rest of pointseg and HGB is "
        "read from their multi-class confusion matrices (ground against every other class).",
        "",
        "## Summary",
        "",
        "| split | pointseg mIoU | HGB mIoU | voxel ceiling | pointseg ground-vs-rest | "
        "CSF ground-vs-rest | rule ground-vs-rest (r, t) | HGB ground-vs-rest | train time | "
        "peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        s = res["split"]
        net = res.get("net")
        g = s.class_names.index("ground") if "ground" in s.class_names else None
        row = [s.name, fmt(miou_of(net["confusion"])) if net else "not run",
               fmt(miou_of(res["hgb"]))]  # fmt: skip
        if g is not None:
            rule = res["rule"]
            row += [
                fmt(miou_of(res["ceiling"])),
                fmt(miou_of(ground_vs_rest(net["confusion"], g))) if net else "-",
                fmt(miou_of(res["csf"]["cm"])),
                f"{fmt(miou_of(rule['cm']))} ({rule['r']:g}, {rule['t']:g})",
                fmt(miou_of(ground_vs_rest(res["hgb"], g))),
            ]
        else:
            row += ["-"] * 5
        row += (
            [f"{net['train_s'] / 60:.1f} min", f"{net['train_gib']:.1f} GiB"] if net else ["-"] * 2
        )
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Targets (airborne: pointseg mIoU >= HGB + 0.05, ground-vs-rest >= CSF + 0.01, no class "
        "with > 500 val points below IoU 0.30; indoor/outdoor: pointseg mIoU >= HGB + 0.03):",
        "",
    ]
    for res in results:
        lines.append(f"- {res['split'].name}: {targets(res)}")
    for res in results:
        s = res["split"]
        net = res.get("net")
        lines += ["", f"## {s.name}", ""]
        if s.note:
            lines += [s.note + ".", ""]
        lines += ["| class | val points | pointseg IoU | HGB IoU | voxel ceiling IoU |",
                  "|---|---|---|---|---|"]  # fmt: skip
        net_iou = iou_of(net["confusion"]) if net else np.full(len(s.class_names), np.nan)
        hgb_iou = iou_of(res["hgb"])
        ceil = iou_of(res["ceiling"]) if "ceiling" in res else np.full(len(hgb_iou), np.nan)
        for i, name in enumerate(s.class_names):
            lines.append(f"| {name} | {int(res['val_counts'][i]):,} | {fmt(net_iou[i])} | "
                         f"{fmt(hgb_iou[i])} | {fmt(ceil[i])} |")  # fmt: skip
        if net:
            lines += ["", f"pointseg: train {net['train_s']:.0f} s (peak RSS "
                      f"{net['train_gib']:.2f} GiB), eval {net['eval_s']:.0f} s; HGB fit and "
                      f"predict {res['hgb_s']:.0f} s. Commands:", "", "```"]  # fmt: skip
            exe = shlex.quote(sys.executable) + " "  # shown as the plain `python` it is
            lines += [c.replace(exe, "python ", 1) for c in net["commands"]] + ["```"]
    atomic_write_text(out, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma list of splits (default: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pointseg_real_data"))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "real_data.md")
    ap.add_argument("--baselines-only", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="take parts saved under --work")
    ap.add_argument("--train-args", default="", help="extra pointseg-train overrides, all splits")
    args = ap.parse_args(argv)
    data = real_data_dir()
    if not data.is_dir():
        sys.exit(f"no real samples at {data}; set POINTSEG_REAL_DATA")
    only = [s for s in args.only.split(",") if s]
    results = []
    for split in SPLITS:
        if only and split.name not in only:
            continue
        results.append(run_split(split, data, args.work, shlex.split(args.train_args),
                                 args.baselines_only, args.reuse))  # fmt: skip
    write_report(results, args.out, argv)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
