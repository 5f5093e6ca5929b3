"""``pointseg-viz``: look at predictions next to the ground truth.

Reads a scan, its predicted labels and a ground truth (a LAS tile's codes through the model's
class map), then shows them interactively (an Open3D window, ``pointseg.viz.window``; keys P
prediction, G ground truth, E errors (magenta), C the scan's own colours) or headless with
``render=out.png`` (``pointseg.viz.render``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.viz.render import render_comparison

log = logging.getLogger("pointseg.viz")


def las_class_map(spec: Any, class_names: Sequence[str] | None, *, gt: str | Path) -> Any:
    """The class map that turns a LAS ground truth's ASPRS codes into the model's classes:
    ``spec`` (a preset, file or mapping, as ``pointseg-prepare las class_map=``), else
    (``auto``/None) the preset whose classes are the model's (``asprs`` for ``data=las``).
    Codes the map does not list read as ignore."""
    from pointseg.io.las import PRESETS, load_class_map

    if spec not in (None, "auto"):
        return load_class_map(spec, unknown="ignore")
    for name in PRESETS:
        cmap = load_class_map(name, unknown="ignore")
        if class_names is not None and list(cmap.names) == list(class_names):
            log.info("gt=%s: ASPRS codes read through the %s class map", gt, name)
            return cmap
    raise ValueError(
        f"gt={gt} holds ASPRS classification codes, and no class map preset has the model's "
        f"classes {list(class_names or [])}: pass class_map=<the map the model's data was "
        "prepared with> (a preset, a .yaml/.json file or an inline mapping)"
    )


def load_labels(
    path: str | Path, n: int, *, class_names: Sequence[str] | None = None, class_map: Any = None
) -> np.ndarray:
    """(n,) int64 labels from ``.npy`` or a point file's label field; a LAS classification
    goes through ``las_class_map(class_map, class_names)`` (codes are not class indices)."""
    from pointseg.io import read_points

    path = Path(path)
    if path.suffix.lower() == ".npy" and path.stat().st_size and _is_1d_npy(path):
        labels = np.load(path).astype(np.int64)
    else:
        sample = read_points(path)
        key = "segment" if "segment" in sample else "classification"
        if key not in sample:
            raise ValueError(f"{path} holds no labels (no label field, no LAS classification)")
        labels = np.asarray(sample[key]).astype(np.int64)
        if key == "classification":
            cmap = las_class_map(class_map, class_names, gt=path)
            labels = cmap.apply(labels, source=str(path))
    if labels.shape != (n,):
        raise ValueError(f"{path} has {labels.shape} labels for {n} points; wrong file pair?")
    return labels


def _is_1d_npy(path: Path) -> bool:
    return np.load(path, mmap_mode="r").ndim == 1


def _stored_class_names(inp: Path, source: str | None) -> list[str] | None:
    """Class names kept next to predicted labels: the ``predict.json`` pointseg-predict writes
    beside them (the checkpoint's classes), or a pointseg PLY given as ``source``."""
    import json

    from pointseg.io import read_ply_classes

    summary = inp.parent / "predict.json"
    if summary.is_file():
        try:
            names = json.loads(summary.read_text()).get("class_names")
        except (OSError, ValueError, AttributeError):
            names = None
        if names:
            return [str(n) for n in names]
    if source and Path(source).suffix.lower() == ".ply":
        return read_ply_classes(source)
    return None


def _load(cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str], Any]:
    """(coord, pred, gt, class names, scan colours) from the viz config."""
    from omegaconf import OmegaConf

    from pointseg.io import read_ply_classes, read_points

    inp = Path(cfg.input)
    names = list(cfg.class_names) if cfg.get("class_names") else None
    source = read_points(cfg.source) if cfg.get("source") else None
    if inp.name.endswith(".labels.npy") or inp.suffix.lower() == ".npy":
        if source is None:
            raise ValueError(f"{inp} holds labels only: pass source=<the scanned file>")
        pred = load_labels(inp, len(source["coord"]))
        coord = source["coord"]
    else:
        sample = read_points(inp)
        if "segment" not in sample:
            raise ValueError(f"{inp} has no label field: is it a pointseg-predict output?")
        coord, pred = sample["coord"], sample["segment"]
        if names is None and inp.suffix.lower() == ".ply":
            names = read_ply_classes(inp)
    if names is None:
        names = _stored_class_names(inp, cfg.get("source"))
    gt = None
    if cfg.get("gt"):
        cmap = cfg.get("class_map")
        cmap = OmegaConf.to_container(cmap) if OmegaConf.is_config(cmap) else cmap
        gt = load_labels(cfg.gt, len(coord), class_names=names, class_map=cmap)
    elif source is not None and "segment" in source:
        gt = source["segment"]
    if names is None:
        top = int(max(pred.max(), -1 if gt is None else gt.max())) + 1
        names = [f"class {i}" for i in range(top)]
        log.warning("no class names found for %s: showing 'class 0..%d'; pass "
                    "class_names=[name0,name1,...]", inp, top - 1)  # fmt: skip
    colors = None if source is None else source.get("color")
    return coord, pred, gt, names, colors


def _clip(value: Any) -> float | str:
    return "auto" if str(value) == "auto" else float(value)


def visualize(cfg: Any) -> Path | None:
    coord, pred, gt, names, scan_colors = _load(cfg)
    if not cfg.get("render"):
        from pointseg.viz.window import show

        show(
            coord, pred, gt, names, scan_colors, view=cfg.view, point_size=float(cfg.point_size),
            clip_top=_clip(cfg.clip_top), max_points=int(cfg.max_points),
            size=(int(cfg.width), int(cfg.height)),
        )  # fmt: skip
        return None
    path, backend = render_comparison(
        cfg.render, coord, pred, gt, names, panels=list(cfg.panels),
        size=(int(cfg.width), int(cfg.height)), view=cfg.view, point_size=float(cfg.point_size),
        clip_top=_clip(cfg.clip_top), max_points=int(cfg.max_points),
    )  # fmt: skip
    print(f"wrote {path} ({backend} renderer)")
    return path


def main() -> None:
    import hydra

    from pointseg.guards import run_hydra  # --help, required options, quiet console
    from pointseg.utils import CONF_DIR

    run_hydra(
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="viz")(visualize),
        "viz",
    )


if __name__ == "__main__":
    main()
