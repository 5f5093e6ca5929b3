"""Geometry of the procedural scenes behind the synthetic datasets (pure numpy, no files).

Rooms (:mod:`pointseg.data.datasets.synthetic`): :mod:`.shapes` (primitives and models),
:mod:`.scene` (placing and sampling), :mod:`.occlusion`, :mod:`.floorplan`,
:mod:`.furniture`, :mod:`.clutter`.
"""
