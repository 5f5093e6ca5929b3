from pathlib import Path

import numpy as np
import pytest

from pointseg.data.datasets.scene_folder import SceneFolder
from pointseg.data.scenes import read_scene, remove_partial, write_scene
from pointseg.prepare.common import SceneJob, run_jobs


def arrays(n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "coord": rng.normal(size=(n, 3)).astype(np.float32),
        "color": rng.uniform(size=(n, 3)).astype(np.float32),
        "segment": rng.integers(0, 3, n),
    }


def test_write_read_roundtrip_is_memory_mapped(tmp_path: Path) -> None:
    a = arrays()
    write_scene(tmp_path / "train" / "s0", a, {"source": "x"})
    b = read_scene(tmp_path / "train" / "s0")
    assert set(b) == set(a)
    assert isinstance(b["coord"], np.memmap)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not list((tmp_path / "train").glob(".tmp-*"))


def test_write_refuses_mismatched_lengths_and_leaves_nothing(tmp_path: Path) -> None:
    a = arrays()
    a["segment"] = a["segment"][:-1]
    with pytest.raises(ValueError, match="'segment' has 9 rows"):
        write_scene(tmp_path / "s0", a)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_scene(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real_save = np.save

    def failing_save(path, arr):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_save(path, arr)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        write_scene(tmp_path / "s0", arrays())
    assert not (tmp_path / "s0").exists() and not list(tmp_path.glob(".tmp-*"))


def _convert(job: SceneJob) -> None:
    write_scene(job.output, arrays(seed=job.options["seed"]))


def test_run_jobs_skips_finished_and_cleans_partials(tmp_path: Path) -> None:
    jobs = [SceneJob(f"s{i}", tmp_path / "train" / f"s{i}", options={"seed": i}) for i in range(3)]
    (tmp_path / "train" / ".tmp-s1-abc").mkdir(parents=True)
    assert run_jobs(jobs, _convert, dst=tmp_path) == {"prepared": 3, "skipped": 0, "total": 3}
    assert not list((tmp_path / "train").glob(".tmp-*"))
    assert run_jobs(jobs, _convert, dst=tmp_path, workers=2)["skipped"] == 3
    assert remove_partial(tmp_path) == 0


def test_run_jobs_in_parallel(tmp_path: Path) -> None:
    jobs = [SceneJob(f"s{i}", tmp_path / "a" / f"s{i}", options={"seed": i}) for i in range(4)]
    assert run_jobs(jobs, _convert, dst=tmp_path, workers=2)["prepared"] == 4
    ds = SceneFolder(tmp_path, "a")
    assert len(ds) == 4 and ds.scene_name(1) == "a/s1"
    np.testing.assert_array_equal(ds[2]["segment"], arrays(seed=2)["segment"])


def test_scene_folder_errors_give_the_prepare_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pointseg-prepare s3dis"):
        SceneFolder(tmp_path / "missing", "Area_1", prepare_hint="pointseg-prepare s3dis ...")
    (tmp_path / "Area_1").mkdir()
    with pytest.raises(FileNotFoundError, match="Area_5.*found: \\['Area_1'\\]"):
        SceneFolder(tmp_path, ["Area_5"])
    write_scene(tmp_path / "Area_1" / "office_1", arrays())
    ds = SceneFolder(tmp_path, "Area_1", keys=("coord", "normal"))
    with pytest.raises(FileNotFoundError, match="normal.npy"):
        ds[0]
    with pytest.raises(IndexError):
        SceneFolder(tmp_path, "Area_1")[5]


def test_written_files_and_scenes_get_the_usual_permissions(tmp_path) -> None:
    """Atomic writers go through tempfile (0600 files, 0700 folders): what lands in place must
    have the permissions of a plain open()/mkdir() instead, so shared datasets stay readable."""
    import os

    import numpy as np

    from pointseg.data.scenes import write_scene
    from pointseg.io import write_npy
    from pointseg.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        text = atomic_write_text(tmp_path / "a.json", "{}")
        arr = write_npy(tmp_path / "b.npy", np.zeros(3))
        coord = np.zeros((4, 3), dtype=np.float32)
        scene = write_scene(tmp_path / "s" / "scene_0", {"coord": coord})
    finally:
        os.umask(old)
    assert text.stat().st_mode & 0o777 == 0o644
    assert arr.stat().st_mode & 0o777 == 0o644
    assert scene.stat().st_mode & 0o777 == 0o755
