"""pointseg benchmark suite: every figure is a ratio against a baseline measured in the same run.

    python scripts/bench.py            # full: 1 M / 10 M points, 50 M-point scan, up to 1 M voxels
    python scripts/bench.py --quick    # smaller sizes, a few minutes on 2 CPU cores
    python scripts/bench.py --only voxelize,scaling

Writes a markdown table to stdout and ``benchmarks/results.md``, the figures to
``benchmarks/results.json`` and plots to ``benchmarks/*.png``; each file is written to a
temporary name first and then renamed. The sections live in ``scripts/benchmarks/``, one
module each, listed in ``benchmarks/registry.py``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pointseg  # noqa: E402, F401  first: its OpenMP wait policy must precede torch's import

# isort: split
import torch  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks.core import Context, log, machine  # noqa: E402
from benchmarks.registry import SECTIONS  # noqa: E402

from pointseg.utils import reuse_freed_memory  # noqa: E402


def parser() -> argparse.ArgumentParser:
    listing = "\n".join(
        textwrap.fill(s.summary, 96, initial_indent=f"  {name:<10} ", subsequent_indent=" " * 13)
        for name, s in SECTIONS.items()
    )
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"sections (--only picks some; all run by default):\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"), help="output folder")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--ckpt", default=None, help="checkpoint for the inference section")
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser()
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    reused = reuse_freed_memory()  # as pointseg-train does (POINTSEG_REUSE_MEMORY=0: off)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, out=out, ckpt=Path(args.ckpt).resolve() if args.ckpt else None)
    res: dict[str, Any] = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {**machine(), "reuse_freed_memory": reused},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    t0 = time.perf_counter()
    for name, section in SECTIONS.items():
        if name in only:
            res[name] = section.run(ctx)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    res["plots"] = report.plots(res, SECTIONS, out)
    md = report.markdown(res, SECTIONS)
    print(md)
    report.write(res, md, out)
    log(f"done in {res['total_s']} s; wrote {out}/results.json, results.md, {res['plots']}")
    return res


if __name__ == "__main__":
    main()
