"""Labelling files: ``pointseg-predict`` (``run``: inputs, outputs, the per-file pipeline),
streamed labelling of LAS/LAZ tiles larger than memory (``stream``) and many files across
Lightning DDP ranks with a resumable manifest (``survey``).
"""

from pointseg.predict.run import class_codes, expand_inputs, main, predict

__all__ = ["class_codes", "expand_inputs", "main", "predict"]
