"""pointseg's sparse-conv layer: modules (``conv``), the dispatching function (``functional``),
its kernels (``rulebook``, ``cpu_conv``, ``grouped``, ``gather_conv``, ``spconv_ops``) and the
configuration they run on (``config``: ``SparseConfig``, recorded by each tensor at creation,
``tensor``). spconv's ``SparseConvTensor`` is the tensor container."""

from pointseg.sparse.config import (
    SparseConfig,
    get_backend,
    get_config,
    set_backend,
    set_config,
    use_backend,
    use_config,
)
from pointseg.sparse.conv import SparseConv3d, SparseConvNd, SparseInverseConv3d, SubMConv3d
from pointseg.sparse.functional import sparse_conv
from pointseg.sparse.spconv_ops import allow_cpu_backward
from pointseg.sparse.tensor import (
    SparseConvTensor,
    check_features,
    check_indices,
    config_of,
    sparse_tensor,
    spatial_shape_for,
)

__all__ = [
    "SparseConfig",
    "SparseConv3d",
    "SparseConvNd",
    "SparseConvTensor",
    "SparseInverseConv3d",
    "SubMConv3d",
    "allow_cpu_backward",
    "check_features",
    "check_indices",
    "config_of",
    "get_backend",
    "get_config",
    "set_backend",
    "set_config",
    "sparse_conv",
    "sparse_tensor",
    "spatial_shape_for",
    "use_backend",
    "use_config",
]
