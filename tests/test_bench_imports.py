"""Every bench script's imports resolve, checked without running the scripts: each ``from mmfuse... import
NAME`` (at the top or inside a function) names something the module has, each ``import mmfuse.x`` a module,
each ``mmfuse.NAME`` after ``import mmfuse`` an attribute, and each ``from common import NAME`` something
bench/common.py defines. A refactor that moves or renames what a benchmark uses fails here, not months later
when someone runs the benchmark."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.rglob("*.py"))


def local_modules() -> dict[str, Path]:
    """The modules a script may import from bench/ itself (the folder the scripts put on sys.path)."""
    return {p.stem: p for p in BENCH.glob("*.py")}


def defined_names(path: Path) -> set[str]:
    """The names a module defines at its top level (functions, classes, assignments, imports)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    local = local_modules()
    out, root_aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "mmfuse":
                    continue
                try:
                    importlib.import_module(alias.name)
                except ImportError as e:
                    out.append(f"line {node.lineno}: import {alias.name}: {e}")
                if alias.name == "mmfuse" or alias.asname is None:
                    root_aliases.add(alias.asname or "mmfuse")
        elif isinstance(node, ast.ImportFrom) and not node.level:
            module = node.module or ""
            if module in local:
                missing = [a.name for a in node.names if a.name not in defined_names(local[module])]
                out += [f"line {node.lineno}: from {module} import {n}: bench/{module}.py has no {n}" for n in missing]
                continue
            if module.split(".")[0] != "mmfuse":
                continue
            try:
                mod = importlib.import_module(module)
            except ImportError as e:
                out.append(f"line {node.lineno}: from {module} import ...: {e}")
                continue
            for alias in node.names:
                if alias.name == "*" or hasattr(mod, alias.name):
                    continue
                try:  # a submodule not imported by its package
                    importlib.import_module(f"{module}.{alias.name}")
                except ImportError:
                    out.append(f"line {node.lineno}: from {module} import {alias.name}: {module} has no {alias.name}")
    if root_aliases:
        import mmfuse

        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in root_aliases
                    and not hasattr(mmfuse, node.attr)):
                try:
                    importlib.import_module(f"mmfuse.{node.attr}")
                except ImportError:
                    out.append(f"line {node.lineno}: mmfuse.{node.attr}: mmfuse has no {node.attr}")
    return out


def test_the_bench_scripts_are_found():
    names = {p.relative_to(BENCH).as_posix() for p in SCRIPTS}
    assert {"common.py", "speed/extract.py", "experiments/selection.py"} <= names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.relative_to(BENCH).as_posix() for p in SCRIPTS])
def test_every_import_of_a_bench_script_resolves(script):
    found = problems(script)
    assert not found, f"bench/{script.relative_to(BENCH).as_posix()}: " + "; ".join(found)
