"""The one place that patches and guards spconv 2.3.x for pointseg.

Importing this module patches spconv (idempotently); ``blocks`` and ``sparse_unet`` import it
first. Traps handled here (measured with spconv 2.3.8: on the CPU with torch 2.13, on CUDA with
spconv-cu126 and torch 2.11 on an H100):

- Backward calls ``torch.cuda.current_stream()`` unconditionally and asserts on a CPU-only torch:
  the stream getter returns 0 without CUDA.
- The CPU scatter-add behind every sparse conv with kernel > 1 (forward, and input gradients)
  shares its row pointers between OpenMP threads: with more than one thread it silently adds rows
  to the wrong outputs. spconv's OpenMP calls resolve to torch's runtime, so the kernel runs with
  torch's thread count set to 1 for the call (restored after). That is exact, and 9 % faster per
  training step than a ``Tensor.index_add_`` replacement (the kernel is memory-bound).
- The CPU sparse-conv path itself is pointseg's, on spconv's kernels: rulebooks from a lookup
  table (``rulebook``, 4-5x faster than spconv's single-threaded hash on the largest level) and
  the gather-GEMM-scatter loop of ``cpu_conv`` (multi-threaded gathers, no input gradient for
  the data). ``spconv_as_shipped()`` switches all of it back, for benchmarks.
- Indices that are not C-contiguous are read as if they were (``nonzero().int()`` is column-major):
  silently wrong rulebooks. ``sparse_tensor`` makes them contiguous.
- A conv's algorithm is fixed when it is built, and spconv's implicit GEMM (its CUDA default) is
  CUDA-only: a model built on a GPU machine failed on CPU tensors ("implicit gemm only support
  cuda"). Each conv now runs Native on CPU tensors and its built algorithm on CUDA tensors.
- Under CUDA autocast, spconv's autograd functions cast a conv's inputs to fp16, but an eval-mode
  conv (Lightning's validation, prediction) calls the implicit-GEMM op directly with fp16
  features and fp32 weights, and its kernel tuner asserts "can't find suitable algorithm". Such
  calls get the same fp16 cast. spconv 2.3.8 has no bf16 conv kernels: under bf16 autocast its
  convs still run in fp16.
- On CUDA, a submanifold conv with few input channels (the 5x5x5 stem) ran as 124 per-offset
  SIMT GEMMs (17 ms backward at 186 k voxels): it runs as one gather and one GEMM
  (``gather_conv``). spconv also asks for the CUDA stream and the compute capability on every
  conv; both come from cheaper lookups here.
- float64 features are refused (the network is float32), as are duplicate voxels (the rulebook
  hash keeps one of them) and a ``spatial_shape`` that vanishes at the coarsest level.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator

import spconv.pytorch as spconv
import torch
from cumm import tensorview as tv
from spconv.core import ConvAlgo
from spconv.core_cc.csrc.sparse import all as _spconv_cc
from spconv.pytorch import cppcore
from spconv.pytorch import ops as spconv_ops
from spconv.pytorch.conv import SparseConvolution
from torch import Tensor, nn

from pointseg.models import cpu_conv, gather_conv, rulebook

_ACT_NONE = tv.gemm.Activation.None_

# spconv's originals, kept so the patch recognises every module that bound them by name.
_ORIGINAL_GET_STREAM = getattr(cppcore.get_current_stream, "_pointseg_original", None)
_ORIGINAL_GET_STREAM = _ORIGINAL_GET_STREAM or cppcore.get_current_stream
_ORIGINAL_OPS = getattr(_spconv_cc.SpconvOps, "_pointseg_original", _spconv_cc.SpconvOps)


_ORIGINAL_GET_ARCH = getattr(cppcore.get_arch, "_pointseg_original", cppcore.get_arch)
# spconv asks for the stream and the GPU's compute capability on every conv; through torch's
# public device helpers each answer costs tens of microseconds, a few ms per training step.
_CUDA = torch.cuda.is_available()
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_DEVICE = getattr(torch._C, "_cuda_getDevice", None)
_ARCHS: dict[int, tuple[int, int]] = {}


def _get_current_stream() -> int:
    """Like spconv's getter, but 0 (the "no stream" value its CPU kernels accept) without CUDA."""
    if not _CUDA:
        return 0
    if _RAW_STREAM is not None and _DEVICE is not None:
        return _RAW_STREAM(_DEVICE())
    return torch.cuda.current_stream().cuda_stream


def _get_arch() -> tuple[int, int]:
    """spconv's ``get_arch`` (compute capability, with its warning for GPUs it has no kernels
    for), asked of torch once per device."""
    device = _DEVICE() if _DEVICE is not None else torch.cuda.current_device()
    arch = _ARCHS.get(device)
    if arch is None:
        arch = _ARCHS[device] = tuple(_ORIGINAL_GET_ARCH())
    return arch


_get_current_stream._pointseg_original = _ORIGINAL_GET_STREAM  # type: ignore[attr-defined]
_get_arch._pointseg_original = _ORIGINAL_GET_ARCH  # type: ignore[attr-defined]


class _SpconvOpsProxy:
    """``SpconvOps`` with a thread-safe ``scatter_add_cpu``; every other op is spconv's own."""

    _pointseg_original = _ORIGINAL_OPS

    def __getattr__(self, name: str):
        return getattr(_ORIGINAL_OPS, name)

    scatter_add_cpu = staticmethod(cpu_conv.scatter_add_tv)  # exact: one thread per call


_OPS_PROXY = _SpconvOpsProxy()


_SHIPPED = False  # True inside spconv_as_shipped(): every CPU op is spconv's own


@contextlib.contextmanager
def spconv_as_shipped() -> Iterator[None]:
    """Inside the block, sparse convs run spconv's CPU path exactly as shipped: its rulebook
    builder, its gather/GEMM/scatter loop and its multi-threaded scatter-add.

    For benchmarks only: that scatter-add races with more than one OpenMP thread (see above), so
    its results are wrong; its speed is the baseline pointseg's CPU path is measured against.
    """
    global _SHIPPED
    previous_flag, previous = _SHIPPED, _SpconvOpsProxy.__dict__["scatter_add_cpu"]
    _SHIPPED = True
    _SpconvOpsProxy.scatter_add_cpu = staticmethod(_ORIGINAL_OPS.scatter_add_cpu)
    try:
        yield
    finally:
        _SHIPPED = previous_flag
        _SpconvOpsProxy.scatter_add_cpu = previous


_ORIGINAL_GET_PAIRS = getattr(
    spconv_ops.get_indice_pairs, "_pointseg_original", spconv_ops.get_indice_pairs
)
_ORIGINAL_CONV = getattr(spconv_ops.indice_conv, "_pointseg_original", spconv_ops.indice_conv)
_ORIGINAL_CONV_BACKWARD = getattr(
    spconv_ops.indice_conv_backward, "_pointseg_original", spconv_ops.indice_conv_backward
)


_PAIRS_SIGNATURE = inspect.signature(_ORIGINAL_GET_PAIRS)


def _get_indice_pairs(*args, **kwargs):
    """spconv's ``get_indice_pairs``, with pointseg's lookup-table builder on the CPU for the
    cases it covers (``rulebook``): submanifold convs with odd kernels and k == stride convs."""
    call = _PAIRS_SIGNATURE.bind(*args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    indices, batch, shape, ksize = a["indices"], a["batch_size"], a["spatial_shape"], a["ksize"]
    plain = (
        not _SHIPPED
        and not indices.is_cuda
        and a["algo"] == ConvAlgo.Native
        and not a["transpose"]
        and a["num_out_act_bound"] < 0
        and all(d == 1 for d in a["dilation"])
    )
    odd = all(k % 2 == 1 for k in ksize)
    if plain and a["subm"] and odd and rulebook.subm_fits(indices, batch, ksize):
        pairs, counts = rulebook.subm_pairs(indices, batch, list(shape), ksize)
        return indices, pairs, counts
    if (
        plain
        and not a["subm"]
        and list(ksize) == list(a["stride"])
        and all(p == 0 for p in a["padding"])
        and all(s % k == 0 for s, k in zip(shape, ksize, strict=True))
    ):
        return rulebook.strided_pairs(indices, batch, list(shape), list(ksize))
    return _ORIGINAL_GET_PAIRS(*args, **kwargs)


def _ours(features: Tensor, filters: Tensor, algo) -> bool:
    return (
        not _SHIPPED
        and not features.is_cuda
        and features.dtype == torch.float32
        and filters.dtype == torch.float32
        and algo == ConvAlgo.Native
    )


def _gathered(features: Tensor, filters: Tensor, subm: bool, inverse: bool) -> bool:
    """Whether a conv runs on ``gather_conv`` (CUDA submanifold convs with few columns)."""
    return (
        not _SHIPPED
        and features.dtype == filters.dtype
        and features.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and gather_conv.usable(features, filters, subm, inverse)
    )


def _indice_conv(
    features,
    filters,
    indice_pairs,
    indice_pair_num,
    num_activate_out,
    inverse=False,
    subm=False,
    algo=ConvAlgo.Native,
    timer=None,
    bias=None,
    act_alpha=0.0,
    act_beta=0.0,
    act_type=None,
    **kwargs,
):
    """spconv's ``indice_conv``; plain float32 CPU convs run ``cpu_conv.conv_forward``, and CUDA
    submanifold convs with few input columns (the 5x5x5 stem) ``gather_conv.forward``."""
    fused = bias is not None or (act_type is not None and act_type != _ACT_NONE)
    if _gathered(features, filters, subm, inverse) and not fused and not kwargs:
        return gather_conv.forward(features, filters, indice_pairs, indice_pair_num)
    if _ours(features, filters, algo) and not fused and not kwargs:
        return cpu_conv.conv_forward(
            features,
            filters,
            indice_pairs,
            indice_pair_num,
            num_activate_out,
            inverse=inverse,
            subm=subm,
        )
    extra = {"timer": timer} if timer is not None else {}
    if act_type is not None:
        extra.update(act_alpha=act_alpha, act_beta=act_beta, act_type=act_type)
    return _ORIGINAL_CONV(
        features,
        filters,
        indice_pairs,
        indice_pair_num,
        num_activate_out,
        inverse,
        subm,
        algo,
        bias=bias,
        **extra,
        **kwargs,
    )


def _indice_conv_backward(
    features,
    filters,
    out_bp,
    indice_pairs,
    indice_pair_num,
    inverse=False,
    subm=False,
    algo=ConvAlgo.Native,
    timer=None,
):
    """spconv's ``indice_conv_backward``; plain float32 CPU convs run
    ``cpu_conv.conv_backward``, which skips the input gradient of an input that needs none; CUDA
    convs that ``gather_conv`` ran forward run its ``backward``."""
    if _gathered(features, filters, subm, inverse) and out_bp.dtype == features.dtype:
        return gather_conv.backward(
            features,
            filters,
            out_bp,
            indice_pairs,
            indice_pair_num,
            input_grad=features.requires_grad,
        )
    if _ours(features, filters, algo) and out_bp.dtype == torch.float32:
        return cpu_conv.conv_backward(
            features,
            filters,
            out_bp,
            indice_pairs,
            indice_pair_num,
            inverse=inverse,
            subm=subm,
            input_grad=features.requires_grad,
        )
    extra = {"timer": timer} if timer is not None else {}
    return _ORIGINAL_CONV_BACKWARD(
        features, filters, out_bp, indice_pairs, indice_pair_num, inverse, subm, algo, **extra
    )


_ORIGINAL_IMPLICIT_GEMM = getattr(
    spconv_ops.implicit_gemm, "_pointseg_original", spconv_ops.implicit_gemm
)
_IMPLICIT_GEMM_SIGNATURE = inspect.signature(_ORIGINAL_IMPLICIT_GEMM)


def _implicit_gemm(*args, **kwargs):
    """spconv's ``implicit_gemm``; called directly (eval mode) under CUDA autocast, its floating
    inputs are cast to fp16 first, as spconv's autograd functions cast them in training."""
    if not torch.is_autocast_enabled("cuda"):  # training: spconv's functions turned it off
        return _ORIGINAL_IMPLICIT_GEMM(*args, **kwargs)
    call = _IMPLICIT_GEMM_SIGNATURE.bind(*args, **kwargs)
    a = call.arguments
    features, filters = a["features"], a["filters"]
    if (
        features.is_cuda
        and features.is_floating_point()
        and (features.dtype != torch.float16 or filters.dtype != torch.float16)
    ):
        a["features"], a["filters"] = features.half(), filters.half()
        if a.get("bias") is not None:
            a["bias"] = a["bias"].half()
        if a.get("output_dtype") is not None:
            a["output_dtype"] = torch.float16
    return _ORIGINAL_IMPLICIT_GEMM(*call.args, **call.kwargs)


_ORIGINAL_MODULE_FORWARD = getattr(
    SparseConvolution.forward, "_pointseg_original", SparseConvolution.forward
)


def _conv_module_forward(self, input, *args, **kwargs):
    """``SparseConvolution.forward`` with the algorithm its input's device allows: Native on CPU
    tensors (spconv's implicit GEMM is CUDA-only), the algorithm chosen at build time on CUDA
    tensors. Every conv of a forward sees the same device, so layers sharing an ``indice_key``
    keep agreeing on the algorithm."""
    if not input.features.is_cuda:
        if self.algo != ConvAlgo.Native:
            self._pointseg_cuda_algo = self.algo
            self.algo = ConvAlgo.Native
    elif self.algo == ConvAlgo.Native and getattr(self, "_pointseg_cuda_algo", None) is not None:
        self.algo = self._pointseg_cuda_algo
    return _ORIGINAL_MODULE_FORWARD(self, input, *args, **kwargs)


for _fn, _orig in (
    (_get_indice_pairs, _ORIGINAL_GET_PAIRS),
    (_indice_conv, _ORIGINAL_CONV),
    (_indice_conv_backward, _ORIGINAL_CONV_BACKWARD),
    (_implicit_gemm, _ORIGINAL_IMPLICIT_GEMM),
    (_conv_module_forward, _ORIGINAL_MODULE_FORWARD),
):
    _fn._pointseg_original = _orig  # type: ignore[attr-defined]


def patch_spconv() -> None:
    """Patch every loaded spconv module that bound ``get_current_stream`` or ``SpconvOps``.

    spconv modules import both by name (ops, hash, utils, ...), so patching the defining module
    alone would miss them; modules imported later bind the patched attribute. Idempotent.
    """
    patches = {"get_current_stream": (_ORIGINAL_GET_STREAM, _get_current_stream)}
    patches["get_arch"] = (_ORIGINAL_GET_ARCH, _get_arch)
    patches["SpconvOps"] = (_ORIGINAL_OPS, _OPS_PROXY)
    patches["get_indice_pairs"] = (_ORIGINAL_GET_PAIRS, _get_indice_pairs)
    patches["indice_conv"] = (_ORIGINAL_CONV, _indice_conv)
    patches["indice_conv_backward"] = (_ORIGINAL_CONV_BACKWARD, _indice_conv_backward)
    patches["implicit_gemm"] = (_ORIGINAL_IMPLICIT_GEMM, _implicit_gemm)
    SparseConvolution.forward = _conv_module_forward
    for name, module in list(sys.modules.items()):
        if not name.startswith("spconv") or module is None:
            continue
        for attr, (original, replacement) in patches.items():
            if getattr(module, attr, None) is original:
                setattr(module, attr, replacement)


patch_spconv()


def default_algo() -> ConvAlgo | None:
    """Native (the only CPU algorithm) without CUDA, else None so spconv picks implicit GEMM.

    Decided when a layer is built; a conv built for implicit GEMM still runs Native on CPU
    tensors (see ``_conv_module_forward``). Layers sharing an ``indice_key`` must use the same
    algorithm (spconv asserts it), which building them all with this guarantees.
    """
    return ConvAlgo.Native if not torch.cuda.is_available() else None


def set_conv_algo(model: nn.Module, algo: ConvAlgo) -> nn.Module:
    """Switch every sparse conv of ``model`` to ``algo`` in place (weights are KRSC for all)."""
    for module in model.modules():
        if isinstance(module, SparseConvolution):
            module.algo = algo
    return model


def check_features(feat: Tensor, num_rows: int | None = None) -> None:
    """Refuse features the network cannot take: not (M, C), or not float32 / float16."""
    if not isinstance(feat, Tensor) or feat.dim() != 2:
        raise ValueError(
            f"features must be a 2-D tensor (M, C), got {getattr(feat, 'shape', feat)}"
        )
    if feat.dtype == torch.float64:
        raise TypeError(
            "float64 features are not supported: the network runs in float32 (its weights are "
            "float32 and spconv is only validated here in float32). Cast with feat.float()."
        )
    if feat.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"features must be float32 (or float16), got {feat.dtype}")
    if num_rows is not None and feat.shape[0] != num_rows:
        raise ValueError(f"features have {feat.shape[0]} rows but indices have {num_rows}")


def check_indices(indices: Tensor, batch_size: int | None = None, *, unique: bool = False) -> None:
    """Validate voxel indices: int32, shape (M, 4) as [batch, x, y, z], non-negative.

    ``unique=True`` also rejects repeated voxels, which spconv silently mishandles (its hash table
    keeps one of them, so submanifold outputs of duplicates differ). Costs ~3 ms per 80k rows.
    """
    if not isinstance(indices, Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype != torch.int32:
        raise TypeError(f"indices must be int32 (spconv only supports int32), got {indices.dtype}")
    if indices.dim() != 2 or indices.shape[1] != 4:
        raise ValueError(f"indices must have shape (M, 4) [batch, x, y, z], got {indices.shape}")
    if indices.shape[0] == 0:
        raise ValueError("indices are empty: a sparse tensor needs at least one voxel")
    if bool((indices < 0).any()):
        raise ValueError("indices must be non-negative (shift coordinates to start at 0)")
    if batch_size is not None:
        top = int(indices[:, 0].max())
        if batch_size < 1 or top >= batch_size:
            raise ValueError(f"batch index {top} out of range for batch_size={batch_size}")
    if unique and _count_unique_rows(indices) != indices.shape[0]:
        raise ValueError(
            "indices contain duplicate voxels: merge points per voxel (e.g. average their "
            "features) before the network"
        )


def _count_unique_rows(indices: Tensor) -> int:
    """Distinct (b, x, y, z) rows, via one int64 key per row (much faster than unique(dim=0))."""
    rows = indices.long()  # (M, 4)
    extent = [int(e) + 1 for e in rows.amax(dim=0).tolist()]
    if extent[0] * extent[1] * extent[2] * extent[3] >= 2**63:
        return int(torch.unique(indices, dim=0).shape[0])  # the key would overflow int64
    key = ((rows[:, 0] * extent[1] + rows[:, 1]) * extent[2] + rows[:, 2]) * extent[3] + rows[:, 3]
    return int(torch.unique(key).numel())


def spatial_shape_for(indices: Tensor, levels: int) -> list[int]:
    """Grid extent (x, y, z) for ``indices``, valid through ``levels`` k=2/s=2 downsamplings.

    Max coordinate + 1, rounded up to a multiple of ``2**levels`` (at least ``2**levels``): each
    downsampling halves it exactly, so the coarsest level keeps >= 1 cell per axis even for a flat
    scene (all z == 0) or a single voxel, where spconv would fail with "out spatial shape ...
    zero". That rounding is the only margin needed: submanifold convs never leave the input sites
    and inverse convs reuse the stored rulebooks.
    """
    check_indices(indices)
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    step = 2**levels
    extent = indices[:, 1:].amax(dim=0).tolist()  # (3,) max x, y, z over the whole batch
    return [(int(e) // step + 1) * step for e in extent]


def sparse_tensor(
    feat: Tensor, indices: Tensor, batch_size: int, *, levels: int
) -> spconv.SparseConvTensor:
    """Validated ``SparseConvTensor`` (contiguous, unique int32 indices) for ``levels`` levels."""
    check_indices(indices, batch_size, unique=True)
    check_features(feat, num_rows=indices.shape[0])
    indices = indices.contiguous()  # spconv reads the raw buffer as row-major
    shape = spatial_shape_for(indices, levels)
    return spconv.SparseConvTensor(feat.contiguous(), indices, shape, batch_size)
