"""The package's shape: no import circle (function-local imports included), and checkpoints
written before modules moved still load."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package`` (packages by their
    ``__init__``)."""
    mods = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, known) -> set[str]:
    """The known modules one import statement loads (``from pkg import sub`` names ``sub``,
    ``from mod import name`` names ``mod``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".")
        else:
            base = node.module or ""
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
        names = subs if len(subs) == len(node.names) else [base, *subs]
    out = set()
    for name in names:
        while name and name not in known:  # a name inside a module: the module
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    mods = module_files(package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[mod] |= imported(mod, path, node, mods)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_planted_circle(tmp_path):
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from demo.sub.b import g\n")  # function-local
    (pkg / "sub" / "__init__.py").write_text("from demo.sub.c import h\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")  # relative, back to a
    (pkg / "sub" / "c.py").write_text("from demo.sub import b\n")  # a submodule, not sub
    assert cycles(import_graph(pkg)) == [["demo.a", "demo.sub.b"]]


@pytest.mark.parametrize("package", ["pointseg", "scripts/benchmarks"])
def test_no_import_circle(package):
    graph = import_graph(ROOT / package)
    assert len(graph) > 5  # the package was found and read
    found = cycles(graph)
    detail = [{m: sorted(graph[m] & set(c)) for m in c} for c in found]
    assert not found, f"import circles (module -> the circle's modules it imports): {detail}"


MAX_LINES = 400


@pytest.mark.parametrize("folder", ["pointseg", "scripts"])
def test_no_file_is_over_400_lines(folder):
    """A file a newcomer can read in one sitting: split along its ideas when it grows."""
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines (split them along their ideas): {long}"


def test_las_files_are_read_and_written_in_one_module():
    """Every LAS/LAZ/COPC point read and write goes through ``pointseg.io.las_file`` (and the
    COPC node writer it calls): no other module iterates a laspy reader's chunks or opens a
    LAS file for writing, and the ASPRS code table has one home (``pointseg.io.las``)."""
    homes = {"pointseg/io/las_file.py"}
    offenders = {}
    for path in sorted((ROOT / "pointseg").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            reads = isinstance(node, ast.Attribute) and node.attr in (
                "chunk_iterator",
                "write_points",
            )
            if reads and rel not in homes:
                offenders.setdefault(rel, []).append(f"{node.attr} (line {node.lineno})")
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if (
                        isinstance(t, ast.Name)
                        and t.id == "ASPRS_CODES"
                        and rel != "pointseg/io/las.py"
                    ):
                        offenders.setdefault(rel, []).append(f"ASPRS_CODES (line {node.lineno})")
    assert not offenders, f"LAS reads/writes outside pointseg/io/las_file.py: {offenders}"


PRE_MOVE = ROOT / "tests" / "data" / "pre_move_synthetic.ckpt"


def test_a_checkpoint_written_before_the_moves_still_loads(tmp_path):
    """``tests/data/pre_move_synthetic.ckpt``: a tiny synthetic-room run trained by pointseg
    before the predict/viz subpackages and the recipe module existed, with its train
    transforms naming ``RandomRotate`` at its first home, ``pointseg.data.transforms``."""
    import subprocess
    import sys

    import hydra
    import torch

    from pointseg.checkpoint import load_checkpoint
    from pointseg.data.augment import RandomRotate
    from pointseg.data.datasets.synthetic import SyntheticRooms
    from pointseg.segmenter import Segmenter

    raw = torch.load(PRE_MOVE, map_location="cpu", weights_only=True)
    old = raw["pointseg_config"]["data"]["train_transforms"][0]["_target_"]
    assert old == "pointseg.data.transforms.RandomRotate"  # the fixture holds the old path
    ckpt = load_checkpoint(PRE_MOVE)
    first = ckpt["pointseg_config"]["data"]["train_transforms"][0]
    assert first["_target_"] == "pointseg.data.augment.RandomRotate"
    assert isinstance(hydra.utils.instantiate(first), RandomRotate)  # as fine-tuning builds it

    seg = Segmenter.from_checkpoint(PRE_MOVE, device="cpu")
    scene = SyntheticRooms(split="val", num_scenes=1, seed=0)[0]
    labels = seg.predict(scene).labels
    assert len(labels) == len(scene["coord"]) and labels.max() < seg.num_classes

    run = subprocess.run(
        [sys.executable, "-m", "pointseg.eval", f"ckpt_path={PRE_MOVE}",
         f"hydra.run.dir={tmp_path / 'eval'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["val/miou"] <= 1.0 and "confusion_matrix" in metrics
