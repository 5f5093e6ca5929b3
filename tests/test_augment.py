"""Augmentations: alignment of per-point arrays, no mutation, ranges, determinism, semantics."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pointseg.data.augment import (
    BoxCrop,
    ChromaticAutoContrast,
    ChromaticTranslation,
    ElasticDistortion,
    RandomDropout,
    RandomRotate,
    RandomTranslate,
    SphereCrop,
    take_points,
)
from pointseg.data.transforms import Compose, Voxelize


def make_sample(n: int = 4000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n, 3))
    return {
        "coord": rng.uniform(0, 4, (n, 3)).astype(np.float32),
        "color": rng.uniform(0.2, 0.8, (n, 3)).astype(np.float32),
        "normal": (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
        "strength": rng.uniform(0, 1, (n, 1)).astype(np.float32),
        "segment": rng.integers(-1, 5, n).astype(np.int64),
        "instance": rng.integers(0, 30, n).astype(np.int64),
        "height": rng.uniform(0, 3, (n, 1)).astype(np.float32),
        "index": np.arange(n),  # which input row each output row came from
        "name": "scene0",  # not per-point: must pass through untouched
        "offset": np.zeros(2),  # an array whose length is not N: untouched
    }


ALL = {
    "rotate": lambda s: RandomRotate(max_tilt=0.1, seed=s),
    "translate": lambda s: RandomTranslate(seed=s),
    "elastic": lambda s: ElasticDistortion(p=1.0, seed=s),
    "autocontrast": lambda s: ChromaticAutoContrast(p=1.0, seed=s),
    "translation": lambda s: ChromaticTranslation(p=1.0, seed=s),
    "dropout": lambda s: RandomDropout(ratio=0.3, p=1.0, seed=s),
    "crop": lambda s: SphereCrop(max_points=1000, seed=s),
    "boxcrop": lambda s: BoxCrop(size=(1.0, 1.0, None), seed=s),
}
GEOMETRIC = {"rotate", "translate", "elastic"}
CHROMATIC = {"autocontrast", "translation"}
PER_POINT = ("coord", "color", "normal", "strength", "segment", "instance", "height")


@pytest.mark.parametrize("name", sorted(ALL))
def test_alignment_no_mutation_determinism(name: str) -> None:
    s = make_sample()
    before = copy.deepcopy(s)
    out = ALL[name](1)(s)
    assert out is not s
    for k in before:  # the input dict and its arrays are untouched
        if isinstance(before[k], np.ndarray):
            np.testing.assert_array_equal(s[k], before[k])
    assert set(out) == set(s) and out["name"] == "scene0" and out["offset"] is s["offset"]
    idx = out["index"]
    n = len(idx)
    assert len(np.unique(idx)) == n and np.all(np.diff(idx) > 0)  # rows kept once, in order
    for k in PER_POINT:
        assert out[k].shape == (n, *s[k].shape[1:]) and out[k].dtype == s[k].dtype, k
        changed = (k == "coord" and name in GEOMETRIC) or (k == "normal" and name == "rotate")
        changed |= k == "color" and name in CHROMATIC
        if not changed:  # everything else is the input row the index says
            np.testing.assert_array_equal(out[k], s[k][idx], err_msg=k)
    if name in GEOMETRIC:
        assert not np.allclose(out["coord"], s["coord"])
    again, other = ALL[name](1)(make_sample()), ALL[name](2)(make_sample())
    for k in PER_POINT:
        np.testing.assert_array_equal(again[k], out[k])
    assert any(
        other[k].shape != out[k].shape or not np.array_equal(other[k], out[k]) for k in PER_POINT
    )


def test_rotate_is_a_rotation_of_coords_and_normals() -> None:
    s = make_sample(500)
    out = RandomRotate(max_tilt=0.1, seed=3)(s)
    rot, *_ = np.linalg.lstsq(s["coord"].astype(np.float64), out["coord"], rcond=None)
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-5)  # orthonormal
    np.testing.assert_allclose(s["coord"] @ rot, out["coord"], atol=1e-4)
    np.testing.assert_allclose(s["normal"] @ rot, out["normal"], atol=1e-5)  # same rotation
    tilt = np.degrees(np.arccos(rot[2, 2]))
    assert 0 < tilt < np.degrees(0.1 * np.sqrt(2)) + 1e-3
    flat = RandomRotate(seed=3)(s)  # no tilt: z stays, xy turns
    np.testing.assert_allclose(flat["coord"][:, 2], s["coord"][:, 2], atol=1e-6)
    assert RandomRotate(p=0.0)(s)["coord"] is s["coord"]
    with pytest.raises(ValueError, match="max_tilt"):
        RandomRotate(max_tilt=-1.0)


def test_translate_moves_everything_alike() -> None:
    s = make_sample(300)
    out = RandomTranslate(shift=(0.5, 0.3, 0.0), seed=0)(s)
    delta = out["coord"] - s["coord"]
    np.testing.assert_allclose(delta, np.broadcast_to(delta[0], delta.shape), atol=1e-6)
    assert abs(delta[0, 0]) <= 0.5 and abs(delta[0, 1]) <= 0.3 and delta[0, 2] == 0


def test_elastic_distortion_is_smooth_and_bounded() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 6, (3000, 3))
    near = base + rng.normal(size=base.shape) * 0.01  # companions ~1.7 cm away
    coord = np.concatenate([base, near]).astype(np.float32)
    out = ElasticDistortion(granularity_magnitude=[(0.4, 0.2)], p=1.0, seed=0)({"coord": coord})
    disp = (out["coord"] - coord).astype(np.float64)
    assert np.abs(disp).max() <= 0.2 + 1e-5  # bounded by the magnitude, per axis
    assert np.abs(disp).max() > 0.08  # and it uses it: the field is scaled to its max
    close = np.linalg.norm(disp[:3000] - disp[3000:], axis=1)
    far_pairs = rng.permutation(3000)
    apart = np.linalg.norm(base - base[far_pairs], axis=1) > 2.0
    far = np.linalg.norm(disp[:3000] - disp[:3000][far_pairs], axis=1)[apart]
    assert np.median(close) < 0.1 * np.median(far), (np.median(close), np.median(far))
    two = ElasticDistortion(granularity_magnitude=[(0.2, 0.05), (0.8, 0.2)], p=1.0, seed=1)
    assert np.abs(two({"coord": coord})["coord"] - coord).max() <= 0.25 + 1e-5


def test_elastic_distortion_refuses_a_huge_lattice() -> None:
    big = {"coord": np.array([[0, 0, 0], [200, 200, 20]], dtype=np.float32)}
    with pytest.raises(ValueError, match="granularity 0.2 m.*SphereCrop"):
        ElasticDistortion(p=1.0, seed=0)(big)
    with pytest.raises(ValueError, match="granularity"):
        ElasticDistortion(granularity_magnitude=[(0.0, 1.0)])


def test_chromatic_transforms_keep_colours_in_range() -> None:
    s = make_sample()
    s["color"][:, 2] = 0.5  # a constant channel
    full = ChromaticAutoContrast(p=1.0, blend_factor=1.0)(s)["color"]
    np.testing.assert_allclose(full[:, :2].min(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(full[:, :2].max(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(full[:, 2], 0.5)  # constant channels are left alone
    for seed in range(5):
        for t in (ChromaticAutoContrast(p=1.0, seed=seed), ChromaticTranslation(p=1.0, seed=seed)):
            c = t(s)["color"]
            assert c.min() >= 0.0 and c.max() <= 1.0
    shifted = ChromaticTranslation(p=1.0, ratio=0.05, seed=0)(s)["color"] - s["color"]
    np.testing.assert_allclose(shifted, np.broadcast_to(shifted[0], shifted.shape), atol=1e-6)
    assert np.abs(shifted[0]).max() <= 0.05 + 1e-6
    bytes_ = dict(s, color=s["color"] * 255)
    with pytest.raises(ValueError, match=r"color must be in \[0, 1\]"):
        ChromaticTranslation(p=1.0)(bytes_)
    no_color = {"coord": s["coord"]}
    assert ChromaticAutoContrast(p=1.0)(no_color) == no_color


def test_dropout_ratio_and_probability() -> None:
    s = make_sample(10_000)
    out = RandomDropout(ratio=0.2, p=1.0, seed=0)(s)
    assert len(out["coord"]) == 8000
    never = RandomDropout(ratio=0.2, p=0.0)(s)
    assert never is not s and never["coord"] is s["coord"]
    sizes = [len(RandomDropout(ratio=0.5, p=0.5, seed=k)(s)["coord"]) for k in range(40)]
    assert 8 <= sum(x == 5000 for x in sizes) <= 32  # applied about half the time
    with pytest.raises(ValueError, match="ratio"):
        RandomDropout(ratio=1.0)


@pytest.mark.parametrize("mode", ["random", "center"])
def test_sphere_crop_keeps_the_nearest_points(mode: str) -> None:
    s = make_sample(3000)
    out = SphereCrop(max_points=500, mode=mode, seed=0)(s)
    assert len(out["coord"]) == 500
    kept = np.zeros(3000, dtype=bool)
    kept[out["index"]] = True
    c = s["coord"].astype(np.float64)
    # "center": the middle of the bounding box; "random": some point, so try every kept one
    centres = ((c.min(0) + c.max(0)) / 2)[None] if mode == "center" else c[kept]
    d = np.linalg.norm(c[None] - centres[:, None], axis=2)  # (centres, N)
    # the kept points are exactly the nearest ones to (one of) the centre(s)
    assert np.any(d[:, kept].max(1) <= d[:, ~kept].min(1) + 1e-5)
    small = make_sample(500)
    assert SphereCrop(max_points=1000)(small)["coord"] is small["coord"]
    with pytest.raises(ValueError, match="mode"):
        SphereCrop(mode="box")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["random", "center"])
def test_box_crop_keeps_exactly_the_points_in_the_box(mode: str) -> None:
    s = make_sample(3000)
    c = s["coord"].astype(np.float64)
    size = (0.5 * np.ptp(c[:, 0]), 0.5 * np.ptp(c[:, 1]), None)
    out = BoxCrop(size=size, mode=mode, seed=3)(s)
    kept = np.zeros(3000, dtype=bool)
    kept[out["index"]] = True
    assert 0 < kept.sum() < 3000
    half = np.array([size[0] / 2, size[1] / 2, np.inf])
    centres = ((c.min(0) + c.max(0)) / 2)[None] if mode == "center" else c[kept]
    inside = np.all(np.abs(c[None] - centres[:, None]) <= half, axis=2)  # (centres, N)
    # some candidate centre's box holds exactly the kept points (z is never cut)
    assert np.any(np.all(inside == kept[None], axis=1))
    for key in PER_POINT:
        np.testing.assert_array_equal(out[key], s[key][out["index"]])
    # a cloud that fits in the box passes unchanged
    assert BoxCrop(size=(1e3, 1e3, 1e3))(s)["coord"] is s["coord"]
    with pytest.raises(ValueError, match="positive"):
        BoxCrop(size=(1.0, 0.0, None))
    with pytest.raises(ValueError, match="3 extents"):
        BoxCrop(size=(1.0, 1.0))


def test_take_points_and_a_lidar_pipeline() -> None:
    s = make_sample(100)
    out = take_points(s, np.array([5, 2]))
    assert out["index"].tolist() == [5, 2] and out["offset"] is s["offset"]
    pipe = Compose(
        [
            RandomDropout(ratio=0.1, p=1.0, seed=0),
            SphereCrop(max_points=3000, seed=0),
            RandomRotate(max_tilt=0.02, seed=0),
            RandomTranslate(seed=0),
            ElasticDistortion(p=1.0, seed=0),
            Voxelize(voxel_size=0.1, feat_keys=("coord", "strength"), mode="train", seed=0),
        ]
    )
    v = pipe(make_sample())
    assert v["feat"].shape == (len(v["grid_coord"]), 4) and len(v["segment"]) == len(v["feat"])
