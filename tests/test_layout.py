"""The package layout keeps its plan: imports flow one way, with no circles.

Every module's imports are read with ``ast`` (module level, inside functions and under
``TYPE_CHECKING`` alike: a circle that only closes at run time or for the type checker is still
a circle), resolved to the pinthesky modules they name, and searched for cycles.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pinthesky

PACKAGE = Path(pinthesky.__file__).parent
ROOT = PACKAGE.parent
MAX_TOP_LEVEL = 12
PROGRAMS = {"pinthesky": "daemon", "pinthesky-iot": "iot", "pitsctl": "installer"}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _named(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module an import of ``name`` executes last: ``a.b.c`` for ``a.b.c.X``."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The pinthesky modules ``module`` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            # ``from pinthesky.x import y`` imports the module ``pinthesky.x.y`` when it is one.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for name in names:
            target = _named(name, modules)
            if target is not None and target != module:
                found.add(target)
                found |= _packages_run(target, module, modules)
    return found


def _packages_run(target: str, module: str, modules: Mapping[str, Path]) -> set[str]:
    """The packages whose ``__init__`` importing ``target`` runs first, seen from outside them:
    ``import a.b.c`` runs ``a/__init__`` and ``a/b/__init__``. From inside a package its
    ``__init__`` has already run, so only the packages ``module`` is not part of count."""
    parts = target.split(".")
    out = set()
    for n in range(2, len(parts)):
        package = ".".join(parts[:n])
        if package in modules and not (module + ".").startswith(package + "."):
            out.add(package)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One circle of imports per strongly connected group of modules (Tarjan), as a path
    ``a -> b -> ... -> a`` a reader can follow."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle(graph, group) for group in groups]


def _circle(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, within the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # a group of >1 always has one


def write_tree(root: Path, files: Mapping[str, str]) -> dict[str, Path]:
    """Modules as files below ``root``; a name others sit under is a package's ``__init__``."""
    paths = {}
    for name, text in files.items():
        path = root / name.replace(".", "/")
        if any(other.startswith(name + ".") for other in files):
            path = path / "__init__.py"
        else:
            path = path.with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths[name] = path
    return paths


def test_the_cycle_finder_finds_a_circle_closed_inside_a_function(tmp_path: Path) -> None:
    # A tiny package whose circle only closes in a function body and under TYPE_CHECKING.
    files = {
        "pkg.a": "def f():\n    from pkg import b\n",
        "pkg.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import X\n",
        "pkg.c": "from .a import f\n",
        "pkg.d": "import pkg.a\n",
        "pkg": "",
    }
    paths = write_tree(tmp_path, files)
    graph = {name: imports_of(name, path, paths) for name, path in paths.items()}
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_a_circle_through_a_package_init_is_found(tmp_path: Path) -> None:
    """``import top.sub.leaf`` runs ``top/sub/__init__`` first: if that imports the importer
    back, it is a circle, though ``leaf`` itself imports nothing (settings once reached into
    the camera package this way, whose ``__init__`` imports the settings)."""
    files = {
        "top.settings": "def f():\n    from top.sub import leaf\n",
        "top.sub": "from top import settings\n",
        "top.sub.leaf": "",
        "top.sub.other": "from top.sub import leaf\n",  # inside the package: no circle
        "top": "",
    }
    paths = write_tree(tmp_path, files)
    graph = {name: imports_of(name, path, paths) for name, path in paths.items()}
    assert graph["top.settings"] == {"top.sub.leaf", "top.sub"}
    assert graph["top.sub.other"] == {"top.sub.leaf"}
    assert find_cycles(graph) == [["top.settings", "top.sub", "top.settings"]]


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert "pinthesky.daemon.cli" in graph["pinthesky.__main__"]
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_at_most_twelve_modules_stand_at_the_top() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules directly in pinthesky/: {top}"


def test_each_program_enters_through_its_own_package() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(PROGRAMS)
    for script, package in PROGRAMS.items():
        module = scripts[script].partition(":")[0]
        assert module.startswith(f"pinthesky.{package}."), f"{script} enters at {module}"


def test_nothing_below_a_program_imports_it() -> None:
    # Programs sit on top: the daemon's concerns, the sidecar and the installer never import
    # another program's package. ``installer.onpi`` is the exception that proves it: standard
    # library only, it is a leaf the local API borrows its TOML merge from.
    graph = import_graph()
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            for package in PROGRAMS.values():
                inside = f"pinthesky.{package}"
                if (
                    target.startswith(inside + ".")
                    and not module.startswith(inside + ".")
                    and module != "pinthesky.__main__"
                    and target != "pinthesky.installer.onpi"
                ):
                    wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
    assert graph["pinthesky.installer.onpi"] == set()  # it is sent to the Pi alone


def test_every_package_says_what_it_owns() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 60, f"{init.relative_to(ROOT)} needs a docstring"
