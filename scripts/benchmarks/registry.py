"""The benchmark sections in the order a full run takes them; ``--only`` picks by name."""

from __future__ import annotations

from .core import Section
from .dense import Dense
from .gpu import GPU
from .inference import Inference
from .o3dml import O3DML
from .scaling import Scaling
from .threads import Threads
from .voxelize import Voxelize

SECTIONS: dict[str, Section] = {
    s.name: s for s in (Voxelize(), Dense(), O3DML(), Threads(), Inference(), Scaling(), GPU())
}
