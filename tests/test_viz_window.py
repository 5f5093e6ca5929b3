"""The interactive window under Xvfb: class colours on screen, ceiling hidden, keys switch modes."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pointseg.io import write_npy
from pointseg.viz import palette

TOOLS = ("Xvfb", "xdotool", "xwd")
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS) or not sys.platform.startswith("linux"),
    reason="needs Xvfb, xdotool and xwd (apt-get install xvfb xdotool x11-apps)",
)
NAMES = ["floor", "wall", "ceiling"]


def _room(n: int = 40_000) -> tuple[np.ndarray, np.ndarray]:
    """A 4 m x 3 m floor (classes 0 | 1 split at x = 2) under a ceiling (class 2) at 2.6 m."""
    rng = np.random.default_rng(0)
    xy = rng.random((n, 2)) * [4.0, 3.0]
    z = np.where(np.arange(n) < n * 2 // 3, 0.0, 2.6)
    labels = np.where(z > 0, 2, (xy[:, 0] >= 2.0).astype(np.int64))
    return np.c_[xy, z].astype(np.float32), labels


def _screenshot(display: str) -> np.ndarray:
    """(H, W, 3) uint8 of the whole X screen, from ``xwd -root`` (ZPixmap, 24 or 32 bpp)."""
    raw = subprocess.run(["xwd", "-root", "-silent", "-display", display], check=True,
                         capture_output=True).stdout  # fmt: skip
    h = struct.unpack(">25I", raw[:100])
    header_size, width, height, byte_order, bpp, line = h[0], h[4], h[5], h[7], h[11], h[12]
    masks, ncolors = h[14:17], h[19]
    assert bpp in (24, 32), f"xwd gave {bpp} bits per pixel"
    start, nbytes = header_size + 12 * ncolors, bpp // 8
    rows = np.frombuffer(raw[start : start + height * line], np.uint8).reshape(height, line)
    b = rows[:, : width * nbytes].reshape(height, width, nbytes).astype(np.uint32)
    order = range(nbytes) if byte_order == 0 else reversed(range(nbytes))  # LSB first: 0
    px = sum(b[..., i] << (8 * k) for k, i in enumerate(order))
    chans = [(px & m) >> ((m & -m).bit_length() - 1) for m in masks]
    return np.stack(chans, -1).astype(np.uint8)


def _share(img: np.ndarray, rgb: np.ndarray, tol: int = 8) -> float:
    return float(np.all(np.abs(img.astype(int) - rgb.astype(int)) <= tol, axis=-1).mean())


def _xdotool(display: str, *args: str) -> str:
    env = dict(os.environ, DISPLAY=display)
    out = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True)
    return out.stdout.strip()


def _wait_title(display: str, wid: str, title: str, timeout: float = 15.0) -> str:
    deadline = time.time() + timeout
    name = ""
    while time.time() < deadline:
        name = _xdotool(display, "getwindowname", wid)
        if name == title:
            break
        time.sleep(0.3)
    return name


def test_window_shows_classes_hides_ceiling_and_keys_switch_modes(tmp_path: Path) -> None:
    import open3d as o3d

    xyz, gt = _room()
    pred = gt.copy()
    pred[(gt == 0) & (xyz[:, 1] < 1.0)] = 1  # a wrong strip, red in the error view
    scan = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    scan.colors = o3d.utility.Vector3dVector(np.full((len(xyz), 3), 0.5))
    o3d.io.write_point_cloud(str(tmp_path / "scan.ply"), scan)
    write_npy(tmp_path / "scan.labels.npy", pred)
    write_npy(tmp_path / "gt.npy", gt)
    # what pointseg-predict writes beside its labels: the checkpoint's class names
    (tmp_path / "predict.json").write_text(json.dumps({"class_names": NAMES}))

    display = f":{90 + os.getpid() % 500}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    viewer = None
    try:
        time.sleep(1.0)
        env = dict(os.environ, DISPLAY=display, PYTHONPATH=str(Path(__file__).parents[1]))
        cmd = [sys.executable, "-m", "pointseg.viz", f"input={tmp_path / 'scan.labels.npy'}",
               f"source={tmp_path / 'scan.ply'}", f"gt={tmp_path / 'gt.npy'}", "width=640",
               "height=480", f"hydra.run.dir={tmp_path / 'viz'}"]  # fmt: skip
        viewer = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)  # fmt: skip
        wid, deadline = "", time.time() + 40
        while not wid and time.time() < deadline and viewer.poll() is None:
            wid = _xdotool(display, "search", "--name", "pointseg-viz").split("\n")[0]
            time.sleep(0.5)
        assert wid, f"no window appeared: {viewer.communicate(timeout=5)[0][-2000:]}"
        assert _wait_title(display, wid, "pointseg-viz: prediction") == "pointseg-viz: prediction"
        time.sleep(2.0)  # first frames
        colors = palette(3)
        img = _screenshot(display)
        assert _share(img, colors[0]) > 0.01 and _share(img, colors[1]) > 0.01
        assert _share(img, colors[2]) < 0.001  # the ceiling is clipped (clip_top=auto)

        for key, title in (("g", "ground truth"), ("e", "errors (magenta)"), ("c", "scan colours"),
                           ("p", "prediction")):  # fmt: skip
            _xdotool(display, "windowfocus", "--sync", wid, "key", key)
            assert _wait_title(display, wid, f"pointseg-viz: {title}") == f"pointseg-viz: {title}"
            if key == "e":
                red, deadline = 0.0, time.time() + 10
                while red <= 0.005 and time.time() < deadline:
                    time.sleep(0.5)
                    red = _share(_screenshot(display), np.array([255, 0, 255]))  # wrong: magenta
                assert red > 0.005
        # Q right after a switch (whose extra frames are still pending) closes the window
        _xdotool(display, "windowfocus", "--sync", wid, "key", "g")
        _xdotool(display, "windowfocus", "--sync", wid, "key", "q")
        out, _ = viewer.communicate(timeout=30)
        assert viewer.returncode == 0, out[-2000:]
        assert "floor" in out and "ceiling" in out and "class 0" not in out
    finally:
        if viewer is not None and viewer.poll() is None:
            viewer.kill()
            viewer.communicate()
        xvfb.terminate()
        xvfb.wait(timeout=10)
