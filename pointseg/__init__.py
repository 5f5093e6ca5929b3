"""pointseg: semantic segmentation of 3D point clouds with sparse U-Nets."""

__version__ = "0.1.0"

from pointseg.threads import openmp_env_defaults

openmp_env_defaults()  # before torch loads OpenMP; see pointseg/threads.py

# the config resolvers (${auto_precision:...}, ${len:...}, ${feature_width:...}) are
# registered where they are defined, when pointseg.utils is imported: with the package
from pointseg import utils as _utils  # noqa: E402, F401
