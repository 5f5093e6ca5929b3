"""Score ``pointseg-predict``'s labels of a raw LAS/LAZ tile against the tile's own
classification, next to ``pointseg-eval``'s scores of the scene prepared from it.

    python scripts/predict_vs_eval.py --labels <predict out>/<tile>.labels.npy \
        --tile <tile>.laz --prepared <pointseg-prepare las dst> --eval <eval run>/metrics.json

The class map is the one the preparer used (read from a prepared scene's ``meta.json``),
so both sides score the same points against the same labels. Prints both per-class IoU
tables and the largest difference; exits 1 when they differ by more than ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pointseg.io import read_points
from pointseg.io.las import load_class_map
from pointseg.metrics import confusion_matrix, format_table, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=Path, required=True, help="pointseg-predict .labels.npy")
    ap.add_argument("--tile", type=Path, required=True, help="the raw LAS/LAZ tile")
    ap.add_argument("--prepared", type=Path, required=True, help="pointseg-prepare las dst")
    ap.add_argument("--eval", type=Path, required=True, help="pointseg-eval metrics.json")
    ap.add_argument("--split", default="val")
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args()

    meta = json.loads(next(args.prepared.glob(f"{args.split}/*/meta.json")).read_text())
    cmap = load_class_map(meta["class_map"])
    names = list(meta["class_names"])
    tile = read_points(args.tile, format="las")
    target = cmap.apply(tile["classification"], source=str(args.tile))  # (N,) -1 = ignore
    pred = np.load(args.labels)
    if len(pred) != len(target):
        sys.exit(f"{args.labels} has {len(pred)} labels for {len(target)} points of {args.tile}")
    cm = confusion_matrix(
        torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target), len(names), -1
    )
    ours = scores(cm)
    print(f"pointseg-predict on {args.tile.name}:")
    print(format_table(ours, names))
    ev = json.loads(args.eval.read_text())
    ev_iou = ev[f"{args.split}/iou"]
    print(f"pointseg-eval ({args.eval}): mIoU {ev[f'{args.split}/miou']:.4f}")
    diffs = []
    for name, iou in zip(names, ours.iou.tolist(), strict=True):
        other = ev_iou[name]
        same = (np.isnan(iou) and np.isnan(other)) or abs(iou - other) <= args.tol
        diffs.append(0.0 if same else abs(iou - other))
        print(f"  {name:20s} predict {iou:.4f}  eval {other:.4f}")
    print(f"mIoU predict {ours.miou:.4f}  eval {ev[f'{args.split}/miou']:.4f}; "
          f"largest per-class difference {max(diffs):.2e}")  # fmt: skip
    sys.exit(0 if max(diffs) <= args.tol else 1)


if __name__ == "__main__":
    main()
