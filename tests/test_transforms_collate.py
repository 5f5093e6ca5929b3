import numpy as np
import pytest
import torch

from pointseg.data.collate import collate, split_points
from pointseg.data.transforms import (
    AddHeight,
    ChromaticJitter,
    Compose,
    RandomFlip,
    RandomJitter,
    RandomRotateZ,
    RandomScale,
    Voxelize,
)


def make_sample(n: int = 3000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "coord": rng.uniform(0, 4, (n, 3)).astype(np.float32),
        "color": rng.uniform(0, 1, (n, 3)).astype(np.float32),
        "segment": rng.integers(-1, 5, n).astype(np.int64),
    }


def test_geometric_transforms_do_not_mutate_and_preserve_structure() -> None:
    s = make_sample()
    before = {k: v.copy() for k, v in s.items()}
    out = Compose(
        [RandomRotateZ(seed=1), RandomFlip(p=1.0, seed=2), RandomScale(seed=3), RandomJitter()]
    )(s)
    for k in before:
        np.testing.assert_array_equal(s[k], before[k])
    assert out["coord"].dtype == np.float32 and out["coord"].shape == s["coord"].shape
    np.testing.assert_array_equal(out["segment"], s["segment"])


def test_rotation_preserves_distances_and_z() -> None:
    s = make_sample(100)
    out = RandomRotateZ(seed=0)(s)
    np.testing.assert_allclose(out["coord"][:, 2], s["coord"][:, 2])
    d0 = np.linalg.norm(s["coord"][:, :2], axis=1)
    d1 = np.linalg.norm(out["coord"][:, :2], axis=1)
    np.testing.assert_allclose(d0, d1, rtol=1e-5)
    assert not np.allclose(out["coord"], s["coord"])


def test_colour_jitter_stays_in_range_and_height_starts_at_zero() -> None:
    s = make_sample()
    out = AddHeight()(ChromaticJitter(std=0.5, p=1.0, seed=0)(s))
    assert out["color"].min() >= 0 and out["color"].max() <= 1
    assert out["height"].shape == (len(s["coord"]), 1) and out["height"].min() == 0


def test_voxelize_modes() -> None:
    s = make_sample()
    val = Voxelize(voxel_size=0.5, feat_keys=("color",), mode="mean")(s)
    assert len(val["inverse"]) == len(s["coord"])  # every point kept
    np.testing.assert_array_equal(val["segment"], s["segment"])
    assert val["feat"].shape == (len(val["grid_coord"]), 3)
    train = Voxelize(voxel_size=0.5, feat_keys=("color",), mode="train", seed=0)(s)
    m = len(train["grid_coord"])
    np.testing.assert_array_equal(train["inverse"], np.arange(m))
    assert len(train["segment"]) == m


def test_missing_feature_key_names_it() -> None:
    with pytest.raises(KeyError, match="normal"):
        Voxelize(voxel_size=0.5, feat_keys=("color", "normal"))(make_sample())


def test_worker_rngs_differ_by_seed() -> None:
    a = RandomRotateZ(seed=1)(make_sample())["coord"]
    b = RandomRotateZ(seed=2)(make_sample())["coord"]
    c = RandomRotateZ(seed=1)(make_sample())["coord"]
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)


def test_collate_offsets_inverse_and_batch_index() -> None:
    vox = Voxelize(voxel_size=0.5, feat_keys=("color",))
    samples = [vox(make_sample(n, seed=i)) for i, n in enumerate([500, 800, 300])]
    batch = collate(samples)
    m = [len(s["grid_coord"]) for s in samples]
    assert batch["indices"].dtype == torch.int32 and batch["indices"].shape == (sum(m), 4)
    assert batch["batch_size"] == 3
    assert batch["indices"][:, 0].tolist() == [0] * m[0] + [1] * m[1] + [2] * m[2]
    # logits[inverse] of the batch equals each scene's own logits[inverse]
    fake_logits = torch.arange(sum(m))
    per_scene = split_points(fake_logits[batch["inverse"]], batch["point_offset"])
    start = 0
    for s, got, mi in zip(samples, per_scene, m, strict=True):
        expect = torch.from_numpy(s["inverse"]) + start
        assert torch.equal(got, expect)
        start += mi
    assert torch.equal(
        batch["segment"], torch.from_numpy(np.concatenate([s["segment"] for s in samples]))
    )


def test_collate_empty_raises() -> None:
    with pytest.raises(ValueError):
        collate([])
