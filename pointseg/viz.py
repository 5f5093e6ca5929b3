"""``pointseg-viz``: look at predictions next to the ground truth.

Interactive (an Open3D window, ``pointseg.viz_window``; keys P prediction, G ground truth,
E errors (magenta), C the scan's own colours) or headless with ``render=out.png``: Open3D's
``OffscreenRenderer`` (Filament; on a machine without a GPU it runs on Mesa llvmpipe) draws
each panel with the same auto-framed camera and matplotlib lays them out side by side with a
legend. Where the offscreen renderer cannot start, a matplotlib scatter plot is drawn instead
and the log says so.
"""

from __future__ import annotations

import atexit
import colorsys
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_BASE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], dtype=np.uint8)  # fmt: skip
IGNORE_RGB = np.array([60, 60, 60], np.uint8)  # unlabelled ground-truth points
# the errors view: black right, magenta wrong, far (>= 100 in RGB) from every colour of the
# fixed class palette and IGNORE_RGB, so no point of it reads as a class; unscored points faint
RIGHT_RGB, WRONG_RGB = np.array([0, 0, 0], np.uint8), np.array([255, 0, 255], np.uint8)
NOT_SCORED_RGB = np.array([225, 225, 225], np.uint8)  # ground truth ignored there
ERROR_LEGEND = (("right", RIGHT_RGB), ("wrong", WRONG_RGB), ("not scored", NOT_SCORED_RGB))
MODE_NAMES = {"pred": "prediction", "gt": "ground truth", "errors": "errors (magenta)",
              "color": "scan colours"}  # fmt: skip
_renderers: dict[tuple[int, int], Any] = {}  # at most one: see _render_open3d
_registered: list[bool] = []


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 class colours: 20 fixed ones, then evenly spread hues."""
    if num_classes <= len(_BASE):
        return _BASE[:num_classes].copy()
    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.65, 0.9) for i in range(num_classes - 20)]
    return np.concatenate([_BASE, (np.array(extra) * 255).round().astype(np.uint8)])


def label_colors(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours of labels; negative (ignored) labels get ``IGNORE_RGB``."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and labels.max() >= len(colors):
        raise ValueError(f"label {labels.max()} but only {len(colors)} classes are known")
    out = colors[np.clip(labels, 0, None)]
    out[labels < 0] = IGNORE_RGB
    return out


def error_colors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Black where the prediction is right, magenta where it is wrong, faint grey where the
    truth is ignored (not scored)."""
    gt = np.asarray(gt).astype(np.int64)
    out = np.tile(RIGHT_RGB, (len(pred), 1))
    out[(gt >= 0) & (np.asarray(pred).astype(np.int64) != gt)] = WRONG_RGB
    out[gt < 0] = NOT_SCORED_RGB
    return out


def auto_clip_top(coord: np.ndarray) -> float:
    """0.15 for what looks like an indoor scan (a dense horizontal layer, the ceiling, at the top
    of a 1.5-8 m z-range), else 0: the fraction of the z-range ``clip_top=auto`` cuts."""
    z = np.asarray(coord, np.float64)[:, 2]
    if not len(z):
        return 0.0
    lo, hi = float(z.min()), float(z.max())
    if not 1.5 <= hi - lo <= 8.0:  # rooms and storeys; airborne tiles and streets are taller
        return 0.0
    top = float(np.mean(z >= hi - 0.05 * (hi - lo)))
    return 0.15 if top >= 0.08 else 0.0


def select_points(
    coord: np.ndarray, *, clip_top: float | str = "auto", max_points: int = 2_000_000
) -> tuple[np.ndarray, float]:
    """Indices of the points to draw (top of the z-range cut, then a seeded subsample of at
    most ``max_points``) and the clip fraction used (``clip_top='auto'``: ``auto_clip_top``)."""
    if clip_top == "auto":
        clip = auto_clip_top(coord)
        if clip:
            log.info("clip_top=auto: the top %.0f%% of the z-range (a ceiling) is hidden; "
                     "clip_top=0 shows it", clip * 100)  # fmt: skip
    else:
        clip = float(clip_top)
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"clip_top must be 'auto' or a fraction in [0, 1), got {clip_top}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    keep = np.ones(len(coord), bool)
    if clip > 0:  # e.g. drop ceilings to see into rooms
        z = coord[:, 2]
        keep &= z <= z.max() - clip * (z.max() - z.min())
    idx = np.flatnonzero(keep)
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(0).choice(idx, max_points, replace=False))
    return idx, clip


def _camera(coord: np.ndarray, view: str, aspect: float) -> dict[str, Any]:
    lo, hi = coord.min(0).astype(np.float64), coord.max(0).astype(np.float64)
    centre, extent = (lo + hi) / 2, np.maximum(hi - lo, 1e-6)
    if view == "top":
        half_w = max(extent[0] / 2, extent[1] / 2 * aspect) * 1.04
        height = extent[2] + extent.max() + 1.0  # eye above the top, looking straight down
        return {"centre": centre, "eye": centre + [0, 0, height], "up": [0, 1, 0],
                "ortho": (half_w, half_w / aspect), "near": 0.01, "far": 2 * height}  # fmt: skip
    if view != "oblique":
        raise ValueError(f"view must be 'oblique' or 'top', got {view!r}")
    fov = 45.0
    radius = np.linalg.norm(extent) / 2
    direction = np.array([-0.45, -0.6, 1.3]) / np.linalg.norm([-0.45, -0.6, 1.3])  # ~60 deg up
    dist = radius / np.sin(np.radians(fov / 2) * min(1.0, aspect)) * 1.02
    return {"centre": centre, "eye": centre + direction * dist, "up": [0, 0, 1], "fov": fov,
            "near": max(dist - radius, 1e-3) * 0.5, "far": (dist + radius) * 1.5}  # fmt: skip


def _release_renderers() -> None:
    for r in _renderers.values():
        r.scene.clear_geometry()
    _renderers.clear()


def _render_open3d(
    coord: np.ndarray, color_sets: Sequence[np.ndarray], cam: dict, *, size: tuple[int, int],
    point_size: float,
) -> list[np.ndarray]:  # fmt: skip
    import open3d as o3d

    rendering = o3d.visualization.rendering
    r = _renderers.get(size)
    if r is None:
        # One renderer at a time: two alive in a process (different sizes) abort it at exit
        # in Filament ("destroying MaterialInstance ... still in use"), as does one destroyed
        # during interpreter teardown, hence the atexit release.
        if not _registered:
            atexit.register(_release_renderers)
            _registered.append(True)
        _release_renderers()
        r = _renderers[size] = rendering.OffscreenRenderer(*size)
    mat = rendering.MaterialRecord()
    mat.shader, mat.point_size = "defaultUnlit", float(point_size)  # unlit: exact colours
    r.scene.set_background([1.0, 1.0, 1.0, 1.0])
    r.scene.view.set_post_processing(False)  # no tone mapping: pixels keep the class colours
    cam_ = r.scene.camera
    near, far = cam["near"], cam["far"]
    if "ortho" in cam:
        hw, hh = cam["ortho"]
        cam_.set_projection(rendering.Camera.Projection.Ortho, -hw, hw, -hh, hh, near, far)
    else:
        vertical = rendering.Camera.FovType.Vertical
        cam_.set_projection(cam["fov"], size[0] / size[1], near, far, vertical)
    cam_.look_at(cam["centre"], cam["eye"], cam["up"])
    images = []
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord.astype(np.float64)))
    for colors in color_sets:
        pcd.colors = o3d.utility.Vector3dVector(colors.astype(np.float64) / 255.0)
        r.scene.clear_geometry()
        r.scene.add_geometry("points", pcd, mat)
        images.append(np.asarray(r.render_to_image()).copy())
    r.scene.clear_geometry()
    return images


def _render_matplotlib(
    coord: np.ndarray, color_sets: Sequence[np.ndarray], cam: dict, *, size: tuple[int, int],
    point_size: float,
) -> list[np.ndarray]:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fwd = cam["centre"] - cam["eye"]
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, cam["up"])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    rel = coord - cam["eye"]
    u, v, depth = rel @ right, rel @ up, rel @ fwd
    if "fov" in cam:  # perspective divide
        u, v = u / depth, v / depth
    order = np.argsort(-depth)  # far points first, near ones drawn over them
    images = []
    for colors in color_sets:
        fig = plt.figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.scatter(u[order], v[order], c=colors[order] / 255.0, s=point_size**2, marker="s",
                   linewidths=0)  # fmt: skip
        ax.set_aspect("equal")
        ax.axis("off")
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        plt.close(fig)
    return images


def render_views(
    coord: np.ndarray,
    color_sets: Sequence[np.ndarray],
    *,
    size: tuple[int, int] = (800, 600),
    view: str = "oblique",
    point_size: float = 2.0,
    backend: str = "auto",
) -> tuple[list[np.ndarray], str]:
    """One (H, W, 3) uint8 image per colour set, same camera; returns (images, backend)."""
    cam = _camera(coord, view, size[0] / size[1])
    if backend in ("auto", "open3d"):
        try:
            return _render_open3d(
                coord, color_sets, cam, size=size, point_size=point_size
            ), "open3d"
        except Exception as err:  # no EGL/Vulkan, no open3d: still give a picture
            if backend == "open3d":
                raise
            log.warning("Open3D offscreen rendering failed (%s); using a matplotlib scatter", err)
    return _render_matplotlib(
        coord, color_sets, cam, size=size, point_size=point_size
    ), "matplotlib"


def compose(
    path: str | Path,
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    legend: Sequence[tuple[str, np.ndarray]] = (),
    *,
    suptitle: str | None = None,
) -> Path:
    """Panels side by side with titles and a legend of class colours, saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from pointseg.io import atomic_path

    h, w = images[0].shape[:2]
    fig, axes = plt.subplots(1, len(images), figsize=(len(images) * w / 100, h / 100 + 1.2),
                             dpi=100, squeeze=False)  # fmt: skip
    for ax, img, title in zip(axes[0], images, titles, strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    if legend:
        # a dark edge on every swatch: light colours (not scored, pale classes) read on white
        handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="0.2", linewidth=0.8,
                         label=n) for n, c in legend]  # fmt: skip
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, 0.08 if legend else 0, 1, 0.94 if suptitle else 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def render_comparison(
    path: str | Path,
    coord: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None,
    class_names: Sequence[str],
    *,
    panels: Sequence[str] = ("gt", "pred"),
    size: tuple[int, int] = (800, 600),
    view: str = "oblique",
    point_size: float = 2.0,
    clip_top: float | str = 0.0,
    max_points: int = 2_000_000,
    title: str | None = None,
) -> tuple[Path, str]:
    """Side-by-side PNG of ground truth | prediction (| errors); returns (path, backend)."""
    colors = palette(len(class_names))
    idx, _ = select_points(coord, clip_top=clip_top, max_points=max_points)
    sets, titles = [], []
    for panel in panels:
        if panel in ("gt", "errors") and gt is None:
            continue
        if panel == "gt":
            sets.append(label_colors(gt[idx], colors))
        elif panel == "pred":
            sets.append(label_colors(pred[idx], colors))
        elif panel == "errors":
            sets.append(error_colors(pred[idx], gt[idx]))
        else:
            raise ValueError(f"unknown panel {panel!r}: use gt, pred, errors")
        titles.append(MODE_NAMES[panel])
    images, backend = render_views(coord[idx], sets, size=size, view=view, point_size=point_size)
    present = set(np.unique(pred[idx]).tolist()) | (set() if gt is None else set(gt[idx].tolist()))
    legend = [(n, colors[i]) for i, n in enumerate(class_names) if i in present]
    if "errors" in panels and gt is not None:
        legend += [(f"{name} (errors)", rgb) for name, rgb in ERROR_LEGEND]
    return compose(path, images, titles, legend, suptitle=title), backend


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
        from pointseg.viz_window import show

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
