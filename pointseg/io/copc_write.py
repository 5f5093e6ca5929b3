"""A COPC file's classified copy as COPC: the input's octree, node by node, through ``copclib``.

``copclib`` (``pip install 'pointseg[copc]'``) is optional and imported here only. Without it,
``pointseg-predict`` writes a COPC input's copy as plain LAZ (``pointseg.io.copc.plain_header``).

laspy reads a COPC file's points in file order, which is the order of its nodes' chunks
(their byte offsets); the labels of a file follow that order, so node ``k`` of the sorted
nodes holds labels ``[sum of the counts before it, + its count)``. Each node's points are
decompressed, their classification set, and the node written under the same key and page.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pointseg.io.copc import header_wkt
from pointseg.io.formats import PointFileError
from pointseg.utils import atomic_path

log = logging.getLogger("pointseg.io")

COPC_HINT = "pip install 'pointseg[copc]' (the copclib package) to get a .copc.laz copy instead"
# the VLRs copclib writes itself (from the input's info, extents, WKT and extra-bytes records)
_CARRIED = {"CopcInfoVlr", "CopcHierarchyVlr", "LasZipVlr", "WktCoordinateSystemVlr",
            "ExtraBytesVlr"}  # fmt: skip


def copc_writer_available() -> bool:
    """True when ``copclib`` can be imported (COPC output possible)."""
    try:
        import copclib  # noqa: F401
    except ImportError:
        return False
    return True


def copc_output_name(path: Path) -> str:
    """``<stem>.copc.laz`` for ``<stem>.copc.laz`` or ``<stem>.laz``."""
    name = path.name
    stem = name[: -len(".copc.laz")] if name.lower().endswith(".copc.laz") else path.stem
    return f"{stem}.copc.laz"


def write_copc_classification(
    src: str | Path, dst: str | Path, labels: np.ndarray, *, lut: np.ndarray | None = None
) -> Path:
    """Copy COPC ``src`` to COPC ``dst`` with ``classification`` set to ``labels (N,)`` in file
    order (``lut[labels]`` when ``lut`` is given): the same node keys and pages, the same
    points in each node in the same order, the header's scales, offsets and bounds, the CRS
    WKT and the extra dimensions; the classification extent is updated."""
    import copclib
    import laspy

    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise PointFileError(f"refusing to overwrite the input {src}; choose another output")
    with laspy.open(src) as reader:
        hdr = reader.header
    pf, n = hdr.point_format, int(hdr.point_count)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} points of {src}")
    lost = [f"{v.user_id}/{v.record_id}" for v in [*hdr.vlrs, *(hdr.evlrs or [])]
            if type(v).__name__ not in _CARRIED and v.user_id != "copc"]  # fmt: skip
    if lost:
        log.warning("%s: its %s records are not carried into the COPC copy", src, lost)
    reader = copclib.FileReader(str(src))
    try:
        # chunks in file order = the order laspy (and so the labels) read the points in
        nodes = sorted(reader.GetAllNodes(), key=lambda node: node.offset)
        if sum(node.point_count for node in nodes) != n:
            raise PointFileError(
                f"{src}: its COPC hierarchy lists {sum(nd.point_count for nd in nodes)} points, "
                f"its header {n}; the file is damaged (re-export it)"
            )
        config = copclib.CopcConfigWriter(reader.copc_config)
        codes_min, codes_max = 255, 0
        with atomic_path(dst) as tmp:
            # the WKT from laspy: copclib 2.6 misreads a WKT stored as a VLR (not an EVLR)
            writer = copclib.FileWriter(str(tmp), config, wkt=header_wkt(hdr))
            try:
                i = 0
                for node in nodes:
                    count = int(node.point_count)
                    if count == 0:
                        continue
                    data = bytearray(memoryview(reader.GetPointData(node)).cast("B"))
                    rec = laspy.PackedPointRecord.from_buffer(data, pf, count)
                    part = np.asarray(labels[i : i + count])
                    codes = part if lut is None else np.asarray(lut)[part]
                    rec.classification = codes
                    codes_min = min(codes_min, int(codes.min()))
                    codes_max = max(codes_max, int(codes.max()))
                    raw = np.frombuffer(rec.memoryview(), np.int8)
                    writer.AddNode(node.key, copclib.VectorChar(raw), node.page_key)
                    i += count
                extent = writer.copc_config.copc_extents.classification
                extent.minimum, extent.maximum = float(codes_min), float(codes_max)
            finally:
                writer.Close()
    finally:
        reader.Close()
    return dst
