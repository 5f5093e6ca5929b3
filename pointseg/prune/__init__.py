"""Model compression: ``pointseg-prune ckpt_path=... prune=<method> prune.amount=...``.

Methods (``conf/prune/<name>.yaml``, each mapped to its class by ``_target_``):
``magnitude``, ``l1``, ``structured`` (``pointseg.prune.methods``).

``pointseg.prune.unstructured`` (global magnitude masks, cubic schedule, L1 penalty),
``pointseg.prune.structured`` (channel removal for ``SparseUNet``), ``pointseg.prune.run``
(the pipeline: sweep, fine-tune, save, measure, report).
"""

from __future__ import annotations


def main() -> None:
    from pointseg.guards import run_hydra
    from pointseg.prune.run import hydra_main

    run_hydra(hydra_main, "prune")
