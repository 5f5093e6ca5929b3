"""The run's report: a markdown page with every section's table, the figures as JSON and the
plots, each file written to a temporary name and then renamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pointseg.utils import atomic_write_text, write_json

from .core import Section


def header(res: dict[str, Any]) -> list[str]:
    m = res["machine"]
    return [
        "# pointseg benchmarks",
        "",
        f"{m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}), torch "
        f"{m['torch']}, spconv {m['spconv']}, Python {m['python']}; "
        f"{'quick' if res['quick'] else 'full'} run, {res['date']}; freed memory "
        f"{'reused' if m.get('reuse_freed_memory') else 'returned to the system'}.",
        "",
    ]


def markdown(res: dict[str, Any], sections: dict[str, Section]) -> str:
    lines = header(res)
    for name, section in sections.items():
        if name in res:
            lines += section.markdown(res[name])
    return "\n".join(lines)


def plots(res: dict[str, Any], sections: dict[str, Section], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    written: list[str] = []
    for name, section in sections.items():
        if name in res and "skipped" not in res[name]:
            written += section.plots(res[name], out)
    return written


def write(res: dict[str, Any], md: str, out: Path) -> None:
    atomic_write_text(out / "results.md", md + "\n")
    write_json(out / "results.json", res)
