"""The import-graph rule, read from the source with ``ast`` (nothing of mmfuse runs but in (c)):

(a) mmfuse's modules import each other without cycles: module-level imports (those run by ``import``,
    ``if``/``try`` blocks and class bodies included, ``if TYPE_CHECKING:`` left out) form a DAG; imports
    inside functions (lazy ones) are counted apart, and only the parts they join must not form a cycle
    (``test_imports_flow_one_way``);
(b) only the command line (``mmfuse/cli.py`` or a ``mmfuse/cli/`` package) imports typer;
(c) ``import mmfuse`` imports none of the optional extras (dask, yaml);
(d) no library file is over MAX_LINES lines.

Everything is found by walking the package folder, so the rules hold while modules move into packages."""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mmfuse

ROOT = Path(mmfuse.__file__).parent
MAX_LINES = 450
OPTIONAL_EXTRAS = ("dask", "distributed", "yaml")  # setup.cfg's [grid] extra: imported only when used
CLI_ONLY = ("typer",)


def module_name(path: Path) -> str:
    """mmfuse/heads/run.py -> mmfuse.heads.run; mmfuse/heads/__init__.py -> mmfuse.heads."""
    return ".".join(("mmfuse", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")


def ancestors(mod: str) -> list[str]:
    """mmfuse.a.b -> [mmfuse.a, mmfuse] (the packages Python runs before mmfuse.a.b)."""
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.Module):
    """(node, lazy) for every import statement: lazy when it runs only when a function is called (or only
    for type checkers)."""
    def walk(node: ast.AST, lazy: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, lazy
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, True)
            elif isinstance(child, ast.If) and is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), lazy)
            else:
                yield from walk(child, lazy)
    yield from walk(tree, False)


@dataclass
class Graph:
    modules: dict[str, Path]
    eager: dict[str, set[str]] = field(default_factory=dict)  # module-level imports
    lazy: dict[str, set[str]] = field(default_factory=dict)  # imports inside functions
    unresolved: list[str] = field(default_factory=list)  # "module: import" of an mmfuse module that is not there
    third_party: dict[str, set[str]] = field(default_factory=dict)  # module -> top-level names it imports


def build_graph() -> Graph:
    """mmfuse's import graph, edges module -> module it makes Python run. ``from P import n`` runs P.n when
    that is a module, else P; importing a module also runs its packages, except those the importer is
    already inside (their ``__init__`` is running)."""
    # a package wins over a module file of its name (mid-move, both may exist for a while), as in Python
    g = Graph({module_name(p): p for p in sorted(ROOT.rglob("*.py"), key=lambda p: p.name == "__init__.py")})
    for mod, path in g.modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        inside = {mod, *ancestors(mod)}
        for node, lazy in imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                g.third_party.setdefault(mod, set()).update(n.split(".")[0] for n in names)
                wanted = [(n, False) for n in names if n.split(".")[0] == "mmfuse"]
            else:
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                    g.third_party.setdefault(mod, set()).add(source.split(".")[0])
                if source.split(".")[0] != "mmfuse":
                    continue
                wanted = []
                for alias in node.names:
                    if f"{source}.{alias.name}" in g.modules:
                        wanted.append((f"{source}.{alias.name}", False))  # a submodule
                    else:
                        wanted.append((source, True))  # a name defined in source's namespace
            edges = (g.lazy if lazy else g.eager).setdefault(mod, set())
            for target, namespace in wanted:
                if target not in g.modules:
                    g.unresolved.append(f"{mod}: {target}")
                    continue
                if target != mod and (namespace or target not in inside):
                    edges.add(target)
                edges.update(a for a in ancestors(target) if a not in inside)
    return g


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def library_files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def is_cli(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    return rel == Path("cli.py") or rel.parts[0] == "cli"


# --- (a) no cycles ----------------------------------------------------------------------------------------
def test_the_graph_sees_every_module_and_every_internal_import_resolves():
    g = build_graph()
    assert not g.unresolved, f"imports of mmfuse modules that do not exist: {g.unresolved}"
    assert {"mmfuse", "mmfuse.cache", "mmfuse.runs"} <= set(g.modules)
    assert "mmfuse.cache" in g.eager.get("mmfuse.runs", set())  # runs.py imports it: the walk sees imports
    cli = next(m for m in g.modules if m == "mmfuse.cli" or m.startswith("mmfuse.cli."))
    assert g.eager.get(cli) or g.lazy.get(cli)


def test_module_level_imports_form_a_dag():
    g = build_graph()
    cycle = find_cycle(g.eager)
    assert cycle is None, "module-level imports in a cycle: " + " -> ".join(cycle)


def test_imports_flow_one_way():
    """No cycle between mmfuse's parts (a subpackage counts as one part), lazy imports included."""
    root = Path(mmfuse.__file__).parent
    part = lambda mod: mod.split(".")[1] if mod.count(".") else "__init__"  # noqa: E731
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        mod = ".".join(("mmfuse", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmfuse."):
                target = node.module
            else:
                continue
            if part(mod) not in ("__init__", "cli") and part(target) != part(mod):
                edges.setdefault(part(mod), set()).add(part(target))

    def reaches(a: str, b: str, seen=()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, (*seen, n))) for n in edges.get(a, ()))

    cycles = [p for p in edges if reaches(p, p)]
    assert not cycles, {p: edges[p] for p in cycles}
    assert "runs" not in set().union(*edges.values())  # run folders are loaded from the top only


def test_find_cycle_names_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# --- (b) typer only in the command line --------------------------------------------------------------------
def test_library_code_never_imports_typer():
    g = build_graph()
    offenders = sorted(f"{g.modules[m].relative_to(ROOT.parent)} imports {name}"
                       for m, names in g.third_party.items() for name in names & set(CLI_ONLY)
                       if not is_cli(g.modules[m]))
    assert not offenders, "only mmfuse/cli.py (or a mmfuse/cli/ package) may import typer: " + "; ".join(offenders)


# --- (c) the optional extras stay optional -------------------------------------------------------------------
def test_import_mmfuse_leaves_the_optional_extras_unimported():
    code = ("import sys, mmfuse; print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))")
    done = subprocess.run([sys.executable, "-c", code, *OPTIONAL_EXTRAS], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"import mmfuse imported the optional {done.stdout.strip()}"


def test_the_command_line_starts_without_the_training_stack():
    """`mmfuse --help` and `mmfuse extract` import no scikit-learn, SciPy, matplotlib, transformers or
    torchvision until a command needs them (about 2.5 s of a 60-row extraction went to scikit-learn alone)."""
    heavy = ["sklearn", "scipy", "matplotlib", "transformers", "torchvision"]
    code = ("import sys, mmfuse.cli, mmfuse; print(' '.join(sorted({m.split('.')[0] for m in sys.modules} "
            "& set(sys.argv[1:]))))")
    done = subprocess.run([sys.executable, "-c", code, *heavy], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"the CLI's import pulled in {done.stdout.strip()}"


def test_the_lazy_packages_still_export_every_name():
    import mmfuse.finetune
    import mmfuse.grid
    import mmfuse.heads

    for package in (mmfuse, mmfuse.heads, mmfuse.grid, mmfuse.finetune):
        missing = [name for name in package.__all__ if getattr(package, name, None) is None]
        assert not missing, f"{package.__name__} lists names it cannot import: {missing}"
    assert mmfuse.grid.REFITS == ("folds", "full") and "Head" in dir(mmfuse.heads)
    import mmfuse.extract.text  # noqa: F401 - a submodule import must not shadow the function of its name
    assert callable(mmfuse.extract) and callable(mmfuse.finetune.finetune)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmfuse.grid.nope


# --- (d) file size ------------------------------------------------------------------------------------------
def test_no_library_file_is_over_the_line_limit():
    sizes = {p.relative_to(ROOT.parent): len(p.read_text().splitlines()) for p in library_files()}
    over = {str(p): n for p, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"library files over {MAX_LINES} lines: " + ", ".join(f"{p} ({n})" for p, n in over.items())
