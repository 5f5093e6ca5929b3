"""What every pointseg console script shares around Hydra: ``--help`` built from the command's
own config, required options checked before a run folder exists, a quiet console (two
third-party notices filtered), and the printed output copied into the run's log file.

``pointseg.guards.run_hydra`` and ``guard_task`` call these; the texts come from the config
files themselves (the comment above each key is its help line), so there is one home for them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

# where each command is documented (paths in the pointseg repository)
DOCS = {
    "train": "README.md (Train)",
    "eval": "README.md (Evaluate)",
    "predict": "docs/predict.md",
    "prune": "docs/pruning.md",
    "viz": "README.md (Visualize)",
    "export": "docs/deploy.md",
}
# groups every command composes but nobody picks on the command line
_HIDDEN_GROUPS = {"paths", "hydra", "_self_"}
# Hydra flags after which nothing runs (so required options need not be given)
_NO_RUN_FLAGS = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc")


# ---- --help ------------------------------------------------------------------------------
class _Option(NamedTuple):
    """A config key, its default (as written in the yaml) and the comment above it."""

    key: str
    default: str
    comment: str


def parse_config_file(path: Path) -> tuple[list[str], list[str], list[_Option]]:
    """The header comment lines, the config groups of the defaults list and the options
    (dotted key, default as written, the comment lines right above it) of a primary config."""
    header: list[str] = []
    groups: list[str] = []
    options: list[_Option] = []
    comment: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    in_defaults, seen_key = False, False
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            comment.append(text)
            if not seen_key:
                header.append(text)
            continue
        seen_key = True
        indent = len(raw) - len(raw.lstrip())
        if in_defaults and stripped.startswith("- "):
            group = stripped[2:].split(":", 1)[0].strip().removeprefix("override ")
            if ":" in stripped and group not in _HIDDEN_GROUPS:
                groups.append(group)
            comment = []
            continue
        in_defaults = False
        m = re.match(r"([A-Za-z_][\w]*)\s*:\s*(.*)$", stripped)
        if not m:  # a list item or a continuation: not an option of its own
            comment = []
            continue
        key, value = m.groups()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        full = ".".join([k for _, k in stack] + [key])
        if not stack and key == "defaults":
            in_defaults = True
        elif value.split("#", 1)[0].strip():
            default, _, inline = value.partition(" #")
            text = " ".join(comment) or inline.strip()  # the comment above, else the inline one
            options.append(_Option(full, default.strip(), text))
        else:  # a mapping (or a block list): its own comment, if any, heads its keys
            if comment:
                options.append(_Option(f"{full}.*", "", " ".join(comment)))
            stack.append((indent, key))
        comment = []
    return header, groups, options


def _usage(prog: str, header: list[str]) -> str:
    """The example command line of a config's header comment (``# pointseg-x key=<...>``)."""
    for line in header:
        if line.startswith(prog):
            line = line.split("`")[1] if line.count("`") >= 2 else line
            return line.split(": ", 1)[0].strip()
    return ""


def _chosen(config_name: str, conf_dir: Path, argv: Sequence[str]) -> dict[str, str]:
    """Group -> option the command composes: ``group=option`` on the command line, else the
    primary config's defaults list."""
    text = (conf_dir / f"{config_name}.yaml").read_text()
    block = re.search(r"^defaults:\n((?:[ \t]+-.*\n|[ \t]*#.*\n)+)", text, re.M)
    entry = r"^\s*-\s*(?:override\s+)?(\w+)\s*:\s*([\w.]+)"
    found = re.findall(entry, block.group(1) if block else "", re.M)
    chosen = {g: o for g, o in found if o != "null"}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and "." not in key and key in chosen and value:
            chosen[key] = value
    return chosen


def group_options(conf_dir: str | Path, group: str, option: str) -> list[_Option]:
    """The options a group's file sets, with their full keys (``trainer.max_epochs``), those of
    the files its defaults list extends first; ``_target_``-like keys, list items (transforms)
    and derived values (one ``${...}`` interpolation) are left out."""
    path = Path(conf_dir) / group / f"{option}.yaml"
    if not path.is_file():
        return []
    text = path.read_text()
    merged: dict[str, _Option] = {}
    block = re.search(r"^defaults:\n((?:[ \t]+-.*\n)+)", text, re.M)
    for base in re.findall(r"^\s*-\s*(\w+)\s*$", block.group(1) if block else "", re.M):
        if base != "_self_":
            merged.update((o.key, o) for o in group_options(conf_dir, group, base))
    prefix = "" if "@package _global_" in text else f"{group}."
    for o in parse_config_file(path)[2]:
        key = prefix + o.key
        leaf = key.rsplit(".", 1)[-1]
        if leaf.startswith("_") or key.endswith(".*") or "transforms." in key or not o.default:
            continue
        if re.fullmatch(r"\$\{.*\}", o.default):
            continue
        old = merged.get(key)
        merged[key] = _Option(key, o.default, o.comment or (old.comment if old else ""))
    return list(merged.values())


# commands whose --help also lists the options of the groups they compose (by default or as
# chosen on the command line: pointseg-train data=las --help)
HELP_GROUPS = {"train": ("trainer", "data")}


def command_help(
    prog: str, config_name: str, conf_dir: str | Path, argv: Sequence[str] = ()
) -> str:
    """The text ``pointseg-<command> --help`` prints (``argv``: the rest of its command line,
    whose ``group=option`` choices pick the group options shown)."""
    conf_dir = Path(conf_dir)
    header, groups, options = parse_config_file(conf_dir / f"{config_name}.yaml")
    usage = _usage(prog, header)
    about = [h for h in header if not h.startswith(prog) and not h.startswith("_self_")]
    lines = [f"usage: {usage or prog + ' [key=value ...]'}", *about]
    options = [o for o in options if o.key != "task_name"]  # names the log folder only
    required = [o for o in options if o.default == "???"]
    rest = [o for o in options if o.default != "???"]
    width = 100

    def table(title: str, opts: list[_Option]) -> None:
        if not opts:
            return
        lines.extend(["", title])
        for o in opts:
            left = f"  {o.key}" + (f"={o.default}" if o.default and o.default != "???" else "")
            text = o.comment or "-"
            if len(left) > 30:
                lines.append(left)
                left = ""
            lines.append(
                textwrap.fill(text, width, initial_indent=f"{left:<32}", subsequent_indent=" " * 32)
            )

    table("required:", required)
    table("options (key=value; the default is shown):", rest)
    chosen = _chosen(config_name, conf_dir, argv)
    for group in HELP_GROUPS.get(config_name, ()):
        if group in chosen:
            opts = group_options(conf_dir, group, chosen[group])
            table(
                f"{group} options ({group}={chosen[group]}; pick another with {group}=...):", opts
            )
    if groups:
        lines.extend(["", "config groups (group=option):"])
        for group in groups:
            choices = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
            lines.append(f"  {group}: {', '.join(choices)}")
    lines += [
        "",
        "more:",
        "  --cfg job                     print every key of the composed config; runs nothing",
        "  --config-dir DIR              also read configs from DIR (e.g. DIR/data/mine.yaml",
        "                                gives data=mine); pointseg's own files take precedence",
        "  --hydra-help                  Hydra's own flags (multirun -m, tab completion, ...)",
        f"docs: {DOCS.get(config_name, 'README.md')} in the pointseg repository",
    ]
    return "\n".join(lines)


# ---- required options --------------------------------------------------------------------
def missing_options(config_name: str, argv: Sequence[str], conf_dir: str | Path) -> list[str]:
    """The required (``???``) keys the command line leaves unset, or [] when the config does
    not compose here (Hydra then reports that itself) or nothing will run (``--cfg``...)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if any(a.split("=", 1)[0] in _NO_RUN_FLAGS for a in argv):
        return []
    overrides, extra_dirs, skip = [], [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--config-dir", "-cd"):
            extra_dirs.append(argv[i + 1] if i + 1 < len(argv) else "")
            skip = True
        elif arg.startswith("--config-dir="):
            extra_dirs.append(arg.split("=", 1)[1])
        elif arg in ("-m", "--multirun") or arg.startswith("-"):
            return []  # other flags (a config name, multirun sweeps): leave it to Hydra
        else:
            overrides.append(arg)
    if extra_dirs:
        paths = ",".join(f"'file://{Path(d).resolve()}'" for d in extra_dirs)
        overrides.append(f"hydra.searchpath=[{paths}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    except Exception:
        return []
    finally:
        GlobalHydra.instance().clear()
    return list(_missing_keys(cfg))


def _missing_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys whose value is ``???`` (``OmegaConf.missing_keys`` would resolve
    interpolations such as ``${hydra:runtime.output_dir}``, unset outside a Hydra run)."""
    from omegaconf import DictConfig, OmegaConf

    for key in node:
        child = node._get_node(key)
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        elif isinstance(child, DictConfig):
            yield from _missing_keys(child, f"{prefix}{key}.")


def missing_message(prog: str, config_name: str, keys: list[str], conf_dir: str | Path) -> str:
    header, _, _ = parse_config_file(Path(conf_dir) / f"{config_name}.yaml")
    usage = _usage(prog, header)
    given = " ".join(f"{k}=..." for k in keys)
    example = f", e.g. {usage}" if usage else ""
    return (
        f"{prog}: error: missing required option{'s' if len(keys) > 1 else ''} {given}: give "
        f"{'them' if len(keys) > 1 else 'it'} on the command line{example} "
        f"(see {prog} --help)"
    )


# ---- quiet console -----------------------------------------------------------------------
class _DropMessages(logging.Filter):
    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


# (logger, start of the message): notices that concern torch's and Lightning's own code
_NOTICES = (
    # pointseg never fx-traces; a library's is_fx_tracing() call makes torch warn anyway
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true"),
    # an advertisement printed by every Trainer
    ("pytorch_lightning.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
    ("lightning_fabric.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
)


def quiet_third_party() -> None:
    """Filter the torch.fx and Lightning notices above, and the deprecation warning Lightning's
    own use of ``torch.utils._pytree.LeafSpec`` raises on every training run."""
    for name, start in _NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and start in f.starts for f in logger.filters):
            logger.addFilter(_DropMessages(start))
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # pointseg-predict's writer records each file by name, never by batch index
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched")


class ConsoleFormatter(logging.Formatter):
    """Console lines of Hydra's job logging: the message alone, ``warning:``/``error:`` before
    a message of that level (the log file keeps time, logger and level on every line)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


# ---- the run's log file ------------------------------------------------------------------
class _Tee:
    """A text stream that also sends each complete line to ``logger``; lines redrawn with
    carriage returns or terminal escapes (progress bars) stay on the console only."""

    def __init__(self, stream: TextIO, logger: logging.Logger) -> None:
        self._stream, self._logger, self._buf = stream, logger, ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.strip() and "\r" not in line and "\x1b" not in line:
                self._logger.info(line.rstrip())
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def output_to_log() -> Iterator[None]:
    """While a Hydra job runs, copy what it prints (results, tables, warnings) into the job's
    log file (``<run_dir>/<task_name>.log``, see conf/hydra/default.yaml)."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        yield
        return
    out = logging.getLogger("pointseg.output")
    out.propagate, out.handlers = False, files
    out.setLevel(logging.INFO)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, out), _Tee(sys.stderr, out)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        out.handlers = []
