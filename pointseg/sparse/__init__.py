"""pointseg's sparse-conv layer: modules (``conv``), the dispatching function (``functional``),
its kernels (``rulebook``, ``cpu_conv``, ``gather_conv``, ``spconv_ops``) and the backend
setting (``config``). spconv's ``SparseConvTensor`` is the tensor container."""

from pointseg.sparse.config import get_backend, set_backend, use_backend
from pointseg.sparse.conv import SparseConv3d, SparseConvNd, SparseInverseConv3d, SubMConv3d
from pointseg.sparse.functional import sparse_conv
from pointseg.sparse.spconv_ops import allow_cpu_backward
from pointseg.sparse.tensor import (
    SparseConvTensor,
    check_features,
    check_indices,
    sparse_tensor,
    spatial_shape_for,
)

__all__ = [
    "SparseConv3d",
    "SparseConvNd",
    "SparseConvTensor",
    "SparseInverseConv3d",
    "SubMConv3d",
    "allow_cpu_backward",
    "check_features",
    "check_indices",
    "get_backend",
    "set_backend",
    "sparse_conv",
    "sparse_tensor",
    "spatial_shape_for",
    "use_backend",
]
