"""Write a big labelled LAS/LAZ scan for benchmarking ``pointseg-predict`` on any scan size.

Synthetic rooms (``pointseg.data.datasets.synthetic``) are tiled side by side on a grid, each
copy turned by a multiple of 90 degrees and maybe mirrored, until ``--points`` points are
written; RGB comes from the rooms, the class index goes into ``classification`` (ground
truth), intensity is the colour's luminance. Coordinates get a georeferenced-looking offset
(UTM-like eastings/northings) so readers must re-centre them. Rooms are streamed to the file:
memory stays at a few rooms whatever the size.

    python scripts/make_big_laz.py /tmp/big.laz --points 5000000
    python scripts/make_big_laz.py /tmp/big.laz --score out/big.labels.npy   # accuracy, mIoU
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from pointseg.data.datasets.synthetic import CLASS_NAMES, generate_room, scene_seed


def _room_copy(room: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xy = room["coord"][:, :2].astype(np.float64)
    if rng.random() < 0.5:
        xy[:, 0] = -xy[:, 0]
    for _ in range(int(rng.integers(4))):
        xy = np.stack([-xy[:, 1], xy[:, 0]], 1)
    xy -= xy.min(0)
    coord = np.concatenate([xy, room["coord"][:, 2:].astype(np.float64)], 1)
    return coord, room["color"], room["segment"]


def write_big(
    path: Path, *, points: int, rooms: int, seed: int, cell: float, offset: tuple
) -> None:
    import laspy

    pool = [generate_room(scene_seed(seed, "test", i)) for i in range(rooms)]
    per_room = np.mean([len(r["coord"]) for r in pool])
    side = math.ceil(math.sqrt(points / per_room))  # rooms per grid row
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.array(offset, dtype=np.float64)
    rng = np.random.default_rng(seed)
    written, k, t0 = 0, 0, time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with laspy.open(tmp, mode="w", header=header, do_compress=path.suffix == ".laz") as w:
        while written < points:
            coord, color, label = _room_copy(pool[k % rooms], rng)
            n = min(len(coord), points - written)
            row, col = divmod(k, side)
            rec = laspy.ScaleAwarePointRecord.zeros(n, header=header)
            rec.x = coord[:n, 0] + offset[0] + col * cell
            rec.y = coord[:n, 1] + offset[1] + row * cell
            rec.z = coord[:n, 2] + offset[2]
            rgb = np.round(color[:n] * 65535).astype(np.uint16)
            rec.red, rec.green, rec.blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
            rec.intensity = np.round(color[:n].mean(1) * 65535).astype(np.uint16)
            rec.classification = label[:n].astype(np.uint8)
            w.write_points(rec)
            written += n
            k += 1
    tmp.replace(path)
    dt = time.perf_counter() - t0
    print(f"wrote {path}: {written:,} points, {k} rooms on a {side} x {side} grid of {cell} m "
          f"cells, {path.stat().st_size / 1e6:.0f} MB in {dt:.0f} s")  # fmt: skip


def score(path: Path, labels_path: Path, chunk: int = 2_000_000) -> None:
    """Accuracy and mIoU of predicted labels against the file's classification."""
    import laspy

    pred = np.load(labels_path, mmap_mode="r")
    k = len(CLASS_NAMES)
    cm = np.zeros((k, k), np.int64)
    i = 0
    with laspy.open(path) as r:
        for c in r.chunk_iterator(chunk):
            t = np.asarray(c.classification, dtype=np.int64)
            cm += np.bincount(t * k + pred[i : i + len(t)], minlength=k * k).reshape(k, k)
            i += len(t)
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    print(f"{i:,} points: accuracy {tp.sum() / cm.sum():.4f}, mIoU {np.nanmean(iou):.4f}")
    for name, v in zip(CLASS_NAMES, iou, strict=True):
        print(f"  {name:<10} {v:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path, help="output .las or .laz")
    ap.add_argument("--points", type=int, default=5_000_000)
    ap.add_argument("--rooms", type=int, default=16, help="distinct rooms reused in the tiling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cell", type=float, default=12.0, help="grid spacing of rooms, metres")
    ap.add_argument("--offset", type=float, nargs=3, default=(500_000.0, 4_000_000.0, 100.0))
    ap.add_argument("--score", type=Path, help="score a .labels.npy against the file instead")
    args = ap.parse_args()
    if args.score:
        score(args.path, args.score)
    else:
        write_big(args.path, points=args.points, rooms=args.rooms, seed=args.seed,
                  cell=args.cell, offset=tuple(args.offset))  # fmt: skip


if __name__ == "__main__":
    main()
