"""The layers, as the imports show them (README "How it works"):

    sweep.cli                     commands and printing; imported by nothing
      └─ sweep.*                  specs, engine, reductions, results, estimate, search, figures, report
           ├─ kernels             the physics: jax, numpy and the standard library only
           └─ hardware_db         data and its schema check; never imports sweep

Every import of the project's own code is read with ``ast`` (those inside functions too, where a
circle hides best), from kernels/, hardware_db/, sweep/ and bench/ (and tests/ for the
underscore rule). The test fails on an import circle among project modules, on kernels importing
anything but jax, numpy, the standard library and kernels, on hardware_db importing sweep, on
anything importing ``sweep.cli``, and on a module reading another module's underscore names.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "hardware_db", "sweep")
SCANNED = PACKAGES + ("bench",)
KERNEL_ALLOWED = {"jax", "jaxlib", "numpy", "kernels"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_files(root: Path = ROOT, folders=SCANNED) -> dict[str, Path]:
    files = {}
    for pkg in folders:
        for path in sorted((root / pkg).rglob("*.py")):
            files[module_name(path, root)] = path
    return files


def _resolve(mod: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module name of a relative import."""
    if level == 0:
        return target or ""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(mod: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, resolved: a
    ``from package import name`` naming a submodule counts as importing that submodule."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, is_package, node.level, node.module)
            plain = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    out.append((sub, [], node.lineno))
                else:
                    plain.append(alias.name)
            if plain or not node.names:
                out.append((base, plain, node.lineno))
    return out


def underscore_reads(mod: str, path: Path, known: set[str]) -> list[tuple[str, str, int]]:
    """``module._name`` read through an imported project module (``import sweep.engine as e``,
    ``from sweep import engine``): (module, name, line)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, is_package, node.level, node.module)
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                target = ".".join([aliases[value.id]] + chain[:0:-1])
                if target in known or aliases[value.id] in known:
                    found.append((target, node.attr, node.lineno))
    return found


def graph(root: Path = ROOT, folders=SCANNED) -> tuple[dict[str, Path], dict[str, set[str]]]:
    files = project_files(root, folders)
    known = set(files)
    edges = {m: set() for m in files}
    for mod, path in files.items():
        for target, _, _ in imports_of(mod, path, known):
            if target in known and target != mod:
                edges[mod].add(target)
    return files, edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def circle_path(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One circle through a strongly connected component, as a path back to its first module."""
    start, inside = component[0], set(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(edges[path[-1]] & inside):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return component


def violations(root: Path = ROOT) -> list[str]:
    """Every broken rule, one line each (empty: the layers hold)."""
    files, edges = graph(root)
    known = set(files)
    bad = [f"import circle: {' -> '.join(circle_path(c, edges))} (among {', '.join(c)})" for c in cycles(edges)]
    stdlib = set(sys.stdlib_module_names)
    for mod, path in files.items():
        for target, names, line in imports_of(mod, path, known):
            top = target.split(".")[0]
            where = f"{path.relative_to(root)}:{line}"
            if (mod.split(".")[0] == "kernels" and top not in KERNEL_ALLOWED and top not in stdlib
                    and top != "__future__"):
                bad.append(f"{where}: kernels import {target} (only jax, numpy, the standard library, kernels)")
            if mod.split(".")[0] == "hardware_db" and top == "sweep":
                bad.append(f"{where}: hardware_db imports {target}")
            if target == "sweep.cli" or (target == "sweep" and "cli" in names):
                bad.append(f"{where}: {mod} imports the CLI (sweep.cli); nothing may")
            if target in known or target.split(".")[0] in PACKAGES:
                for n in names:
                    if n.startswith("_") and not n.startswith("__"):
                        bad.append(f"{where}: {mod} imports {target}.{n}, an underscore name")
        for target, name, line in underscore_reads(mod, path, known):
            bad.append(f"{path.relative_to(root)}:{line}: {mod} reads {target}.{name}, an underscore name")
    return bad


def test_the_layers_hold():
    assert violations() == []


def test_tests_read_no_underscore_names_of_the_project():
    files = project_files()
    known = set(files)
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        mod = "tests." + path.stem
        for target, names, line in imports_of(mod, path, known):
            if target in known:
                bad += [f"{path.name}:{line}: {target}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
        bad += [f"{path.name}:{line}: {t}.{n}" for t, n, line in underscore_reads(mod, path, known)]
    assert bad == []


def test_the_graph_sees_the_imports_it_must():
    # the checks are only as good as the graph: the known edges between the layers are in it
    _, edges = graph()
    assert "kernels.footprint" in edges["sweep.engine"]
    assert "sweep.engine" in edges["sweep.cli"]
    assert "kernels.reasons" in edges["kernels.footprint"]
    assert "sweep.reductions" in edges["sweep.plots"]  # (a `from . import reductions as red` counts)


def _copy_project(tmp_path: Path) -> Path:
    import shutil

    for pkg in SCANNED:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "out"))
    return tmp_path


@pytest.mark.parametrize("edit, words", [
    # a circle through a function-level import, as the 8-module circle of old was held together
    (("sweep/results.py", "def versions() -> dict:\n",
      "def versions() -> dict:\n    from .engine import run  # noqa\n"),
     "import circle"),
    (("kernels/flops.py", "", "\nimport xarray  # noqa\n"), "kernels import xarray"),
    (("hardware_db/__init__.py", "", "\n\ndef f():\n    import sweep.spec  # noqa\n"),
     "hardware_db imports sweep.spec"),
    (("sweep/report.py", "from .spec import KEYS\n", "from .spec import KEYS\nfrom .cli import main  # noqa\n"),
     "imports the CLI"),
    (("sweep/report.py", "from .spec import KEYS\n",
      "from .spec import KEYS\nfrom .engine import _evaluate_grid  # noqa\n"),
     "an underscore name"),
    (("sweep/report.py", "from .spec import KEYS\n",
      "from .spec import KEYS\nfrom . import engine\nX = engine._spread_x\n"),
     "reads sweep.engine._spread_x"),
])
def test_each_rule_fails_when_broken(tmp_path, edit, words):
    root = _copy_project(tmp_path)
    file, old, new = edit
    text = (root / file).read_text()
    assert old in text, (file, old)
    (root / file).write_text(text.replace(old, new, 1) if old else text + new)  # (no old: appended)
    found = violations(root)
    assert any(words in v for v in found), found
