"""Geometry of the procedural scenes behind the synthetic datasets (pure numpy, no files).

Rooms (:mod:`pointseg.data.datasets.synthetic` scans them): :mod:`.shapes` (primitives and
models), :mod:`.scene` (placing and sampling), :mod:`.furniture`, :mod:`.clutter`,
:mod:`.palette` (classes and colours), :mod:`.floorplan` and :mod:`.room` (layout),
:mod:`.occlusion` (what the scanner cannot see).
"""
