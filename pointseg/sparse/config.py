"""Which implementation runs pointseg's sparse convs: a setting read when a conv is called.

Like timm's ``set_fused_attn``: a plain module-level setting that ``pointseg.sparse.functional``
reads on every call, never a patch of another library.

- ``"pointseg"`` (default): on the CPU, pointseg's rulebooks (``rulebook``) and its
  gather-GEMM-scatter loop (``cpu_conv``); on CUDA, spconv's implicit-GEMM ops called directly,
  and the 5x5x5 stem as one gather and one GEMM (``gather_conv``).
- ``"spconv"``: spconv's own path as shipped on every device (its rulebook builder, its CPU loop
  and multi-threaded scatter-add, its CUDA algorithm choice). The benchmark baseline. On the CPU
  with more than one thread its scatter-add races (rows added to the wrong outputs), so its
  results are only exact at one thread.

The environment variable ``POINTSEG_SPARSE_BACKEND`` sets the starting value.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

Backend = Literal["pointseg", "spconv"]
BACKENDS: tuple[str, ...] = ("pointseg", "spconv")


def _checked(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown sparse-conv backend {name!r}; choose one of {BACKENDS}")
    return name  # type: ignore[return-value]


_backend: Backend = _checked(os.environ.get("POINTSEG_SPARSE_BACKEND", "pointseg"))


def get_backend() -> Backend:
    """The backend sparse convs use when they are next called."""
    return _backend


def set_backend(name: str) -> None:
    """Use ``name`` ("pointseg" or "spconv") for every sparse conv called from now on.

    Layers sharing an ``indice_key`` within one forward must see the same backend (their
    rulebooks have different formats): switch between forwards, not inside one.
    """
    global _backend
    _backend = _checked(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``set_backend(name)`` for the block, then back to the previous backend."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
