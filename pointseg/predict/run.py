"""``pointseg-predict ckpt_path=... input=<file|folder|glob> output=<dir>``: label scans.

For every input file: ``<stem>.labels.npy`` (one label per input point), ``<stem>.ply``
(x, y, z, class colours, ``label``), for LAS/LAZ input a copy with its classification set
through ``asprs_map``, and with ``save_probs=true`` ``<stem>.probs.npy`` (N, K). The model and
its input pipeline come from the checkpoint; scans of any size go through block inference
(see ``pointseg.inference``).
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pointseg.callbacks import block_hook, entry_callbacks
from pointseg.guards import explain_state_dict_error, guard_task, run_hydra
from pointseg.inference import InferenceOptions
from pointseg.io import (
    FORMATS,
    PointFileError,
    atomic_path,
    detect_format,
    unlabelled,
    write_labeled_ply,
    write_las_classification,
    write_npy,
)
from pointseg.io.las import class_codes
from pointseg.io.las_file import max_class_code
from pointseg.segmenter import Segmenter
from pointseg.utils import CONF_DIR
from pointseg.viz.colors import palette

log = logging.getLogger(__name__)


def expand_inputs(spec: str | Sequence[str]) -> list[Path]:
    """Files named by a path, a folder (its supported files, sorted) or a glob pattern."""
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    files: list[Path] = []
    for s in map(str, specs):
        p = Path(s).expanduser()
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir() if f.suffix.lower() in FORMATS and not f.name.startswith(".")
            )
            if not found:
                raise PointFileError(
                    f"input folder {p} holds no point-cloud files ({', '.join(sorted(FORMATS))})"
                )
            files += found
        elif any(ch in s for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).is_file())
            if not found:
                raise PointFileError(f"input pattern {s!r} matches no file")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise PointFileError(f"input {p} does not exist; give a file, a folder or a glob")
    return files


def _targets(
    files: Sequence[Path], out: Path, cfg: DictConfig, *, streamed: Sequence[bool] | None = None
) -> list[dict[str, Path]]:
    """Output paths per input; refuses to overwrite an input or to write one file twice.
    Streamed files get labels and the LAS/LAZ copy. A COPC input's copy is COPC
    (``<stem>.copc.laz``, the input's octree) where copclib is installed and the whole file
    is labelled, else plain LAZ (``<stem>.laz``)."""
    from pointseg.io.copc_write import COPC_HINT, copc_output_name, copc_writer_available

    plans, seen = [], {}
    inputs = {f.resolve() for f in files}
    copc_out = cfg.get("bounds") is None and copc_writer_available()
    plain_copc: list[str] = []
    for f, chunked in zip(files, streamed or [False] * len(files), strict=True):
        fmt = detect_format(f, cfg.get("format"))
        plan = {"labels": out / f"{f.stem}.labels.npy"}
        if cfg.write_ply and not chunked:
            plan["ply"] = out / f"{f.stem}.ply"
        if cfg.save_probs and not chunked:
            plan["probs"] = out / f"{f.stem}.probs.npy"
        if fmt == "las" and cfg.write_las:
            copc = _is_copc(f)
            if copc and copc_out:
                plan["las"] = out / copc_output_name(f)
            else:
                name = copc_output_name(f).removesuffix(".copc.laz")
                plan["las"] = out / f"{name}{f.suffix.lower()}"
                if copc:
                    plain_copc.append(f.name)
        for p in plan.values():
            if p.resolve() in inputs:
                raise PointFileError(
                    f"output {p} would overwrite an input file; choose another output= folder"
                )
            if p in seen:
                raise PointFileError(
                    f"{seen[p]} and {f} would both write {p} (same stem); rename one or run "
                    "them into different output= folders"
                )
            seen[p] = f
        plans.append(plan)
    if plain_copc:
        why = "bounds= keeps only the box's points" if copc_writer_available() else COPC_HINT
        log.warning("COPC input(s) %s get a plain LAZ copy, without the octree: %s",
                    ", ".join(plain_copc), why)  # fmt: skip
    return plans


def _is_copc(path: Path) -> bool:
    """A COPC file (by its VLRs, whatever its name); a file that cannot be read is not (it
    fails when it is labelled, where skip_errors catches it)."""
    from pointseg.io.copc import is_copc

    try:
        return is_copc(path)
    except PointFileError:
        return False


def _keep_las_copy_if_it_fits(
    path: Path, plan: dict[str, Path], codes: np.ndarray, names: Sequence[str]
) -> None:
    """LAS point formats 0-5 hold classification codes 0-31 only (no user-definable range):
    a model whose classes need codes above that gets no classified copy of such a file, with
    a warning that says how to get one; its labels and PLY are written as usual."""
    if "las" not in plan or int(codes.max()) <= max_class_code(0):
        return
    from pointseg.io.copc import las_header

    fmt = int(las_header(path).point_format.id)
    if int(codes.max()) <= max_class_code(fmt):
        return
    too_big = [n for n, c in zip(names, codes.tolist(), strict=True) if c > max_class_code(fmt)]
    log.warning(
        "%s: point format %d holds classification codes 0-31 only, and classes %s have "
        "codes above 31 (no ASPRS class of that name): no classified LAS copy is written; "
        "give asprs_map=index or asprs_map={name: code} with codes <= 31 to get one",
        path, fmt, too_big,
    )  # fmt: skip
    del plan["las"]


def _write_probs(path: Path, pred: Any, dtype: str, chunk: int, kept: np.ndarray | None) -> None:
    """(N, K) probabilities in file order; NaN rows for points that were left out."""
    n, k = len(pred.inverse), pred.num_classes
    with atomic_path(path) as tmp:
        rows = n if kept is None else len(kept)
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(rows, k))
        if kept is None:
            for i in range(0, n, chunk):
                arr[i : i + chunk] = pred.point_probs(i, i + chunk)
        else:
            arr[:] = np.nan
            rows_kept = np.flatnonzero(kept)
            for i in range(0, n, chunk):
                arr[rows_kept[i : i + chunk]] = pred.point_probs(i, i + chunk)
        arr.flush()
        del arr


def _output_options(cfg: DictConfig) -> dict[str, Any]:
    """The options that change a file's outputs (part of its resume key)."""
    keys = ("format", "columns", "write_ply", "write_las", "asprs_map", "save_probs",
            "probs_dtype", "nonfinite", "max_bad_lines", "tta", "inference", "bounds",
            "stream")  # fmt: skip
    return {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
            for k, v in ((k, cfg.get(k)) for k in keys)}  # fmt: skip


def _trainer_overrides(device: str) -> dict[str, Any]:
    """``device=cpu|cuda|cuda:N`` picks the single-process trainer's accelerator."""
    if device in (None, "auto"):
        return {}
    if device == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    if str(device).startswith("cuda"):
        index = str(device).partition(":")[2]
        return {"accelerator": "gpu", "devices": [int(index)] if index else 1}
    raise ValueError(f"device={device!r}: use auto, cpu, cuda or cuda:N")


def predict(cfg: DictConfig, *, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Label every input file on this process's share of the trainer's devices (one process
    by default; ``trainer=ddp`` / ``trainer=ddp_cpu``: one per device, files balanced by
    point count); files whose outputs a previous run completed are skipped. Returns the
    summary that rank 0 writes to ``<output>/predict.json``."""
    from functools import partial

    import hydra

    from pointseg.io.copc import check_box
    from pointseg.predict.survey import (
        MANIFEST_DIR,
        FileLabeller,
        ManifestWriter,
        file_points,
        record_key,
    )

    bounds = check_box(cfg.get("bounds"))
    files = expand_inputs(cfg.input)
    out = Path(cfg.output)
    weights = [file_points(f, cfg.get("format")) for f in files]
    opts = InferenceOptions.from_config(
        OmegaConf.to_container(cfg.inference, resolve=True), tta=cfg.tta
    )
    ckpt = Path(cfg.ckpt_path)
    options = _output_options(cfg)
    if ckpt.is_dir():  # a pointseg-export folder
        runtime = str(cfg.get("runtime") or "torch")
        predictor = Segmenter.from_pretrained(ckpt, runtime=runtime, options=opts)
        ckpt, options["runtime"] = ckpt / "pointseg.json", runtime
    else:
        try:
            predictor = Segmenter.from_checkpoint(
                ckpt, options=opts, device="cpu", trust=bool(cfg.get("trust_checkpoint"))
            )
        except RuntimeError as err:  # load_state_dict's "size mismatch for ..." list
            raise explain_state_dict_error(err, ckpt=str(cfg.ckpt_path)) or err from None
    # a recipe that transforms the whole scan (AddHeight) labels big tiles whole, as before
    streamable = not predictor.recipe.transforms
    streamed = [_streamed(cfg, f, w, streamable) for f, w in zip(files, weights, strict=True)]
    plans = _targets(files, out, cfg, streamed=streamed)
    names = predictor.class_names
    amap = cfg.get("asprs_map")
    amap = OmegaConf.to_container(amap) if OmegaConf.is_config(amap) else amap
    if amap in (None, "auto") and predictor.recipe.class_codes is not None:
        amap = list(predictor.recipe.class_codes)  # the codes the training data had
    codes = class_codes(names, amap)
    for f, plan in zip(files, plans, strict=True):
        _keep_las_copy_if_it_fits(f, plan, codes, names)
    module = FileLabeller(
        predictor, files=files, plans=plans, weights=weights,
        label_file=partial(_label_file, cfg=cfg, codes=codes, bounds=bounds,
                           streamed={f for f, s in zip(files, streamed, strict=True) if s}),
        keys=[record_key(f, ckpt, options) for f in files],
        record_dir=out / MANIFEST_DIR, skip_errors=bool(cfg.skip_errors),
    )  # fmt: skip
    header = {"ckpt_path": str(cfg.ckpt_path), "class_names": names, "tta": opts.tta}
    writer = ManifestWriter(out=out, header=header)
    predictor.block_hook = block_hook(callbacks)  # FollowLoad: between a file's blocks too
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=[writer, *callbacks], logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=bool(cfg.progress),
        use_distributed_sampler=False, sync_batchnorm=False,
        **_trainer_overrides(cfg.get("device", "auto")),
    )  # fmt: skip
    trainer.predict(module, return_predictions=False)
    summary = writer.summary
    if summary:
        pts, sec = summary["points"], summary["seconds"]
        summary["points_per_s"] = pts / sec if sec > 0 else 0.0
    return summary


def _streamed(cfg: DictConfig, path: Path, points: int, streamable: bool = True) -> bool:
    """LAS/LAZ/COPC files labelled in spatial chunks: all with ``bounds``, else the big ones
    where the model's recipe allows it (no transform of the whole scan before voxelizing)."""
    if detect_format(path, cfg.get("format")) != "las":
        if cfg.get("bounds") is not None:
            raise PointFileError(f"bounds= works on LAS/LAZ/COPC files only, not {path}")
        return False
    at = cfg.stream.min_points
    return cfg.get("bounds") is not None or (streamable and at is not None and points > int(at))


def _label_file(
    path: Path, plan: dict[str, Path], predictor: Segmenter, *, cfg: DictConfig,
    codes: np.ndarray, bounds: Any, streamed: set[Path],
) -> dict[str, Any]:  # fmt: skip
    """One file, whole or streamed in chunks: the predict step of every process."""
    if path in streamed:
        from pointseg.predict.stream import stream_file

        return stream_file(
            path, plan, predictor, codes=codes, chunk_m=float(cfg.stream.chunk), bounds=bounds
        )
    return _predict_file(path, plan, predictor, cfg, codes, None)


def _predict_file(
    path: Path, plan: dict[str, Path], predictor: Segmenter, cfg: DictConfig, codes: np.ndarray,
    bar: Any,
) -> dict[str, Any]:  # fmt: skip
    """Read, label and write one file; returns its summary entry."""
    names, chunk = predictor.class_names, int(predictor.options.chunk_size)
    t0 = time.perf_counter()
    sample = predictor.read(
        path, format=cfg.get("format"), columns=cfg.get("columns"),
        nonfinite=cfg.get("nonfinite", "drop"), max_bad_lines=cfg.get("max_bad_lines", 0),
    )  # fmt: skip
    kept = sample.pop("kept", None)  # (N,) bool when points with NaN/Inf coordinates were left out
    t_read = time.perf_counter() - t0
    pred = predictor.predict(sample, progress=bar)
    t_pred = time.perf_counter() - t0 - t_read
    labels = pred.labels
    if kept is not None:  # every input point gets a label: the left-out ones `unlabelled`
        none = unlabelled(pred.labels.dtype)
        labels = np.full(len(kept), none, pred.labels.dtype)
        labels[kept] = pred.labels
        log.warning(
            "%s: %d point(s) with NaN/Inf coordinates not labelled: label %d in %s, left out "
            "of the PLY", path, len(kept) - len(pred.labels), none, plan["labels"].name
        )  # fmt: skip
    write_npy(plan["labels"], labels)
    if "probs" in plan:
        _write_probs(plan["probs"], pred, cfg.probs_dtype, chunk, kept)
    if "ply" in plan:
        write_labeled_ply(
            plan["ply"],
            sample["coord"],
            pred.labels,
            origin=sample["origin"],
            colors=palette(len(names)),
            class_names=names,
            chunk_size=chunk,
        )
    if "las" in plan:
        write_las_classification(path, plan["las"], pred.labels, lut=codes, chunk_size=chunk)
    n, dt = len(labels), time.perf_counter() - t0
    tqdm.write(
        f"{path.name}: {n:,} points, {pred.num_blocks} block(s), {dt:.1f} s (read {t_read:.1f}, "
        f"infer {t_pred:.1f}, write {dt - t_read - t_pred:.1f}): {n / dt:,.0f} points/s"
    )
    hist = np.bincount(pred.labels, minlength=len(names))
    return {
        "input": str(path), "points": n, "blocks": pred.num_blocks, "seconds": dt,
        "points_per_s": n / dt, "outputs": {k: str(v) for k, v in plan.items()},
        "class_counts": dict(zip(names, hist.tolist(), strict=True)),
        "nonfinite_points": 0 if kept is None else int(len(kept) - len(pred.labels)),
    }  # fmt: skip


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
@guard_task("pointseg-predict", needs_spconv=lambda cfg: cfg.get("runtime") != "onnx")
def _hydra_main(cfg: DictConfig) -> None:
    # the thread count, once, for the run (pointseg/threads.py), and FollowLoad
    predict(cfg, callbacks=entry_callbacks(cfg))


def main() -> None:
    run_hydra(_hydra_main, "predict")


if __name__ == "__main__":
    main()
