"""Headless pictures of a labelled scan (``render=out.png``, eval's comparison figures):
Open3D's ``OffscreenRenderer`` (Filament; on a machine without a GPU it runs on Mesa llvmpipe)
draws each panel with the same auto-framed camera and matplotlib lays them out side by side
with a legend. Where the offscreen renderer cannot start, a matplotlib scatter plot is drawn
instead and the log says so.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointseg.viz.colors import (
    ERROR_LEGEND,
    IGNORE_RGB,
    MODE_NAMES,
    camera,
    error_colors,
    label_colors,
    palette,
    select_points,
)

log = logging.getLogger("pointseg.viz")

_renderers: dict[tuple[int, int], Any] = {}  # at most one: see _render_open3d
_registered: list[bool] = []


def _release_renderers() -> None:
    for r in _renderers.values():
        r.scene.clear_geometry()
    _renderers.clear()


class RendererUnavailable(RuntimeError):
    """Open3D's offscreen renderer cannot start here (no open3d, no EGL/OSMesa context)."""


def _render_open3d(
    coord: np.ndarray, color_sets: Sequence[np.ndarray], cam: dict, *, size: tuple[int, int],
    point_size: float,
) -> list[np.ndarray]:  # fmt: skip
    try:
        import open3d as o3d
    except ImportError as err:
        raise RendererUnavailable(f"open3d does not import: {err}") from err

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
        try:
            r = _renderers[size] = rendering.OffscreenRenderer(*size)
        except Exception as err:  # Filament found no rendering context
            raise RendererUnavailable(f"Open3D's OffscreenRenderer cannot start: {err}") from err
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
    cam = camera(coord, view, size[0] / size[1])
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
    if "gt" in panels and gt is not None and (gt[idx] < 0).any():  # the dark grey points
        legend.append(("not labelled (ground truth)", IGNORE_RGB))
    if "errors" in panels and gt is not None:
        legend += [(f"{name} (errors)", rgb) for name, rgb in ERROR_LEGEND]
    return compose(path, images, titles, legend, suptitle=title), backend
