import numpy as np
import pytest
import torch

from pointseg.data import voxelize as vox_module
from pointseg.data.voxelize import Voxelized, voxelize


def random_cloud(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    coord = rng.uniform(-2.0, 3.0, (n, 3)).astype(np.float32)
    feat = rng.normal(size=(n, 4)).astype(np.float32)
    return coord, feat


def test_inverse_reconstructs_points_and_counts_sum() -> None:
    coord, feat = random_cloud()
    vs = 0.25
    vox = voxelize(coord, feat, voxel_size=vs)
    assert vox.grid_coord.dtype == np.int32 and vox.inverse.dtype == np.int64
    assert vox.counts.sum() == len(coord)
    assert (vox.grid_coord >= 0).all()
    # unique voxels
    assert len(np.unique(vox.grid_coord, axis=0)) == len(vox.grid_coord)
    # every point lies inside the cell its inverse points to
    cell_min = vox.grid_coord[vox.inverse] * vs + vox.origin
    assert np.all(coord >= cell_min - 1e-5) and np.all(coord < cell_min + vs + 1e-5)
    # counts agree with the inverse map
    np.testing.assert_array_equal(np.bincount(vox.inverse, minlength=len(vox.counts)), vox.counts)


def test_means_are_exact() -> None:
    coord, feat = random_cloud(2000, seed=1)
    vox = voxelize(coord, feat, voxel_size=0.5)
    expected = np.zeros((len(vox.counts), feat.shape[1]))
    np.add.at(expected, vox.inverse, feat.astype(np.float64))
    expected /= vox.counts[:, None]
    np.testing.assert_allclose(vox.features, expected, rtol=1e-6, atol=1e-6)


def test_known_small_example() -> None:
    coord = np.array([[0.0, 0, 0], [0.05, 0.02, 0.01], [1.0, 0, 0], [0.09, 0.0, 0.0]])
    feat = np.array([[1.0], [3.0], [10.0], [5.0]])
    vox = voxelize(coord, feat, voxel_size=0.1)
    np.testing.assert_array_equal(vox.grid_coord, [[0, 0, 0], [10, 0, 0]])
    np.testing.assert_array_equal(vox.inverse, [0, 0, 1, 0])
    np.testing.assert_array_equal(vox.counts, [3, 1])
    np.testing.assert_allclose(vox.features[:, 0], [3.0, 10.0])


def test_train_mode_keeps_one_random_point_per_voxel_deterministically() -> None:
    coord, feat = random_cloud(4000, seed=2)
    a = voxelize(coord, feat, voxel_size=0.5, mode="train", seed=7)
    b = voxelize(coord, feat, voxel_size=0.5, mode="train", seed=7)
    c = voxelize(coord, feat, voxel_size=0.5, mode="train", seed=8)
    np.testing.assert_array_equal(a.index, b.index)
    assert not np.array_equal(a.index, c.index)
    # the kept point belongs to its voxel, and its features are carried unchanged
    np.testing.assert_array_equal(a.inverse[a.index], np.arange(len(a.index)))
    np.testing.assert_array_equal(a.features, feat[a.index])
    # over many draws every point of a voxel can be chosen (not always the first)
    firsts = voxelize(coord, feat, voxel_size=0.5).index
    assert (a.index != firsts).mean() > 0.5


def test_deterministic_and_dtype_independent() -> None:
    coord, feat = random_cloud(3000, seed=3)
    a = voxelize(coord, feat, voxel_size=0.2)
    b = voxelize(coord.astype(np.float64), feat, voxel_size=0.2)
    np.testing.assert_array_equal(a.grid_coord, b.grid_coord)
    np.testing.assert_array_equal(a.inverse, b.inverse)


def test_large_offsets_keep_precision() -> None:
    # georeferenced coordinates: float64 offsets of 1e6 m must not merge 1 cm voxels
    base = np.array([5.0e6, 4.0e6, 100.0])
    local = np.array([[0.0, 0, 0], [0.011, 0, 0], [0.022, 0, 0]])
    vox = voxelize(base + local, voxel_size=0.01)
    assert len(vox.counts) == 3


def test_1d_features_and_no_features() -> None:
    coord, _ = random_cloud(100)
    v = voxelize(coord, np.arange(100, dtype=np.float32), voxel_size=1.0)
    assert v.features.ndim == 1 and len(v.features) == len(v.counts)
    assert voxelize(coord, voxel_size=1.0).features is None


@pytest.mark.parametrize(
    ("coord", "feat", "match"),
    [
        (np.zeros((0, 3), np.float32), None, "empty"),
        (np.array([[0.0, np.nan, 0.0], [1, 1, 1]]), None, "NaN/Inf.*row 0"),
        (np.array([[0.0, 0.0, 0.0], [np.inf, 1, 1]]), None, "NaN/Inf.*row 1"),
        (np.zeros((5, 3), np.float32), np.zeros((4, 2)), "4 rows but coord has 5"),
        (np.zeros((5, 2), np.float32), None, r"shape \(N, 3\)"),
        (np.zeros((5, 3), np.int32), None, "float32 or float64"),
    ],
)
def test_bad_input_raises(coord: np.ndarray, feat: np.ndarray | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        voxelize(coord, feat, voxel_size=0.1)


def test_bad_voxel_size_and_mode() -> None:
    coord, _ = random_cloud(10)
    with pytest.raises(ValueError, match="voxel_size"):
        voxelize(coord, voxel_size=0.0)
    with pytest.raises(ValueError, match="mode"):
        voxelize(coord, voxel_size=0.1, mode="max")  # type: ignore[arg-type]


def test_huge_extent_falls_back_without_overflow() -> None:
    # 1 mm voxels over ~2000 km: the ravelled key would overflow int64
    coord = np.array([[0.0, 0.0, 0.0], [2.0e6, 2.0e6, 2.0e6], [0.0005, 0.0, 0.0], [1.0, 1.0, 1.0]])
    vox = voxelize(coord, np.arange(4.0)[:, None], voxel_size=0.001)
    np.testing.assert_array_equal(vox.inverse, [0, 2, 0, 1])
    np.testing.assert_array_equal(vox.counts, [2, 1, 1])
    np.testing.assert_allclose(vox.features[:, 0], [1.0, 3.0, 1.0])


def test_table_and_sort_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compact grids use a lookup table, sparse ones a sort: both give the same voxelization."""
    import pointseg.data.voxelize as vox

    coord, feat = random_cloud(20000, seed=5)
    coord[:50] += 4.0  # a detached cluster: many empty cells in between
    calls = []
    dense = vox._unique_dense
    monkeypatch.setattr(vox, "_unique_dense", lambda *a: calls.append(1) or dense(*a))
    table = voxelize(coord, feat, voxel_size=0.1)
    assert calls == [1]
    monkeypatch.setattr(vox, "_DENSE_MAX_CELLS", 0)  # force the sort path
    sort = voxelize(coord, feat, voxel_size=0.1)
    assert calls == [1]
    for field in ("grid_coord", "inverse", "counts", "index"):
        np.testing.assert_array_equal(getattr(table, field), getattr(sort, field), err_msg=field)
    np.testing.assert_allclose(table.features, sort.features, rtol=1e-6, atol=1e-6)
    # mean mode keeps the first point (in input order) of every voxel
    first = np.full(len(table.counts), len(coord))
    np.minimum.at(first, table.inverse, np.arange(len(coord)))
    np.testing.assert_array_equal(table.index, first)
    # voxels come in lexicographic (x, y, z) order
    g = table.grid_coord.astype(np.int64)
    key = (g[:, 0] * 10**6 + g[:, 1]) * 10**6 + g[:, 2]
    assert np.all(np.diff(key) > 0)


def test_train_mode_draw_is_uniform_within_a_voxel() -> None:
    # 3 points in one voxel: each is kept about a third of the time over many seeds
    coord = np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3]], dtype=np.float32)
    picks = [
        int(voxelize(coord, voxel_size=1.0, mode="train", seed=s).index[0]) for s in range(600)
    ]
    freq = np.bincount(picks, minlength=3) / 600
    assert np.all(np.abs(freq - 1 / 3) < 0.08), freq


@pytest.mark.parametrize("mode", ["mean", "train"])
def test_threaded_passes_equal_one_thread(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # keys, table marks, rank look-ups, first points, means and unravel run in parts on threads
    # for large clouds: force them on a small one, with an odd number of parts
    rng = np.random.default_rng(3)
    coord = rng.uniform(0, 4, (50_001, 3)).astype(np.float32)
    feat = rng.uniform(0, 1, (50_001, 4)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = voxelize(coord, feat, voxel_size=0.1, mode=mode)
        torch.set_num_threads(3)
        monkeypatch.setattr(vox_module, "_THREADED_POINTS", 1)
        got = voxelize(coord, feat, voxel_size=0.1, mode=mode)
    finally:
        torch.set_num_threads(before)
    assert 1 < len(got.counts) < len(coord)  # shared voxels: the parts must agree on them
    for name in Voxelized._fields:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
