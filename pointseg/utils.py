"""Small helpers shared by the entry points: atomic writes, summaries, hints."""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def reuse_freed_memory() -> bool:
    """Keep large freed blocks in glibc's heap for reuse instead of unmapping them.

    glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` and unmaps it on free, so each large activation or gradient tensor of a big scene
    page-faults its memory back in, on every step. Measured on CPU training steps of
    spunet_small: 16 rooms at 5 cm (922 k voxels) 16.3 -> 9.4 s and 15.5 -> 11.0 s; 8 rooms
    6.8-7.2 -> 5.2-5.3 s; batches of 2, 5 and 9 rooms in turn 56.8 -> 42.6 s for 12 steps;
    1 and 4 rooms unchanged. The cost: the process keeps its heap instead of returning it to
    the system, like torch's CUDA caching allocator (peak RSS 2.53 -> 3.08 GB in the mixed
    run, flat after a few steps). pointseg-train, -eval and -prune call this;
    ``POINTSEG_REUSE_MEMORY=0`` turns it off. Returns whether it was applied (glibc only).
    """
    if os.environ.get("POINTSEG_REUSE_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameter numbers
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (``os.umask`` alone
    can only read it by setting it, which briefly affects files other threads create)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: str | Path, *, directory: bool = False) -> None:
    """Give a temporary file (0600) or folder (0700) from ``tempfile`` the permissions a plain
    ``open``/``mkdir`` would have (0666/0777 less the umask), before it is renamed into place."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, renamed onto ``path`` (with the permissions a
    plain ``open`` would give) if the block succeeds and removed if it fails: pointseg's one
    way of writing a file, so a crash never leaves half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write to a temporary file in the same folder, then rename: never a half file."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _conf_dir() -> Path:
    """The Hydra config folder: ``pointseg/conf`` in an installed wheel (pyproject.toml maps
    the top-level ``conf/`` there), else ``conf/`` next to the package (checkout, editable)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(
        f"pointseg's configs are missing: neither {here / 'conf'} nor {here.parent / 'conf'} "
        "holds train.yaml; reinstall pointseg (pip install <checkout>) or run it from a checkout"
    )


# the entry points' ``@hydra.main(config_path=...)``; a user's own config folder is added
# with ``--config-dir DIR`` (its files override or extend these, see README "Your own configs")
CONF_DIR = _conf_dir()


def auto_precision(accelerator: str = "auto") -> str:
    """Lightning precision for ``precision: ${auto_precision:${.accelerator}}``: mixed fp16 (AMP)
    when the run will use a CUDA GPU, else full fp32 (CPU AMP brings nothing to spconv)."""
    import torch

    gpu = str(accelerator).lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "16-mixed" if gpu else "32-true"


def s3dis_areas_except(held_out: Any) -> list[str]:
    """The S3DIS areas not in ``held_out`` (a list such as ``[Area_5]``): the training areas of
    one fold of the 6-fold cross-validation, so no area is on both sides."""
    names = [str(a) for a in (held_out if not isinstance(held_out, str) else [held_out])]
    valid = [f"Area_{i}" for i in range(1, 7)]
    bad = [a for a in names if a not in valid]
    if bad or not names:
        raise ValueError(
            f"data.val_dataset.splits must name S3DIS areas ({', '.join(valid)}), got {names}"
        )
    return [a for a in valid if a not in names]


# columns of each per-point feature; others have 1 (``hag`` has one per radius: the LAS
# config gives its width in ``data.feature_widths``)
FEATURE_WIDTHS = {"coord": 3, "color": 3, "normal": 3, "returns": 2}


def feature_width(feat_keys: Sequence[str], widths: Mapping[str, int] | None = None) -> int:
    """Input channels of a model fed ``feat_keys``, for ``in_channels:
    ${feature_width:${data.feat_keys},${data.feature_widths}}``: the sum of their widths."""
    table = {**FEATURE_WIDTHS, **(widths or {})}
    return sum(int(table.get(k, 1)) for k in feat_keys)


# numbers derived from others in the configs (``num_classes: ${len:${data.class_names}}``)
_RESOLVERS = (
    ("auto_precision", auto_precision),
    ("s3dis_areas_except", s3dis_areas_except),
    ("len", lambda items: len(items)),
    ("feature_width", lambda keys, widths=None: feature_width(list(keys), widths)),
)
for _name, _fn in _RESOLVERS:
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
