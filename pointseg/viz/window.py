"""``pointseg-viz``'s interactive window (Open3D's GUI): one scan, keys switch what colours it.

The window draws the same points (``clip_top``, ``max_points``), from the same camera
(``view``), with the same unlit points of ``point_size`` pixels as the headless render, and
shows the current mode in its title and in a legend drawn over the scene.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from pointseg.viz.colors import (
    ERROR_LEGEND,
    MODE_NAMES,
    camera,
    error_colors,
    label_colors,
    palette,
    select_points,
)

KEYS = {"P": "pred", "G": "gt", "E": "errors", "C": "color"}
MISSING = {
    "gt": "no ground truth: pass gt=<labels file> (or a source= file with labels)",
    "errors": "no ground truth to compare with: pass gt=<labels file>",
    "color": "no scan colours: pass source=<the scanned file with RGB>",
}


class Mode(NamedTuple):
    title: str
    colors: np.ndarray  # (N, 3) uint8
    legend: list[tuple[str, np.ndarray]]  # (name, rgb) lines under the title


def window_title(mode: str) -> str:
    return f"pointseg-viz: {MODE_NAMES[mode]}"


def view_modes(
    pred: np.ndarray,
    gt: np.ndarray | None,
    class_names: Sequence[str],
    source_color: np.ndarray | None = None,
) -> dict[str, Mode]:
    """The colourings the window offers (by mode name), each with its legend."""
    colors = palette(len(class_names))

    def classes(*labels: np.ndarray) -> list[tuple[str, np.ndarray]]:
        present = set().union(*(np.unique(lb[lb >= 0]).tolist() for lb in labels))
        return [(n, colors[i]) for i, n in enumerate(class_names) if i in present]

    modes = {"pred": Mode(MODE_NAMES["pred"], label_colors(pred, colors), classes(pred))}
    if gt is not None:
        modes["gt"] = Mode(MODE_NAMES["gt"], label_colors(gt, colors), classes(gt))
        modes["errors"] = Mode(MODE_NAMES["errors"], error_colors(pred, gt), list(ERROR_LEGEND))
    if source_color is not None:
        rgb = np.asarray(source_color, np.float64)
        rgb = rgb / 255.0 if rgb.max(initial=0) > 1.0 else rgb  # 0-1 floats or 0-255 values
        modes["color"] = Mode(
            MODE_NAMES["color"], (rgb.clip(0, 1) * 255).round().astype(np.uint8), []
        )
    return modes


def _print_legend(modes: dict[str, Mode]) -> None:
    print("classes:")
    for name, (r, g, b) in modes["pred"].legend:
        print(f"  \x1b[48;2;{r};{g};{b}m    \x1b[0m {name}")
    keys = [f"{k} {MODE_NAMES[m]}" for k, m in KEYS.items() if m in modes]
    print("keys: " + ", ".join(keys) + ", Q quit")


def show(
    coord: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None,
    class_names: Sequence[str],
    source_color: np.ndarray | None = None,
    *,
    view: str = "oblique",
    point_size: float = 3.0,
    clip_top: float | str = "auto",
    max_points: int = 2_000_000,
    size: tuple[int, int] = (1024, 768),
) -> None:
    """Open the window; keys P/G/E/C switch prediction, truth, errors, scan colours."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise RuntimeError("no display (DISPLAY is not set): render headless with render=out.png")
    import open3d as o3d

    gui, rendering = o3d.visualization.gui, o3d.visualization.rendering
    idx, _ = select_points(coord, clip_top=clip_top, max_points=max_points)
    pts = np.asarray(coord, np.float64)[idx]
    modes = view_modes(
        pred[idx], None if gt is None else gt[idx], class_names,
        None if source_color is None else np.asarray(source_color)[idx],
    )  # fmt: skip
    _print_legend(modes)

    app = gui.Application.instance
    app.initialize()
    window = app.create_window(window_title("pred"), *size)
    widget = gui.SceneWidget()
    widget.scene = rendering.Open3DScene(window.renderer)
    widget.scene.set_background([1.0, 1.0, 1.0, 1.0])
    widget.scene.view.set_post_processing(False)  # no tone mapping: exact class colours
    material = rendering.MaterialRecord()
    material.shader, material.point_size = "defaultUnlit", float(point_size)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    window.add_child(widget)

    em = window.theme.font_size
    panel = gui.Vert(0.2 * em, gui.Margins(0.5 * em, 0.5 * em, 0.5 * em, 0.5 * em))
    panel.background_color = gui.Color(1.0, 1.0, 1.0, 0.85)
    heading = gui.Label("")
    heading.text_color = gui.Color(0.0, 0.0, 0.0)
    panel.add_child(heading)
    most = max(len(m.legend) for m in modes.values())
    lines = [gui.Label("") for _ in range(most)]
    for line in lines:
        panel.add_child(line)
    status = gui.Label("")
    panel.add_child(status)
    window.add_child(panel)

    timers: list[threading.Timer] = []
    closing = threading.Event()

    def redraw() -> None:
        if closing.is_set():  # a late frame for a window being closed
            return
        widget.force_redraw()
        window.post_redraw()

    def switch(mode: str) -> None:
        m = modes[mode]
        pcd.colors = o3d.utility.Vector3dVector(m.colors / 255.0)
        widget.scene.clear_geometry()
        widget.scene.add_geometry("points", pcd, material)
        window.title = window_title(mode)
        heading.text = m.title
        for line, item in zip(lines, [*m.legend, *[None] * most], strict=False):
            line.visible = item is not None
            if item is not None:
                name, (r, g, b) = item
                line.text = name  # written in its class colour
                line.text_color = gui.Color(r / 255.0, g / 255.0, b / 255.0)
        status.text = ""
        window.set_needs_layout()
        redraw()
        # one frame is not enough where the swap chain shows frames late (Mesa's Vulkan under
        # Xvfb kept the old colours until the mouse moved): draw a few more from the loop
        for delay in (0.05, 0.1, 0.2, 0.3, 0.5, 0.8):
            timer = threading.Timer(delay, app.post_to_main_thread, (window, redraw))
            timer.daemon = True
            timer.start()
            timers.append(timer)
        print(f"showing {m.title}", flush=True)

    def on_key(event: Any) -> Any:
        if event.type != gui.KeyEvent.Type.DOWN:
            return gui.Widget.EventCallbackResult.IGNORED
        for key, mode in KEYS.items():
            if event.key == getattr(gui.KeyName, key):
                if mode in modes:
                    switch(mode)
                else:
                    status.text = MISSING[mode]
                    print(f"{key}: {MISSING[mode]}", flush=True)
                    window.set_needs_layout()
                return gui.Widget.EventCallbackResult.HANDLED
        if event.key in (gui.KeyName.Q, gui.KeyName.ESCAPE):
            # no more frames once closing (a frame posted after the close kept the window
            # open), then close from the event loop: a close inside the handler waited for
            # the next event
            closing.set()
            for timer in timers:
                timer.cancel()
            threading.Thread(target=app.post_to_main_thread, args=(window, window.close),
                             daemon=True).start()  # fmt: skip
            return gui.Widget.EventCallbackResult.HANDLED
        return gui.Widget.EventCallbackResult.IGNORED

    def on_layout(ctx: Any) -> None:
        rect = window.content_rect
        widget.frame = rect
        pref = panel.calc_preferred_size(ctx, gui.Widget.Constraints())
        panel.frame = gui.Rect(rect.x, rect.y, pref.width, pref.height)

    switch("pred")
    cam = camera(pts, view, size[0] / size[1])
    bbox = widget.scene.bounding_box
    widget.setupcamera(cam.get("fov", 45.0), bbox, cam["centre"].astype(np.float32))
    o3d_camera = widget.scene.camera
    if "ortho" in cam:
        hw, hh = cam["ortho"]
        proj = rendering.Camera.Projection.Ortho
        o3d_camera.set_projection(proj, -hw, hw, -hh, hh, cam["near"], cam["far"])
    else:
        fov_type = rendering.Camera.FovType.Vertical
        o3d_camera.set_projection(cam["fov"], size[0] / size[1], cam["near"], cam["far"], fov_type)
    widget.look_at(cam["centre"], cam["eye"], cam["up"])
    window.set_on_key(on_key)
    window.set_on_layout(on_layout)

    def on_close() -> bool:
        # free the geometry while its renderer lives: left to interpreter teardown, Filament
        # aborts the process ("terminate called without an active exception")
        widget.scene.clear_geometry()
        return True

    window.set_on_close(on_close)
    app.run()
