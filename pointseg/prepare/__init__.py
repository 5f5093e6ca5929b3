"""``pointseg-prepare <dataset> src=<raw> dst=<out> [key=value ...] [--workers N]``
(``workers=N`` and ``overwrite=true`` work too)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pointseg.prepare.common import PrepareError

# dataset name -> module with ``prepare(src: Path, dst: Path, *, workers, overwrite, **opts)``
PREPARERS = {
    "s3dis": "pointseg.prepare.s3dis",
    "scannet": "pointseg.prepare.scannet",
    "semantickitti": "pointseg.prepare.semantickitti",
    "las": "pointseg.prepare.las",
}


def parse_value(text: str) -> object:
    """``key=value`` values: ints, floats, true/false, comma lists, else strings."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="pointseg-prepare",
        description="Convert a dataset's raw release into pointseg scene folders.",
        epilog="example: pointseg-prepare s3dis src=Stanford3dDataset_v1.2 dst=data/s3dis",
    )
    ap.add_argument("dataset", choices=sorted(PREPARERS))
    ap.add_argument("options", nargs="*", help="src=PATH dst=PATH and dataset options key=value")
    ap.add_argument("--workers", type=int, default=1, help="scenes converted in parallel")
    ap.add_argument("--overwrite", action="store_true", help="redo scenes that exist")
    args = ap.parse_args(argv)
    opts: dict[str, object] = {}
    for item in args.options:
        if "=" not in item:
            ap.error(f"option {item!r} must look like key=value (e.g. src=/data/raw)")
        key, value = item.split("=", 1)
        parsed = parse_value(value)
        if key == "workers":  # the two flags are also accepted as key=value, like the rest
            if not isinstance(parsed, int) or isinstance(parsed, bool):
                ap.error(f"workers={value!r}: give a whole number of processes, e.g. workers=4")
            args.workers = parsed
        elif key == "overwrite":
            if not isinstance(parsed, bool):
                ap.error(f"overwrite={value!r}: write overwrite=true or overwrite=false")
            args.overwrite = parsed
        else:
            opts[key] = parsed
    if args.workers < 1:
        ap.error(f"workers={args.workers}: use 1 or more processes")
    for required in ("src", "dst"):
        if required not in opts:
            ap.error(f"missing {required}=PATH")
    src, dst = Path(str(opts.pop("src"))), Path(str(opts.pop("dst")))
    if not src.exists():
        ap.error(f"src={src} does not exist")
    module = importlib.import_module(PREPARERS[args.dataset])
    try:
        counts = module.prepare(src, dst, workers=args.workers, overwrite=args.overwrite, **opts)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            ap.error(f"unknown option for {args.dataset}: {err}")
        raise
    except (PrepareError, FileNotFoundError, ValueError) as err:
        # the message names the file and the fix; a traceback would bury it
        print(f"pointseg-prepare {args.dataset}: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.dataset}: {counts} -> {dst}")


if __name__ == "__main__":
    main(sys.argv[1:])
