"""A plain (non-editable) install works from any folder: the wheel carries the Hydra configs.

The wheel test builds pointseg from a copy of the checkout, installs it with ``--no-deps`` into
a fresh venv that borrows this environment's dependencies (a ``.pth`` line; the editable
pointseg of this environment is not picked up, since ``.pth`` files are not read in a folder a
``.pth`` line adds), and runs the console scripts from an empty folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

from tests.conftest import TINY, TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set(find_packages(str(ROOT), include=["pointseg", "pointseg.*"]))
    assert found - listed == set(), "add these packages to [tool.setuptools] packages"
    assert "pointseg.conf" in listed


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(bin folder of a venv holding the built wheel, environment to run it in)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pointseg", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(src)]
    done = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp.glob("pointseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (ROOT / "conf").rglob("*.yaml"):
        assert f"pointseg/conf/{yaml.relative_to(ROOT / 'conf')}" in names

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q"]
    done = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "POINTSEG_ROOT")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv / "bin", env


@pytest.mark.slow
def test_installed_scripts_run_from_any_folder(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import pointseg; print(pointseg.__file__)"],
                 tmp_path, env)  # fmt: skip
    assert str(bin_dir.parent) in where.stdout, where.stdout + where.stderr

    job = _run([str(bin_dir / "pointseg-train"), "--cfg", "job"], tmp_path, env)
    assert job.returncode == 0, job.stderr
    assert "task_name: train" in job.stdout

    helped = _run([str(bin_dir / "pointseg-predict"), "--help"], tmp_path, env)
    assert helped.returncode == 0, helped.stderr
    assert "usage: pointseg-predict" in helped.stdout and "input" in helped.stdout
    assert "data:" not in helped.stdout and "Traceback" not in helped.stderr

    missing = _run([str(bin_dir / "pointseg-eval")], tmp_path, env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "ckpt_path" in missing.stderr
    assert not (tmp_path / "logs").exists()  # --help, --cfg and the error wrote nothing

    small = ["debug=fdr", "logger=none", *TINY, *TINY_MODEL]
    fit = _run([str(bin_dir / "pointseg-train"), *small], tmp_path, env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "run_dir:" in fit.stdout
    for notice in ("is_fx_tracing", "litlogger"):
        assert notice not in fit.stdout + fit.stderr
    (log,) = (tmp_path / "logs" / "train" / "runs").glob("*/train.log")
    text = log.read_text()
    assert "parameters" in text and "run_dir:" in text and "GPU available" in text
