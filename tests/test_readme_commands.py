"""Every ``pointseg-*`` command line in README.md and docs/**/*.md is a command that works.

Collected from fenced code blocks and from inline code that starts with a command (error
messages quoted inline, ``pointseg-x: error: ...``, are not commands). Placeholders get a dummy
value: ``<run>`` and ``<...>`` become ``x``, a value ``...`` becomes ``x``, ``$VAR`` becomes
``1``; optional ``[key=value ...]`` parts are dropped; a multirun sweep ``a=1,2`` keeps its
first value. Hydra commands must compose with pointseg's configs and give every required
option; ``pointseg-prepare`` commands must name a dataset and options its preparer takes.
The commands in ``RUN`` are also run as written (from a temporary folder).
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from pointseg.cli import missing_options
from pointseg.prepare import PREPARERS
from pointseg.utils import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
HYDRA_COMMANDS = {"train", "eval", "predict", "prune", "viz", "submit", "export"}
# fast enough to run as written here: one train and one val batch of the default config
RUN = ["pointseg-train debug=fdr"]
# deliberately wrong, to show an error message (docs/bad_input.md): they must keep failing
BROKEN = {"pointseg-train trainer.max_epoch=3"}


def _commands(path: Path) -> list[tuple[str, str]]:
    """(``file:line``, command) for each command line of a markdown file."""
    out: list[tuple[str, str]] = []
    lines = path.read_text().splitlines()
    fenced, i = False, 0
    while i < len(lines):
        line, where = lines[i], f"{path.relative_to(ROOT)}:{i + 1}"
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            m = re.search(r"(?:^|[\s/])(pointseg-[a-z]+(?:\s.*)?)$", line.split(" #")[0].strip())
            if m:
                out.append((where, m.group(1).strip()))
        else:
            # a bare name in prose (`pointseg-eval`) is a mention, not a command line
            for span in re.findall(r"`(pointseg-[a-z]+ [^`]*)`", line):
                if not re.search(r"(error|hint|warning):", span):
                    out.append((where, span.strip()))
        i += 1
    return out


COMMANDS = [c for doc in DOCS for c in _commands(doc)]


def _args(command: str) -> tuple[str, list[str]]:
    """The command's name and its arguments with placeholders filled in (see the docstring)."""
    command = re.sub(r"<[^>]*>", "x", command)
    command = re.sub(r"\$\{?\w+\}?", "1", command)
    command = re.sub(r"(^|\s)\[[^\]=]*=[^\]]*\]|(^|\s)\[--[^\]]*\]", " ", command)  # [k=v ...]
    words = shlex.split(command)
    prog = words[0].removeprefix("pointseg-")
    args = [re.sub(r"=\.\.\.$", "=x", w) for w in words[1:] if w != "..."]
    return prog, args


def test_commands_are_found() -> None:
    names = {_args(c)[0] for _, c in COMMANDS}
    assert {"train", "eval", "predict", "prune", "viz", "prepare"} <= names
    assert set(RUN) <= {c for _, c in COMMANDS}, "a command of RUN left the docs: update RUN"


def _check_hydra(prog: str, args: list[str], user_dir: Path) -> None:
    """Compose; with ``--config-dir``, the user's group options it names are empty files."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        if args[i] in ("--config-dir", "-cd", "--cfg", "-c", "--package", "-p"):
            flags.append(args[i])
            i += 1  # the flag's value (a config dir is the user's: user_dir stands in)
        elif args[i].startswith("-"):
            flags.append(args[i])
        else:
            overrides.append(args[i])
        i += 1
    if "-m" in flags or "--multirun" in flags:  # a sweep: compose its first point
        overrides = [re.sub(r"=([^,\[]+),.*$", r"=\1", o) for o in overrides]
    if "--config-dir" in flags or "-cd" in flags:
        for group, option in (o.split("=", 1) for o in overrides if "=" in o):
            if (CONF_DIR / group).is_dir() and not (CONF_DIR / group / f"{option}.yaml").exists():
                (user_dir / group).mkdir(parents=True, exist_ok=True)
                (user_dir / group / f"{option}.yaml").write_text("# @package _global_\n")
        overrides.append(f"hydra.searchpath=['file://{user_dir}']")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name=prog, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    if {"--help", "-h", "--cfg", "-c", "--info", "--hydra-help"} & set(flags):
        return  # nothing runs: required options may stay unset
    missing = missing_options(prog, [o for o in overrides if "searchpath" not in o], CONF_DIR)
    assert not missing, f"the command leaves required option(s) {missing} unset"


def _check_prepare(args: list[str]) -> None:
    dataset, options = args[0], args[1:]
    assert dataset in PREPARERS, f"no preparer {dataset!r} (have {sorted(PREPARERS)})"
    module = __import__(PREPARERS[dataset], fromlist=["prepare"])
    accepted = set(inspect.signature(module.prepare).parameters)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in inspect.signature(module.prepare).parameters.values()
    )
    skip = False
    for word in options:
        if skip:
            skip = False
        elif word in ("--workers",):
            skip = True
        elif word == "--overwrite":
            continue
        else:
            assert "=" in word, f"{word!r}: options are key=value"
            key = word.split("=", 1)[0]
            assert key in {"src", "dst", "workers", "overwrite"} | accepted or takes_any, (
                f"pointseg-prepare {dataset} takes no option {key!r}"
            )


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_composes(where: str, command: str, tmp_path: Path) -> None:
    prog, args = _args(command)
    if prog == "prepare":
        _check_prepare(args)
    elif command in BROKEN:
        with pytest.raises(Exception, match="max_epoch"):
            _check_hydra(prog, args, tmp_path)
    else:
        assert prog in HYDRA_COMMANDS, f"{where}: unknown command pointseg-{prog}"
        _check_hydra(prog, args, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN)
def test_fast_commands_run(command: str, tmp_path: Path) -> None:
    prog, args = _args(command)
    env = {**os.environ, "POINTSEG_ROOT": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", f"pointseg.{prog}", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run_dir:" in done.stdout


# how docs/predict.md writes a default that is not the yaml value itself
_DOC_DEFAULTS = {
    "required": "???",
    "by extension": "null",
    "by column count": "null",
    "<run dir>/predictions": "${paths.output_dir}/predictions",
}


def _option_table(path: Path) -> list[tuple[str, str]]:
    """(key, default as the doc writes it) for every option of the first table whose header
    is ``| option | default | meaning |``; ``a` / `b`` and ``a`, `b`` rows name several keys
    (``inference.x` / `y``: both under ``inference.``) with one default each or one for all."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| option | default |"))
    rows: list[tuple[str, str]] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names, default = (c.strip() for c in line.strip("|").split("|")[:2])
        keys = re.findall(r"`([^`]+)`", names)
        if default.startswith("`"):
            defaults = re.findall(r"`([^`]+)`", default)
        else:
            defaults = [d.strip() for d in default.split(" / ")]
        if len(defaults) == 1:
            defaults *= len(keys)
        assert len(defaults) == len(keys), line
        prefix = keys[0].rpartition(".")[0]
        for key, value in zip(keys, defaults, strict=True):
            key = key if "." in key or not prefix else f"{prefix}.{key}"
            rows.append((key, value))
    return rows


def test_predict_doc_options_are_the_configs() -> None:
    """Every option of docs/predict.md's table is a key of conf/predict.yaml, with the default
    the doc gives (units and digit groups left out: ``16 m`` is 16, ``400 000`` is 400000)."""
    import yaml

    from pointseg.cli import parse_config_file

    conf = {o.key: o.default for o in parse_config_file(CONF_DIR / "predict.yaml")[2]}
    rows = _option_table(ROOT / "docs" / "predict.md")
    assert len(rows) > 15
    for key, doc in rows:
        assert key in conf, f"docs/predict.md names {key}, which conf/predict.yaml does not have"
        doc = _DOC_DEFAULTS.get(doc, doc)
        doc = re.sub(r"(?<=\d) (?=\d{3}\b)", "", doc.removesuffix(" m"))
        assert yaml.safe_load(doc) == yaml.safe_load(conf[key]), (key, doc, conf[key])
