"""Checks on what users hand to pointseg, shared by the entry points (see docs/bad_input.md).

Each check raises an exception whose message names the field or file and the fix, before
the bad value reaches CrossEntropy, spconv or ``load_state_dict``; ``run_hydra`` adds a
"did you mean" hint to Hydra's error for a misspelt config key and turns the errors a user
can cause into one line on stderr with exit status 2 instead of a traceback.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

# exit status of a run stopped by bad input (Hydra's own config errors exit with 1)
INPUT_ERROR_EXIT = 2


class DataError(ValueError):
    """A prepared scene or sample that cannot be used as it is (empty, NaN/Inf, ragged)."""


class LabelRangeError(DataError):
    """Labels outside ``0..num_classes-1`` that are not the ignore index."""


class CheckpointMismatchError(ValueError):
    """A checkpoint used with data of another class count or feature set."""


def check_labels(
    segment: Any, *, num_classes: int, ignore_index: int, where: str, fix: str | None = None
) -> None:
    """Raise ``LabelRangeError`` if ``segment`` holds a label that is neither a class
    (``0..num_classes-1``) nor ``ignore_index``; the message counts and lists them."""
    import torch

    seg = segment if isinstance(segment, torch.Tensor) else torch.as_tensor(np.asarray(segment))
    if seg.numel() == 0:
        return
    bad = (seg != ignore_index) & ((seg < 0) | (seg >= num_classes))
    if not bool(bad.any()):
        return
    values, counts = torch.unique(seg[bad].cpu(), return_counts=True)
    pairs = zip(values[:8].tolist(), counts[:8].tolist(), strict=True)
    listing = ", ".join(f"{v} ({c} points)" for v, c in pairs)
    more = f" and {len(values) - 8} more value(s)" if len(values) > 8 else ""
    fix = fix or (
        "Map them to a class or to the ignore index, or set data.num_classes (and "
        "data.class_names) to the dataset's class count"
    )
    raise LabelRangeError(
        f"{where}: {int(bad.sum())} label(s) outside the {num_classes} classes "
        f"0..{num_classes - 1} and not the ignore index {ignore_index}: {listing}{more}. {fix}"
    )


def check_checkpoint_data(stored: Mapping[str, Any], data: Mapping[str, Any], *, ckpt: str) -> None:
    """Refuse a data config whose class count or input channels differ from those a
    checkpoint's network was built with (``stored``: the checkpoint's run config)."""
    model = stored.get("model") or {}
    net = model.get("net") or {}
    sdata = stored.get("data") or {}
    trained_k = model.get("num_classes", net.get("num_classes"))
    trained_c = net.get("in_channels", sdata.get("in_channels"))
    problems = []
    k = data.get("num_classes")
    names = list(data.get("class_names") or [])
    if trained_k is not None and k is not None and int(k) != int(trained_k):
        problems.append(
            f"data.num_classes={k} ({len(names)} class_names) but the checkpoint predicts "
            f"{trained_k} classes ({list(sdata.get('class_names') or [])})"
        )
    elif trained_k is not None and names and len(names) != int(trained_k):
        problems.append(
            f"data.class_names lists {len(names)} classes but the checkpoint predicts {trained_k}"
        )
    c = data.get("in_channels")
    if trained_c is not None and c is not None and int(c) != int(trained_c):
        problems.append(
            f"data.in_channels={c} (feat_keys={list(data.get('feat_keys') or [])}) but the "
            f"checkpoint's network takes {trained_c} input channels "
            f"(feat_keys={list(sdata.get('feat_keys') or [])})"
        )
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {ckpt} does not fit this data: " + "; ".join(problems) + ". Evaluate "
            "it on data with the classes and features it was trained with (drop the data "
            "overrides), or train a model for this data: pointseg-train data=<this dataset>"
        )


def explain_state_dict_error(err: RuntimeError, *, ckpt: str) -> CheckpointMismatchError | None:
    """A short message for ``load_state_dict``'s "size mismatch" error, or None."""
    found = re.findall(
        r"size mismatch for ([\w.]+): copying a param with shape torch.Size\((\[[^\]]*\])\) "
        r"from checkpoint, the shape in current model is torch.Size\((\[[^\]]*\])\)",
        str(err),
    )
    if not found:
        return None
    name, have, want = found[0]
    return CheckpointMismatchError(
        f"checkpoint {ckpt} holds weights of another shape than the network built from its "
        f"config: {name} is {have} in the file, {want} in the network ({len(found)} tensor(s) "
        "differ; a different class count or input feature set). Use the checkpoint with the "
        "config it was trained with, or retrain"
    )


# ---- Hydra entry points ------------------------------------------------------------------
def _leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return
    for key in node:
        full = f"{prefix}{key}"
        yield full
        try:
            child = node._get_node(key)
        except Exception:
            continue
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from _leaf_keys(child, f"{full}.")


def _composed_keys(
    config_name: str, overrides: Sequence[str], conf_dir: str
) -> tuple[Any, list[str]] | None:
    """The config with the overrides' config groups chosen (else the plain defaults) and its
    dotted leaf keys; None if neither composes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    sets = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "-"))]
    groups = [o for o in sets if "." not in o.split("=", 1)[0]]
    cfg = None
    for trial in (groups, []):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
                cfg = compose(config_name=config_name, overrides=list(trial))
            break
        except Exception:
            continue
        finally:
            GlobalHydra.instance().clear()
    return None if cfg is None else (cfg, list(_leaf_keys(cfg)))


def _closest_key(cfg: Any, key: str, keys: list[str], cutoff: float = 0.6) -> str | None:
    """The existing key closest to ``key``: among its siblings when its parent exists."""
    from omegaconf import OmegaConf

    parent, leaf = key.rsplit(".", 1) if "." in key else ("", key)
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if node is not None and hasattr(node, "keys"):  # the parent exists: compare leaf names
        close = difflib.get_close_matches(leaf, [str(k) for k in node], 1, cutoff)
        return f"{parent}.{close[0]}" if close and parent else (close[0] if close else None)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=cutoff)
    return close[0] if close else None


def _target_option(cfg: Any, key: str) -> str | None:
    """The ``_target_`` of ``key``'s parent node when ``key``'s last part is one of its
    keyword parameters (``trainer.accumulate_grad_batches``: a Lightning Trainer option)."""
    import inspect

    import hydra
    from omegaconf import OmegaConf

    if "." not in key:
        return None
    parent, leaf = key.rsplit(".", 1)
    node = OmegaConf.select(cfg, parent, default=None)
    target = node.get("_target_") if node is not None and hasattr(node, "get") else None
    if not isinstance(target, str):
        return None
    try:
        params = inspect.signature(hydra.utils.get_object(target)).parameters
    except Exception:
        return None
    return target if leaf in params else None


def key_hints(config_name: str, overrides: Sequence[str], conf_dir: str) -> list[str]:
    """Hint lines ("did you mean ...") for the ``key=value`` overrides naming no config key."""
    sets = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "-"))]
    composed = _composed_keys(config_name, overrides, conf_dir)
    if composed is None:
        return []
    cfg, keys = composed
    hints = []
    for item in sets:
        key = item.split("=", 1)[0].strip()
        if "." not in key or key in keys or key.startswith("hydra."):  # Hydra's own settings
            continue
        target = _target_option(cfg, key)
        close = _closest_key(cfg, key, keys)
        if target:  # a real option of the class the node builds, which the config leaves out
            hints.append(
                f"hint: '{key}' is an option of {target} that the config does not set; add it "
                f"with +{item}"
            )
        elif close:
            hints.append(f"hint: '{key}' is not a config key; did you mean {close}?")
        else:
            hints.append(
                f"hint: '{key}' is not a config key (print them all with --cfg job); to add a "
                f"new key, write +{item}"
            )
    return hints


def added_key_warnings(config_name: str, overrides: Sequence[str], conf_dir: str) -> list[str]:
    """Warnings for ``+key=value`` overrides that add a key next to a very similar one.

    Hydra accepts any new key after ``+``, so ``+trainer.max_epoch=3`` runs with the default
    epochs and the typo unused; this names the key that was probably meant.
    """
    adds = [o[1:] for o in overrides if o.startswith("+") and not o.startswith("++") and "=" in o]
    if not adds:
        return []
    composed = _composed_keys(config_name, overrides, conf_dir)
    if composed is None:
        return []
    cfg, keys = composed
    out = []
    for item in adds:
        key = item.split("=", 1)[0].strip()
        if key in keys:
            continue  # Hydra itself refuses to add an existing key
        close = _closest_key(cfg, key, keys, cutoff=0.85)  # a typo, not a deliberate new key
        if close and close != key:
            out.append(
                f"warning: '+{key}' adds a new config key; did you mean {close}? "
                f"(to change it, write {close}={item.split('=', 1)[1]})"
            )
    return out


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message alone tells the user what to fix (no traceback needed)."""
    from pointseg.checkpoint import CheckpointReadError
    from pointseg.io import PointFileError

    return (
        PointFileError,
        DataError,
        CheckpointMismatchError,
        CheckpointReadError,  # includes UntrustedCheckpointError
        FileNotFoundError,
    )


SPCONV_HINT = (
    "spconv is not installed (or does not load): pointseg's sparse convolutions need it. "
    "Install one variant: pip install spconv==2.3.8 on the CPU, or spconv-cu126==2.3.8 with "
    "CUDA 12 (also the extras pointseg[cpu], pointseg[cu126]; see README, Install)"
)


def missing_spconv(err: BaseException | None) -> bool:
    """Whether ``err`` (or an exception it was raised from, e.g. Hydra's "Error locating
    target") is the failed import of spconv or of its cumm runtime."""
    while err is not None:
        if isinstance(err, ImportError) and (err.name or "").split(".")[0] in ("spconv", "cumm"):
            return True
        err = err.__cause__ or err.__context__
    return False


def guard_task(
    prog: str, *, needs_spconv: Callable[[Any], bool] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Hydra task: user errors (and a missing spconv) become
    ``<prog>: error: <message>``, exit status 2; what the task prints reaches its log file.
    ``needs_spconv(cfg)``: whether this run needs spconv (default: always)."""
    import functools
    import importlib.util

    from omegaconf.errors import MissingMandatoryValue

    from pointseg.cli import output_to_log

    def wrap(task: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(task)
        def run(*args: Any, **kwargs: Any) -> Any:
            with output_to_log():
                try:
                    cfg = args[0] if args else None
                    needed = needs_spconv is None or needs_spconv(cfg)
                    if needed and importlib.util.find_spec("spconv") is None:
                        raise ModuleNotFoundError("No module named 'spconv'", name="spconv")
                    return task(*args, **kwargs)
                except user_errors() as err:
                    print(f"{prog}: error: {err}", file=sys.stderr)
                    sys.exit(INPUT_ERROR_EXIT)
                except MissingMandatoryValue as err:  # a required key unset past run_hydra
                    key = getattr(err, "full_key", None) or "?"
                    print(f"{prog}: error: missing required option {key}=...", file=sys.stderr)
                    sys.exit(INPUT_ERROR_EXIT)
                except Exception as err:
                    if not missing_spconv(err):
                        raise
                    print(f"{prog}: error: {SPCONV_HINT}", file=sys.stderr)
                    sys.exit(INPUT_ERROR_EXIT)

        return run

    return wrap


def missing_checkpoint(argv: Sequence[str]) -> str | None:
    """The message for a ``ckpt_path=`` on the command line that names no file or folder
    (checked before Hydra makes a run folder), else None. ``last`` (train: the newest run),
    interpolations and multirun sweeps are left to the command."""
    from pathlib import Path

    if any(a in ("-m", "--multirun") for a in argv):
        return None
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("ckpt_path=")]
    value = given[-1].strip("'\"") if given else ""
    if value in ("", "null", "last") or "${" in value or Path(value).exists():
        return None
    from pointseg.checkpoint import missing_checkpoint_message

    return missing_checkpoint_message(value)


def run_hydra(hydra_main: Callable[[], Any], config_name: str) -> None:
    """Run a ``@hydra.main`` function: ``--help``, missing required options and a
    ``ckpt_path`` that does not exist are answered here (no run folder); when Hydra fails,
    add a hint for misspelt override keys."""
    from pointseg.cli import command_help, missing_message, missing_options, quiet_third_party
    from pointseg.utils import CONF_DIR

    prog = f"pointseg-{config_name}"
    argv = sys.argv[1:]
    quiet_third_party()
    if "--help" in argv or "-h" in argv:
        print(
            command_help(
                prog, config_name, CONF_DIR, [a for a in argv if a not in ("-h", "--help")]
            )
        )
        sys.exit(0)
    missing = missing_options(config_name, argv, CONF_DIR)
    if missing:
        print(missing_message(prog, config_name, missing, CONF_DIR), file=sys.stderr)
        sys.exit(INPUT_ERROR_EXIT)
    no_ckpt = missing_checkpoint(argv)
    if no_ckpt:
        print(f"{prog}: error: {no_ckpt}", file=sys.stderr)
        sys.exit(INPUT_ERROR_EXIT)
    try:
        for line in added_key_warnings(config_name, sys.argv[1:], str(CONF_DIR)):
            print(line, file=sys.stderr)
    except Exception:  # a warning is a courtesy: never stop the run for it
        pass
    try:
        hydra_main()
    except SystemExit as stop:
        if stop.code not in (0, None, INPUT_ERROR_EXIT):
            overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
            try:
                hints = key_hints(config_name, overrides, str(CONF_DIR))
            except Exception:  # a hint is a courtesy: never mask Hydra's own message
                hints = []
            for line in hints:
                print(line, file=sys.stderr)
        raise
