"""Choose airborne defaults by cross-validation over the shared real tiles, never on one split.

    python scripts/crossval.py --config default= --config vox=model.net.point_channels=0 \
        --seeds 42,1,2 --folds ign,ahn3 --out docs/crossval.md

Folds: the six adjacent IGN tiles, each left out in turn (trained on the other five), and the
two AHN3 tiles both ways. Every config is trained with each seed on every fold through the
command-line tools (``python -m pointseg.prepare|train|eval``, as a user types them) and scored
on every point of the held-out tile, next to baselines fitted on the same training tiles: the
height rule and HistGradientBoosting of ``real_data.py``, the Cloth Simulation Filter (CSF,
PyPI ``cloth-simulation-filter``) with four parameters tuned on the training tiles, and the
voxel ceiling (every voxel given its true majority class) at the default voxel size. Work files
go to --work; a finished (config, fold, seed) is read back from there instead of re-run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
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
    las_points,
    miou_of,
)
from real_data import AHN3_MAP, ASPRS_NAMES, Split, real_data_dir, run_cmd  # noqa: E402

from pointseg.utils import atomic_path  # noqa: E402

IGN_TILES = [f"ign/test_data_{c}_{r}_LA93_IGN69.laz" for r in (627755, 627760)
             for c in (77050, 77055, 77060)]  # fmt: skip
AHN3_TILES = ["ahn3/ahn3_cropped_1.laz", "ahn3/ahn3_cropped_2.laz"]


@dataclass(frozen=True)
class Fold:
    name: str
    group: str  # ign | ahn3
    split: Split


def folds(groups: list[str]) -> list[Fold]:
    out = []
    if "ign" in groups:
        for held in IGN_TILES:
            name = "ign-" + held.split("_")[2] + "_" + held.split("_")[3]
            split = Split(name, "las", [t for t in IGN_TILES if t != held], [held], ASPRS_NAMES,
                          prepare=["unknown=ignore"])  # fmt: skip
            out.append(Fold(name, "ign", split))
    if "ahn3" in groups:
        for held in AHN3_TILES:
            name = "ahn3-" + held.rsplit("_", 1)[1].split(".")[0]
            split = Split(name, "las", [t for t in AHN3_TILES if t != held], [held],
                          ["ground", "building", "water", "other"],
                          prepare=[f"class_map={AHN3_MAP}"])  # fmt: skip
            out.append(Fold(name, "ahn3", split))
    return out


# ---------------------------------------------------------------- baselines


def baselines(fold: Fold, data: Path, work: Path, voxel_size: float) -> dict[str, Any]:
    path = work / fold.name / "baselines.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    s = fold.split
    train = las_points([data / f for f in s.train], s.prepare)
    val = las_points([data / f for f in s.val], s.prepare)
    ground = s.class_names.index("ground")
    out = fit_baselines(train, val, len(s.class_names), ground=ground, voxel_size=voxel_size)
    out["seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(out, indent=1))
    return out


# ---------------------------------------------------------------- pointseg


def prepared(fold: Fold, data: Path, work: Path) -> Path:
    s, src, dst = fold.split, work / fold.name / "src", work / fold.name / "scenes"
    if (dst / "meta.json").is_file() or any(dst.glob("*/meta.json")):
        return dst
    for sub, files in (("train", s.train), ("val", s.val)):
        (src / sub).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = src / sub / Path(f).name
            if not link.exists():
                link.symlink_to(data / f)
    cmd = [sys.executable, "-m", "pointseg.prepare", "las", f"src={src}", f"dst={dst}",
           "split_by=folder", *s.prepare]  # fmt: skip
    run_cmd(cmd, work / fold.name / "prepare.log")
    return dst


def run_net(fold: Fold, config: str, overrides: list[str], seed: int, data: Path,
            work: Path) -> dict[str, Any]:  # fmt: skip
    path = work / fold.name / config / f"seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    s, scenes = fold.split, prepared(fold, data, work)
    run = work / fold.name / config / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    names = ",".join(s.class_names)
    cmd = [sys.executable, "-m", "pointseg.train", "data=las", f"data.train_dataset.root={scenes}",
           f"data.class_names=[{names}]", f"seed={seed}", *overrides, "logger=none",
           f"hydra.run.dir={run / 'train'}"]  # fmt: skip
    train_s, rss, _ = run_cmd(cmd, run.parent / f"seed{seed}.train.log")
    out = {"train_s": train_s, "train_gib": rss, "commands": [shlex.join(cmd)]}
    for which in ("best", "last"):
        out.update(evaluated(run, which))
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(out, indent=1))
    return out


def evaluated(run: Path, which: str) -> dict[str, Any]:
    """The confusion matrix of the run's ``best`` or ``last`` checkpoint on the held-out tile
    (``cm`` for best, ``cm_last`` for last), with the eval command."""
    ckpt = run / "train" / "checkpoints" / f"{which}.ckpt"
    ecmd = [sys.executable, "-m", "pointseg.eval", f"ckpt_path={ckpt}", "report.enabled=false",
            f"hydra.run.dir={run / f'eval_{which}'}"]  # fmt: skip
    run_cmd(ecmd, run.parent / f"{run.name}.eval_{which}.log")
    metrics = json.loads((run / f"eval_{which}" / "metrics.json").read_text())
    key = "cm" if which == "best" else "cm_last"
    return {key: metrics["confusion_matrix"], f"eval_{which}": shlex.join(ecmd)}


def chosen(result: dict[str, Any], run: Path, path: Path, which: str) -> dict[str, Any]:
    """``result`` scored by its ``which`` checkpoint (as ``cm``); a run cached before last.ckpt
    was scored is evaluated now (evaluation only, no training) and its cache updated."""
    key = "cm" if which == "best" else "cm_last"
    if key not in result:
        result = {**result, **evaluated(run, which)}
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))
    return {**result, "cm": result[key]}


# ---------------------------------------------------------------- report


def _ms(values: list[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def report(results: dict, fold_list: list[Fold], configs: dict[str, list[str]], seeds: list[int],
           argv: list[str]) -> str:  # fmt: skip
    lines = [
        "# Airborne defaults by cross-validation",
        "",
        f"Written by `python scripts/crossval.py {shlex.join(argv)}` on "
        f"{time.strftime('%Y-%m-%d')}. Folds: each IGN tile held out in turn (trained on the other "
        "five), AHN3 tile 1 -> 2 and 2 -> 1; every point of the held-out tile is scored by "
        "the run's last checkpoint unless `--checkpoint best` is given (best.ckpt is chosen "
        "on the held-out tile, which would peek at the fold's answer). Figures "
        "are mean ± standard deviation over seeds; the fold mean is over folds of the seed means.",
        "",
        "Configs: "
        + "; ".join(
            f"`{c}`: `{' '.join(o) or '(the defaults)'}`" for c, o in configs.items()
        ),  # fmt: skip
        "",
        "| fold | "
        + " | ".join(f"{c} mIoU" for c in configs)
        + " | HGB | ceiling | "
        + " | ".join(f"{c} g/r" for c in configs)
        + " | CSF g/r | rule g/r |",
        "|---" * (2 * len(configs) + 5) + "|",
    ]
    per_group: dict[str, dict[str, list[float]]] = {}
    for fold in fold_list:
        b = results[fold.name]["baselines"]
        g = fold.split.class_names.index("ground")
        row = [fold.name]
        acc = per_group.setdefault(fold.group, {})
        gr = []
        for c in configs:
            done = results[fold.name].get(c, {})
            cms = [np.asarray(done[sd]["cm"]) for sd in seeds if sd in done]
            if not cms:  # --cached-only: not run yet
                row.append("-")
                gr.append("-")
                continue
            mious = [miou_of(cm) for cm in cms]
            grs = [miou_of(ground_vs_rest(cm, g)) for cm in cms]
            row.append(_ms(mious) + ("" if len(cms) == len(seeds) else f" ({len(cms)} seed)"))
            gr.append(_ms(grs))
            acc.setdefault(f"{c} mIoU", []).append(float(np.mean(mious)))
            acc.setdefault(f"{c} g/r", []).append(float(np.mean(grs)))
            acc.setdefault(f"{c} worst seed", []).append(float(np.min(mious)))
        for key, cm in (("HGB", b["hgb"]), ("ceiling", b["ceiling"])):
            row.append(f"{miou_of(np.asarray(cm)):.3f}")
            acc.setdefault(key, []).append(miou_of(np.asarray(cm)))
        row += gr
        for key, cm in (("CSF g/r", b["csf"]["cm"]), ("rule g/r", b["rule"]["cm"])):
            row.append(f"{miou_of(np.asarray(cm)):.3f}")
            acc.setdefault(key, []).append(miou_of(np.asarray(cm)))
        acc.setdefault("HGB g/r", []).append(miou_of(ground_vs_rest(np.asarray(b["hgb"]), g)))
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Means over folds (± spread over folds; a config's mean covers the folds it has "
        "run, so compare configs fold by fold in the table above where they differ):",
        "",
    ]
    for group, acc in per_group.items():
        lines.append(f"- **{group}**: " + "; ".join(f"{k} {_ms(v)}" for k, v in acc.items()))
    lines += ["", "Per-class IoU, fold mean of the seed means:", ""]
    for group in per_group:
        names = next(f for f in fold_list if f.group == group).split.class_names
        lines += [f"### {group}", "", "| class | " + " | ".join([*configs, "HGB", "ceiling"])
                  + " |", "|---" * (len(configs) + 3) + "|"]  # fmt: skip
        group_folds = [f for f in fold_list if f.group == group]
        for i, name in enumerate(names):
            cells = []
            for c in [*configs, "HGB", "ceiling"]:
                vals = []
                for f in group_folds:
                    r = results[f.name]
                    if c in configs:
                        done = [sd for sd in seeds if sd in r.get(c, {})]
                        if not done:
                            continue
                        v = np.nanmean([iou_of(np.asarray(r[c][sd]["cm"]))[i] for sd in done])
                    else:
                        key = "hgb" if c == "HGB" else "ceiling"
                        v = iou_of(np.asarray(r["baselines"][key]))[i]
                    vals.append(v)
                vals = [v for v in vals if v == v]
                cells.append(f"{np.mean(vals):.3f}" if vals else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        help="NAME=OVERRIDES (space-separated pointseg-train overrides); repeatable",
    )
    ap.add_argument("--seeds", default="42", help="comma list of seeds")
    ap.add_argument("--folds", default="ign,ahn3", help="fold groups: ign, ahn3")
    ap.add_argument("--only", default="", help="comma list of fold names (default: all)")
    ap.add_argument("--voxel-size", type=float, default=1.0, help="for the voxel ceiling")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pointseg_crossval"))
    ap.add_argument("--out", type=Path, default=None, help="markdown report (default: print)")
    ap.add_argument(
        "--cached-only",
        action="store_true",
        help="report the runs finished under --work; train nothing",
    )
    ap.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="checkpoint scored on the held-out tile: last (default; best.ckpt is chosen on "
        "that same tile's validation, so it would peek at the fold's answer) or best",
    )
    args = ap.parse_args(argv)  # fmt: skip
    data = real_data_dir()
    if not data.is_dir():
        sys.exit(f"no real samples at {data}; set POINTSEG_REAL_DATA")
    configs = {}
    for spec in args.config or ["default="]:
        name, _, over = spec.partition("=")
        configs[name] = shlex.split(over)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    fold_list = folds(args.folds.split(","))
    if args.only:
        fold_list = [f for f in fold_list if f.name in args.only.split(",")]
    results: dict[str, Any] = {}
    if args.cached_only:  # folds whose baselines are not fitted yet are left out
        fold_list = [f for f in fold_list if (args.work / f.name / "baselines.json").is_file()]
    for fold in fold_list:
        res = results[fold.name] = {"baselines": baselines(fold, data, args.work, args.voxel_size)}
        for c, over in configs.items():
            res[c] = {}
            for seed in seeds:
                if args.cached_only:
                    path = args.work / fold.name / c / f"seed{seed}.json"
                    if path.is_file():
                        res[c][seed] = chosen(json.loads(path.read_text()), path.with_suffix(""),
                                              path, args.checkpoint)  # fmt: skip
                    continue
                path = args.work / fold.name / c / f"seed{seed}.json"
                res[c][seed] = chosen(run_net(fold, c, over, seed, data, args.work),
                                      path.with_suffix(""), path, args.checkpoint)  # fmt: skip
                if seed not in res[c]:
                    continue
                m = miou_of(np.asarray(res[c][seed]["cm"]))
                print(f"[{fold.name}] {c} seed {seed}: mIoU {m:.3f} "
                      f"({res[c][seed]['train_s']:.0f} s)", flush=True)  # fmt: skip
    text = report(results, fold_list, configs, seeds, argv)
    if args.out is None:
        print(text)
    else:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
