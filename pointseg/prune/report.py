"""``prune_report.md`` and ``prune_curve.png``: accuracy, size and speed of a pruned model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pointseg.utils import atomic_write_text


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f} MB"


def _row(label: str, r: Mapping[str, Any], dense: Mapping[str, Any]) -> str:
    delta = 100.0 * (r["miou"] - dense["miou"])
    lat, dlat = r.get("latency_ms"), dense.get("latency_ms")
    speed = f"{dlat / lat:.2f}x" if lat and dlat else ""
    macs = f"{r['macs'] / 1e9:.2f}" if r.get("macs") else ""
    return (
        f"| {label} | {100 * r['sparsity']:.1f} % | {r['miou']:.4f} | {delta:+.2f} "
        f"| {r['params']:,} | {r['nonzero']:,} | {_mb(r.get('size_bytes'))} "
        f"| {'' if lat is None else f'{lat:.1f}'} | {speed} | {macs} |"
    )


def write_prune_report(run_dir: str | Path, result: Mapping[str, Any]) -> Path:
    """Markdown table + PNG curve of ``result`` (what ``pointseg.prune.run.prune`` returns)."""
    run_dir = Path(run_dir)
    dense, before, after = result["dense"], result["before"], result["after"]
    xlabel = result["x_label"]
    png = _plot(run_dir / "prune_curve.png", result)
    lat = result["latency"]
    lines = [
        f"# Pruning report: {result['method']}, {xlabel} {result['amount']}",
        "",
        f"Source checkpoint: `{result['ckpt_path']}`  ",
        f"Fine-tuning: {result['finetune']}",
        "",
        f"| model | {'channels removed' if result['method'] == 'structured' else 'sparsity'} "
        "| val mIoU | change (points) | parameters | non-zero "
        "| checkpoint | CPU latency (ms) | speed-up | GMACs |",
        "|---|---|---|---|---|---|---|---|---|---|",
        _row("dense (source)", dense, dense),
        _row("pruned, before fine-tuning", before, dense),
        _row("pruned, fine-tuned", after, dense),
        "",
        "Sparsity: zero weights among all sparse-conv and linear weights (BatchNorm and biases "
        "are never pruned); channels removed: the fraction taken from every channel group. "
        "Checkpoint: bytes on disk of a weights-only checkpoint (the dense "
        f"row: {_mb(dense['size_bytes'])} weights only; the source file with optimizer state is "
        f"{_mb(result['source_size_bytes'])}). "
        f"CPU latency: forward pass on val scene {lat['scene']} ({lat['voxels']:,} voxels), "
        f"{lat['threads']} thread(s), median of {lat['runs']} runs after {lat['warmup']} "
        "warm-up runs, dense and pruned interleaved in the same process (fastest runs: "
        f"{lat['dense_min_ms']:.1f} ms dense, {lat['pruned_min_ms']:.1f} ms pruned, "
        f"{lat['speedup_min']:.2f}x). GMACs: "
        "multiply-accumulates of that forward (rulebook pairs x C_in x C_out).",
        "",
        "## Files",
        "",
    ]
    for name, info in result["files"].items():
        lines.append(f"- `{info['path']}` ({name}): {_mb(info['size_bytes'])}")
    lines += ["", f"## {xlabel} vs val mIoU", "", f"![curve]({png.name})", ""]
    lines += [f"| {xlabel} | val mIoU | |", "|---|---|---|"]
    for p in result["sweep"]:
        lines.append(f"| {p['amount']:.2f} | {p['miou']:.4f} | one-shot, before fine-tuning |")
    lines.append(f"| {result['amount']:.2f} | {after['miou']:.4f} | after fine-tuning |")
    if result.get("trajectory"):
        lines += ["", "Fine-tuning trajectory:", ""]
        lines += ["| stage | sparsity | val mIoU |", "|---|---|---|"]
        for t in result["trajectory"]:
            lines.append(f"| {t['stage']} | {100 * t['sparsity']:.1f} % | {t['miou']:.4f} |")
    path = atomic_write_text(run_dir / "prune_report.md", "\n".join(lines) + "\n")
    return path


def _plot(path: Path, result: Mapping[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pointseg.io import atomic_path

    sweep = result["sweep"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.axhline(result["dense"]["miou"], color="grey", ls="--", label="dense")
    ax.plot(
        [p["amount"] for p in sweep], [p["miou"] for p in sweep], "o-", label="one-shot, before FT"
    )
    ax.plot(
        [result["amount"]], [result["after"]["miou"]], "*", ms=14, color="C3", label="fine-tuned"
    )
    ax.set_xlabel(result["x_label"])
    ax.set_ylabel("val mIoU")
    ax.set_title(f"{result['method']} pruning")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
