"""How pointseg's sparse convs run: one frozen ``SparseConfig``, fixed when a tensor is made.

Like torchsparse's ``conv_config`` and timm's ``set_fused_attn`` read at build: the settings are
one small frozen dataclass, and there is one way to switch them:

- the process default: ``get_config()``, changed by ``set_config(**fields)`` or, for a block,
  ``with use_config(**fields)``. The environment variable ``POINTSEG_SPARSE_BACKEND`` sets the
  starting backend. ``set_backend``/``use_backend`` and ``set_fused_depthwise``/
  ``use_fused_depthwise`` are the same calls for one field;
- the tensor's record: ``tensor.sparse_tensor`` stores the default in force when it makes a
  tensor, and every conv on that tensor and on the tensors derived from it runs on that record
  (``tensor.config_of``), read once. Switching the default during a forward changes nothing
  for the tensors already made;
- a per-module override: a conv module's ``sparse_config`` (``conv.SparseConvNd``) runs that
  conv, and only it, on another configuration.

Fields:

- ``backend``: ``"pointseg"`` (default): on the CPU, pointseg's rulebooks (``rulebook``) and
  its gather-GEMM-scatter loop (``cpu_conv``); on CUDA, spconv's implicit-GEMM ops called
  directly, and the 5x5x5 stem as one gather and one GEMM (``gather_conv``). ``"spconv"``:
  spconv's own path as shipped on every device (its rulebook builder, its CPU loop and
  multi-threaded scatter-add, its CUDA algorithm choice). The benchmark baseline. On the CPU
  with more than one thread its scatter-add races (rows added to the wrong outputs), so its
  results are only exact at one thread.
- ``fused_depthwise``: depthwise CPU forwards run one compiled gather-and-reduce loop
  (``grouped.fused_depthwise``) instead of the offset loop; off by default.

Layers sharing an ``indice_key`` must run on the same backend (their rulebooks have different
formats): an override that differs from the tensor's record needs keys of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator
from typing import Any, Literal

Backend = Literal["pointseg", "spconv"]
BACKENDS: tuple[str, ...] = ("pointseg", "spconv")
ENV_BACKEND = "POINTSEG_SPARSE_BACKEND"


def _checked(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown sparse-conv backend {name!r}; choose one of {BACKENDS}")
    return name  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class SparseConfig:
    """The settings a sparse conv runs on (module doc). Frozen: ``replace`` makes a new one."""

    backend: Backend = "pointseg"
    fused_depthwise: bool = False

    def __post_init__(self) -> None:
        _checked(self.backend)
        if not isinstance(self.fused_depthwise, bool):
            raise TypeError(f"fused_depthwise must be a bool, got {self.fused_depthwise!r}")

    def replace(self, **changes: Any) -> SparseConfig:
        """This configuration with ``changes`` (field=value) applied."""
        return dataclasses.replace(self, **changes)


_default = SparseConfig(backend=_checked(os.environ.get(ENV_BACKEND, "pointseg")))
_lock = threading.Lock()


def get_config() -> SparseConfig:
    """The process default: what the sparse tensors made from now on record."""
    return _default


def _apply(changes: dict[str, Any]) -> tuple[dict[str, Any], SparseConfig]:
    """(the changed fields' old values, the new default), in one step."""
    global _default
    with _lock:
        config = _default.replace(**changes)
        previous = {name: getattr(_default, name) for name in changes}
        _default = config
        return previous, config


def set_config(**changes: Any) -> SparseConfig:
    """Change fields of the process default (``backend=``, ``fused_depthwise=``); returns it.

    Tensors made before keep the configuration they recorded.
    """
    return _apply(changes)[1]


@contextlib.contextmanager
def use_config(**changes: Any) -> Iterator[SparseConfig]:
    """``set_config(**changes)`` for the block; afterwards those fields get their old values."""
    previous, config = _apply(changes)
    try:
        yield config
    finally:
        _apply(previous)


def get_backend() -> Backend:
    """The backend of the process default (``get_config().backend``)."""
    return get_config().backend


def set_backend(name: str) -> None:
    """``set_config(backend=name)``: "pointseg" or "spconv" for the tensors made from now on."""
    set_config(backend=_checked(name))


def use_backend(name: str) -> contextlib.AbstractContextManager[SparseConfig]:
    """``use_config(backend=name)``: ``set_backend(name)`` for the block, then the old one."""
    return use_config(backend=_checked(name))


def set_fused_depthwise(enabled: bool) -> None:
    """``set_config(fused_depthwise=...)``: whether depthwise CPU forwards run the compiled
    gather-and-reduce loop (``grouped``)."""
    set_config(fused_depthwise=bool(enabled))


def use_fused_depthwise(enabled: bool = True) -> contextlib.AbstractContextManager[SparseConfig]:
    """``use_config(fused_depthwise=enabled)``: ``set_fused_depthwise`` for the block."""
    return use_config(fused_depthwise=bool(enabled))
