"""Renders show the class colours in the right proportions; the eval report is complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pointseg.io import write_labeled_ply, write_npy
from pointseg.metrics import scores
from pointseg.viz import palette, render_comparison, render_views, visualize
from pointseg.viz.render import RendererUnavailable
from pointseg.viz.report import row_normalised, write_report

NAMES = ["floor", "wall", "ceiling"]
SIZE = (320, 240)  # one size: the offscreen renderer is made once per size and process


def _plane(n: int = 60_000) -> tuple[np.ndarray, np.ndarray]:
    """A flat 2 m x 1 m plane: class 0 on 70 % of its area (x < 1.4), class 1 on the rest."""
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.random(n) * 2.0, rng.random(n), np.zeros(n)].astype(np.float32)
    return xyz, (xyz[:, 0] >= 1.4).astype(np.int64)


def _fractions(img: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Share of each colour among the pixels that show one of ``colors`` exactly."""
    counts = np.array([np.all(img[..., :3] == c, axis=-1).sum() for c in colors], float)
    assert counts.sum() > 0.3 * img.shape[0] * img.shape[1] / 2, "too few class pixels"
    return counts / counts.sum()


def test_palette_is_distinct() -> None:
    for k in (3, 20, 45):
        colors = palette(k)
        assert colors.shape == (k, 3) and colors.dtype == np.uint8
        assert len(np.unique(colors, axis=0)) == k


@pytest.mark.parametrize("backend", ["open3d", "matplotlib"])
def test_top_render_has_class_colours_in_proportion(backend: str) -> None:
    xyz, labels = _plane()
    colors = palette(2)
    try:
        (img,), used = render_views(xyz, [colors[labels]], size=SIZE, view="top",
                                    point_size=3.0, backend=backend)  # fmt: skip
    except RendererUnavailable as err:  # no rendering context here; any other error fails
        pytest.skip(str(err))
    assert used == backend and img.shape == (SIZE[1], SIZE[0], 3)
    if backend == "open3d":  # unlit, no tone mapping: exact colours on a white background
        assert np.all(img[0, 0] == 255)
    share = _fractions(img, colors)
    assert share[0] == pytest.approx(0.7, abs=0.05), share


def test_side_by_side_png(tmp_path: Path) -> None:
    import matplotlib.image

    xyz, gt = _plane(30_000)
    pred = gt.copy()
    pred[xyz[:, 1] < 0.5] = 2  # half the plane predicted as the third class
    path, backend = render_comparison(tmp_path / "cmp.png", xyz, pred, gt, NAMES,
                                      view="top", size=SIZE, point_size=3.0)  # fmt: skip
    img = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(np.uint8)
    h, w = img.shape[:2]
    assert w >= 2 * SIZE[0] > h  # two panels side by side
    colors = palette(3)
    left, right = _fractions(img[:, : w // 2], colors), _fractions(img[:, w // 2 :], colors)
    assert left[0] == pytest.approx(0.7, abs=0.07) and left[2] < 0.02  # truth: no class 2
    assert right[2] == pytest.approx(0.5, abs=0.07)  # prediction: half class 2


def test_viz_cli_renders_a_prediction(tmp_path: Path) -> None:
    xyz, gt = _plane(20_000)
    ply = write_labeled_ply(tmp_path / "scan.ply", xyz, gt.astype(np.uint8), colors=palette(3),
                            class_names=NAMES)  # fmt: skip
    write_npy(tmp_path / "gt.npy", gt)
    cfg = OmegaConf.create({"input": str(ply), "gt": str(tmp_path / "gt.npy"), "source": None,
                            "class_names": None, "render": str(tmp_path / "v.png"),
                            "panels": ["gt", "pred", "errors"], "width": SIZE[0], "height": SIZE[1],
                            "view": "oblique", "point_size": 2.0, "clip_top": 0.0,
                            "max_points": 5000})  # fmt: skip
    assert visualize(cfg) == tmp_path / "v.png" and (tmp_path / "v.png").stat().st_size > 1000
    write_npy(tmp_path / "bad.npy", gt[:10])
    with pytest.raises(ValueError, match=r"bad\.npy"):
        visualize(OmegaConf.merge(cfg, {"gt": str(tmp_path / "bad.npy")}))


def test_report_files(tmp_path: Path) -> None:
    cm = torch.tensor([[90, 10, 0], [5, 45, 0], [0, 0, 0]])
    sc = scores(cm)
    md = write_report(tmp_path, confmat=cm, sc=sc, class_names=NAMES, split="val",
                      ckpt_path="x.ckpt", per_scene=[
                          {"scene": 0, "points": 100, "miou": 0.8, "allacc": 0.9},
                          {"scene": 1, "points": 50, "miou": 0.5, "allacc": 0.6}])  # fmt: skip
    text = md.read_text()
    assert "| floor | 0.8571 |" in text and "| ceiling | n/a |" in text
    assert "![confusion matrix](confusion.png)" in text and "![per-class IoU](iou.png)" in text
    assert text.index("| 1 | 50 |") < text.index("| 0 | 100 |")  # worst scene first
    for name in ("confusion.png", "iou.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_allclose(row_normalised(cm.numpy()).sum(1), [1, 1, 0])


def test_eval_with_tta_writes_report_and_worst_scene(compose_cfg, tmp_path: Path) -> None:
    import hydra

    from pointseg.eval import evaluate

    cfg = compose_cfg("train", ["data.voxel_size=0.12"])
    module = hydra.utils.instantiate(cfg.model)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(),
                "pointseg_config": OmegaConf.to_container(cfg, resolve=True)}, ckpt)  # fmt: skip
    args = [f"ckpt_path={ckpt}", "tta=true", "report.worst_scenes=1", "inference.tta_flip=false"]
    args += ["inference.tta_angles=[0,90]", "+data.val_dataset.num_scenes=1"]
    args += ["+data.val_dataset.room_size=[4,5]", "+data.val_dataset.density=400"]
    ecfg = compose_cfg("eval", args)
    out = evaluate(ecfg)
    run = Path(out["run_dir"])
    assert out["tta"] and len(out["scenes"]) == 1 and 0 <= out["val/miou"] <= 1
    assert set(json.loads((run / "metrics.json").read_text())) >= {"val/miou", "confusion_matrix"}
    text = (run / "report.md").read_text()
    assert "test-time augmentation: on" in text and "worst_scenes/01_scene0.png" in text
    assert (run / "worst_scenes" / "01_scene0.png").is_file()
    assert (run / "confusion.png").is_file() and (run / "iou.png").is_file()


def test_error_colours_cannot_be_taken_for_a_class_colour() -> None:
    from pointseg.viz.colors import BASE_COLORS, IGNORE_RGB, RIGHT_RGB, WRONG_RGB, error_colors

    known = np.concatenate([BASE_COLORS, IGNORE_RGB[None]]).astype(float)  # every fixed colour
    for rgb in (RIGHT_RGB, WRONG_RGB):
        assert np.linalg.norm(known - rgb.astype(float), axis=1).min() >= 100, rgb
    out = error_colors(np.array([0, 1, 2]), np.array([0, 2, -1]))
    assert (out[0] == RIGHT_RGB).all() and (out[1] == WRONG_RGB).all()
    assert not (out[2] == RIGHT_RGB).all()  # ignored truth: not scored, not "right"


def _viz_cfg(tmp_path: Path, **kw) -> OmegaConf:
    base = {"input": None, "gt": None, "source": None, "class_names": None, "class_map": "auto",
            "render": str(tmp_path / "v.png"), "panels": ["gt", "pred", "errors"],
            "width": SIZE[0], "height": SIZE[1], "view": "top", "point_size": 2.0,
            "clip_top": 0.0, "max_points": 5000}  # fmt: skip
    return OmegaConf.create({**base, **kw})


def test_viz_reads_a_las_ground_truth_through_the_models_class_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs' `pointseg-viz input=<tile>.labels.npy source=<tile>.laz gt=<tile>.laz`: ASPRS
    codes (here IGN's 64 too) become the model's classes, not class indices."""
    import pointseg.viz.render as render
    import pointseg.viz.show as viz
    from pointseg.io.las import PRESETS, load_class_map
    from tests.test_prepare_las import make_tile

    las = make_tile(tmp_path / "tile.laz", n=800, codes=(1, 2, 5, 6, 64), point_format=6)
    codes = np.asarray(las.classification)
    asprs = load_class_map("asprs", unknown="ignore")
    truth = asprs.apply(codes)
    pred = np.where(truth < 0, 0, truth)
    pred[:100] = 4  # some wrong
    out = tmp_path / "out"
    write_npy(out / "tile.labels.npy", pred.astype(np.uint8))
    names = list(PRESETS["asprs"]["classes"])
    (out / "predict.json").write_text(json.dumps({"class_names": names}))
    legends: list = []
    real_compose = render.compose
    monkeypatch.setattr(
        render, "compose", lambda *a, **k: legends.append(a[3]) or real_compose(*a, **k)
    )
    cfg = _viz_cfg(tmp_path, input=str(out / "tile.labels.npy"), source=str(tmp_path / "tile.laz"),
                   gt=str(tmp_path / "tile.laz"))  # fmt: skip
    assert visualize(cfg) == tmp_path / "v.png"
    _, _, gt, got_names, _ = viz._load(cfg)
    assert got_names == names and np.array_equal(gt, truth)
    assert (gt[codes == 64] == -1).all() and (gt[codes == 6] == names.index("building")).all()
    assert [n for n, _ in legends[0][-4:]] == ["not labelled (ground truth)", "right (errors)",
                                               "wrong (errors)", "not scored (errors)"]  # fmt: skip
    # a model of other classes: its map named on the command line, or one line asking for it
    two = _viz_cfg(tmp_path, input=str(out / "tile.labels.npy"), gt=str(tmp_path / "tile.laz"),
                   source=str(tmp_path / "tile.laz"), class_names=["ground", "other"],
                   class_map="ground_other")  # fmt: skip
    _, _, gt2, _, _ = viz._load(two)
    assert np.array_equal(gt2, load_class_map("ground_other", unknown="ignore").apply(codes))
    with pytest.raises(ValueError, match="class_map="):
        viz._load(OmegaConf.merge(two, {"class_map": "auto", "class_names": ["a", "b"]}))
