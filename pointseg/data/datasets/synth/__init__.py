"""Geometry of the procedural scenes behind the synthetic datasets (pure numpy, no files).

Rooms (:mod:`pointseg.data.datasets.synthetic` scans them): :mod:`.shapes` (primitives and
models), :mod:`.scene` (placing and sampling), :mod:`.furniture`, :mod:`.clutter`,
:mod:`.palette` (classes and colours), :mod:`.floorplan` and :mod:`.room` (layout),
:mod:`.occlusion` (what the scanner cannot see).

Streets (:mod:`pointseg.data.datasets.synthetic_lidar` ray-casts them): :mod:`.street_parts`
(primitives, objects, surface patterns) and :mod:`.street` (layout).
"""
