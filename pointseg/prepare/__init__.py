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


def dataset_help(dataset: str) -> str:
    """The key=value options of one preparer, each with its default and meaning (the module's
    ``OPTIONS``; defaults from its ``prepare`` signature)."""
    import inspect
    import textwrap

    module = importlib.import_module(PREPARERS[dataset])
    params = inspect.signature(module.prepare).parameters
    lines = [f"{dataset} options (key=value):"]
    for name, meaning in getattr(module, "OPTIONS", {}).items():
        default = params[name].default
        if isinstance(default, tuple):
            shown = ",".join(f"{v:g}" for v in default)
        elif default is None or isinstance(default, bool):
            shown = {None: "null", True: "true", False: "false"}[default]
        else:
            shown = default
        left = f"  {name}={shown}"
        if len(left) > 30:
            lines.append(left)
            left = ""
        lines.append(
            textwrap.fill(meaning, 100, initial_indent=f"{left:<32}", subsequent_indent=" " * 32)
        )
    doc = f"docs/datasets/{dataset}.md"
    lines.append(f"  (see {doc} in the pointseg repository)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        chosen = [a for a in argv if a in PREPARERS]
        print(_parser().format_help().rstrip())
        for dataset in chosen or sorted(PREPARERS):
            print("\n" + dataset_help(dataset))
        sys.exit(0)
    ap = _parser()
    args = ap.parse_args(argv)
    _run(ap, args)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pointseg-prepare",
        description="Convert a dataset's raw release into pointseg scene folders.",
        epilog="examples: pointseg-prepare s3dis src=Stanford3dDataset_v1.2 dst=data/s3dis; "
        "pointseg-prepare las src=tiles/ dst=data/las split_by=folder. "
        "pointseg-prepare <dataset> --help lists that dataset's options.",
    )
    ap.add_argument("dataset", choices=sorted(PREPARERS))
    ap.add_argument(
        "options", nargs="*", help="src=PATH dst=PATH and the dataset's options key=value (below)"
    )
    ap.add_argument("--workers", type=int, default=1, help="scenes converted in parallel")
    ap.add_argument("--overwrite", action="store_true", help="redo scenes that exist")
    return ap


def _run(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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
