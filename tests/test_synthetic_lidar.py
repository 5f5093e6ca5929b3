"""Synthetic LiDAR: ray-cast geometry, sensor pattern, determinism, dataset API, training."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from pointseg.data.datasets.synth.street import build_street
from pointseg.data.datasets.synth.street_parts import Prim
from pointseg.data.datasets.synthetic_lidar import (
    _KERNELS,
    CLASS_NAMES,
    SyntheticLidar,
    _Caster,
    _rotation,
    beam_elevations,
    generate_scan,
    scene_seed,
)
from pointseg.train import train
from tests.conftest import TINY

KEYS = ("coord", "strength", "segment", "instance")
ROAD, BUILDING, POLE = (CLASS_NAMES.index(c) for c in ("road", "building", "pole"))
SMALL = {"beams": 16, "azimuth_steps": 360}  # ~5k points: cheap scans for API tests


@pytest.fixture(scope="module")
def scans() -> list[dict[str, np.ndarray]]:
    return [generate_scan(scene_seed(0, "train", i)) for i in range(6)]


def test_class_names() -> None:
    assert CLASS_NAMES[:7] == (
        "road",
        "sidewalk",
        "building",
        "vegetation",
        "car",
        "pole",
        "person",
    )
    assert SyntheticLidar.class_names is CLASS_NAMES


def test_same_seed_identical_different_seed_different() -> None:
    a, b, c = generate_scan(3, **SMALL), generate_scan(3, **SMALL), generate_scan(4, **SMALL)
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])
    assert len(a["coord"]) != len(c["coord"]) or not np.array_equal(a["coord"], c["coord"])


def test_dtypes_shapes_ranges(scans: list[dict[str, np.ndarray]]) -> None:
    for s in scans:
        assert set(s) == set(KEYS)
        n = len(s["coord"])
        assert 25_000 <= n <= 60_000, n
        assert s["coord"].shape == (n, 3) and s["coord"].dtype == np.float32
        assert s["strength"].shape == (n, 1) and s["strength"].dtype == np.float32
        assert s["segment"].shape == (n,) and s["segment"].dtype == np.int64
        assert s["instance"].shape == (n,) and s["instance"].dtype == np.int64
        assert np.isfinite(s["coord"]).all()
        assert s["strength"].min() >= 0 and s["strength"].max() <= 1
        assert s["segment"].min() >= 0 and s["segment"].max() < len(CLASS_NAMES)
        rng = np.linalg.norm(s["coord"], axis=1)
        assert rng.min() > 1.4 and rng.max() < 80.2  # min_range 1.5, max_range 80, noise


def test_classes_instances_and_materials(scans: list[dict[str, np.ndarray]]) -> None:
    seg = np.concatenate([s["segment"] for s in scans])
    assert set(np.unique(seg).tolist()) == set(range(len(CLASS_NAMES)))
    for s in scans:  # each instance carries one label; the road is instance 0
        pairs = np.unique(np.stack([s["instance"], s["segment"]], 1), axis=0)
        assert len(np.unique(pairs[:, 0])) == len(pairs)
        assert np.all(s["segment"][s["instance"] == 0] == ROAD)
    strength = np.concatenate([s["strength"][:, 0] for s in scans])
    road = strength[seg == ROAD]
    assert road.mean() < 0.15 < strength[seg == BUILDING].mean()
    assert 0.002 < (road > 0.45).mean() < 0.1  # painted lane lines are bright
    assert np.percentile(strength[seg == POLE], 95) > 0.7  # retroreflective signs


def test_sensor_frame_rings_and_one_return_per_ray(scans: list[dict[str, np.ndarray]]) -> None:
    elev = beam_elevations(32)
    for s in scans[:3]:
        c = s["coord"].astype(np.float64)
        z = c[s["segment"] == ROAD, 2]
        assert abs(np.median(z) + 1.73) < 0.15  # the road is sensor_height below the sensor
        el = np.degrees(np.arctan2(c[:, 2], np.hypot(c[:, 0], c[:, 1])))
        # every point lies on a beam (the vehicle's small tilt moves it by < 2 deg)
        assert np.abs(el[:, None] - elev[None]).min(1).max() < 2.0
        unit = np.round(c / np.linalg.norm(c, axis=1, keepdims=True), 5)
        assert len(np.unique(unit, axis=0)) == len(c)  # at most one return per ray
        # density falls with range: road points per m^2, near ring vs far ring
        r = np.hypot(c[:, 0], c[:, 1])[s["segment"] == ROAD]
        near = ((r > 5) & (r < 10)).sum() / (np.pi * (10**2 - 5**2))
        far = ((r > 20) & (r < 30)).sum() / (np.pi * (30**2 - 20**2))
        assert near > 5 * far


def test_options_change_the_sensor() -> None:
    low = generate_scan(1, beams=16, azimuth_steps=500, sensor_height=2.5)
    road = low["coord"][low["segment"] == ROAD]
    assert abs(np.median(road[:, 2]) + 2.5) < 0.15
    base = generate_scan(1)
    dense = generate_scan(1, beams=64)
    assert 1.6 < len(dense["coord"]) / len(base["coord"]) < 2.6
    narrow = generate_scan(1, beams=8, fov=(-20.0, -5.0), azimuth_steps=400, range_noise=0.0)
    c = narrow["coord"]
    el = np.degrees(np.arctan2(c[:, 2], np.hypot(c[:, 0], c[:, 1])))
    assert el.min() > -22 and el.max() < -3
    assert len(generate_scan(1, beams=16, azimuth_steps=400, dropout=0.5)["coord"]) < 0.7 * len(
        generate_scan(1, beams=16, azimuth_steps=400, dropout=0.0)["coord"]
    )
    with pytest.raises(ValueError, match="beams"):
        generate_scan(0, beams=1)
    with pytest.raises(ValueError, match="fov"):
        generate_scan(0, fov=(10.0, -10.0))
    with pytest.raises(ValueError, match="max_range"):
        generate_scan(0, max_range=-5.0)
    with pytest.raises(ValueError, match="dropout"):
        generate_scan(0, dropout=1.5)


def test_beam_elevations() -> None:
    e32, e64 = beam_elevations(32), beam_elevations(64)
    assert len(e32) == 32 and e32[0] == pytest.approx(-30.67) and e32[-1] == pytest.approx(10.67)
    assert len(e64) == 64 and e64[0] == pytest.approx(-24.33) and e64[-1] == pytest.approx(2.0)
    assert np.all(np.diff(e64) > 0) and np.diff(e64)[40] < np.diff(e64)[10]  # denser on top


@pytest.mark.parametrize("shape", ["box", "cyl", "ell"])
def test_kernels_return_the_first_surface_point(shape: str) -> None:
    """Random rays against one primitive: the hit lies on the surface and nothing before it
    is inside the solid; misses never come close to it."""
    rng = np.random.default_rng(0)
    prim = Prim(
        shape, (6.0, 1.0, 0.5), (1.5, 0.8, 1.2), 0, 0, 0.5, yaw=0.4 if shape != "cyl" else 0
    )
    if shape == "cyl":
        prim = Prim("cyl", (6.0, 1.0, 0.5), (0.8, 0.8, 1.2), 0, 0, 0.5)
    o = np.array([0.0, 0.0, 1.0])
    aim = np.asarray(prim.center) - o  # around the object, so about half of the rays hit
    d = aim[:, None, None] + rng.normal(size=(3, 40, 50)) * np.array(prim.half)[:, None, None]
    d /= np.linalg.norm(d, axis=0)
    with np.errstate(all="ignore"):
        t, cos = _KERNELS[shape](prim, o, *d)

    def inside(q: np.ndarray, tol: float) -> np.ndarray:  # (..., 3) in the solid, grown by tol
        r = q - np.asarray(prim.center)
        c, s = math.cos(prim.yaw), math.sin(prim.yaw)
        lx, ly, lz = c * r[..., 0] + s * r[..., 1], -s * r[..., 0] + c * r[..., 1], r[..., 2]
        hx, hy, hz = prim.half
        if shape == "box":
            return (abs(lx) <= hx + tol) & (abs(ly) <= hy + tol) & (abs(lz) <= hz + tol)
        if shape == "cyl":
            return (np.hypot(lx, ly) <= hx + tol) & (abs(lz) <= hz + tol)
        return (lx / (hx + tol)) ** 2 + (ly / (hy + tol)) ** 2 + (lz / (hz + tol)) ** 2 <= 1

    hit = np.isfinite(t)
    assert 0.1 < hit.mean() < 0.9
    p = o + (t[hit][:, None] * d[:, hit].T)
    assert inside(p, 1e-6).all() and not inside(p, -1e-3).any()  # on the surface
    assert (cos[hit] >= 0).all() and (cos[hit] <= 1 + 1e-9).all()
    for f in np.linspace(0.0, 0.999, 40):  # nothing of the solid before the hit
        assert not inside(o + (f * t[hit])[:, None] * d[:, hit].T, -1e-6).any()
    for f in np.linspace(0.1, 20.0, 200):  # misses stay outside all along
        assert not inside(o + f * d[:, ~hit].T, -1e-6).any()


def test_caster_keeps_the_nearest_surface() -> None:
    """A wall in front of a building: where both are in line, the wall wins."""
    wall = Prim("box", (8.0, 0.0, 1.0), (0.1, 2.0, 1.0), 1, 1, 0.5)
    building = Prim("box", (20.0, 0.0, 5.0), (2.0, 10.0, 5.0), 2, 2, 0.5)
    caster = _Caster(np.linspace(-10.0, 10.0, 21), 720, np.eye(3), phase=0.0)
    o = np.array([0.0, 0.0, 1.0])
    rng = np.random.default_rng(0)
    caster.cast([building, wall], o, 80.0, rng)
    behind = np.abs(np.arctan2(caster.dy, caster.dx)) < math.atan2(1.9, 8.1)
    low = np.abs(caster.dz / np.hypot(caster.dx, caster.dy)) < 0.9 / 8.1  # the wall's height
    shadow = behind & low
    assert shadow.sum() > 20 and np.all(caster.prim[shadow] == 1)
    assert np.allclose(caster.t[shadow] * caster.dx[shadow], 7.9)
    above = behind & (caster.dz / np.hypot(caster.dx, caster.dy) > 1.05 / 7.9)
    assert above.any() and np.all(caster.prim[above] == 0)  # the building shows above the wall


def test_culling_loses_no_hit() -> None:
    """Casting each primitive only into its window of rays gives the same depth buffer as
    testing every ray against every primitive (tilted sensor, a whole street)."""
    street = build_street(np.random.default_rng(5), extent=90.0, sensor_height=1.73)
    prims = [dataclasses.replace(p, porosity=0.0) for p in street.prims]
    rot = _rotation(0.3, 0.02, -0.015)
    caster = _Caster(beam_elevations(16), 360, rot, phase=0.004)
    caster.cast(prims, street.sensor, 80.0, np.random.default_rng(0))
    brute = np.full(caster.t.shape, np.inf)
    with np.errstate(all="ignore"):
        for p in prims:
            t, _ = _KERNELS[p.shape](p, street.sensor, caster.dx, caster.dy, caster.dz)
            brute = np.minimum(brute, t)
    near = brute <= 80.0  # beyond max_range culling may skip objects, on purpose
    assert near.mean() > 0.5
    np.testing.assert_array_equal(caster.t[near], brute[near])


def test_dataset_matches_generate_scan_and_caches() -> None:
    ds = SyntheticLidar("val", num_scenes=2, seed=3, **SMALL)
    assert len(ds) == 2
    ref = generate_scan(scene_seed(3, "val", 1), **SMALL)
    got = ds[1]
    for k in KEYS:
        np.testing.assert_array_equal(got[k], ref[k])
    assert got["coord"] is not ds[1]["coord"]  # a fresh copy every time
    np.testing.assert_array_equal(ds[-1]["coord"], ref["coord"])
    assert not SyntheticLidar("val", num_scenes=2, cache=False, **SMALL)._cache
    train = SyntheticLidar("train", num_scenes=2, seed=3, **SMALL)
    assert not np.array_equal(train[0]["coord"][:100], ds[0]["coord"][:100])


def test_transform_applied_and_cache_not_mutated() -> None:
    def vandal(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sample["coord"] += 100.0
        sample["segment"][:] = 0
        return sample

    ds = SyntheticLidar("train", num_scenes=1, seed=1, transform=vandal, **SMALL)
    ref = generate_scan(scene_seed(1, "train", 0), **SMALL)
    for _ in range(2):
        out = ds[0]
        np.testing.assert_allclose(out["coord"], ref["coord"] + 100.0)
    np.testing.assert_array_equal(ds._cache[0]["segment"], ref["segment"])


def test_dataset_argument_errors() -> None:
    with pytest.raises(ValueError, match="split"):
        SyntheticLidar("training", num_scenes=1)
    with pytest.raises(ValueError, match="num_scenes"):
        SyntheticLidar("train", num_scenes=0)
    with pytest.raises(TypeError, match="beam"):
        SyntheticLidar("train", num_scenes=1, beam=32)
    with pytest.raises(IndexError, match="out of range"):
        SyntheticLidar("train", num_scenes=1, **SMALL)[1]


def test_config_trains_one_epoch(compose_cfg) -> None:
    """`pointseg-train data=synthetic_lidar`, shrunk to two tiny scans per split."""
    cfg = compose_cfg(
        "train",
        [
            "data=synthetic_lidar",
            *TINY,
            "data.train_dataset.beams=8",
            "data.train_dataset.azimuth_steps=240",
            "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=1",
            "callbacks.progress_bar.refresh_rate=0",
        ],
    )
    assert cfg.data.in_channels == 4 and len(cfg.data.class_names) == cfg.data.num_classes
    assert list(cfg.data.class_names) == list(CLASS_NAMES)
    result = train(cfg)
    assert 0.0 <= result["val/miou"] <= 1.0
    assert set(result["last_val"]["iou"]) == set(CLASS_NAMES)
