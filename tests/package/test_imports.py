"""No import cycle among the modules of ``contextual``.

Each layer of DESIGN.md uses only the layers below it, so the modules'
imports form no cycle. The check reads the source with :mod:`ast` rather
than importing it: an import inside a function or under ``if
TYPE_CHECKING:`` is a dependency all the same, and a cycle through one is
still a cycle (it only waits for the first call, or for mypy, to show).
"""

from __future__ import annotations

import ast
import itertools
import pkgutil
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "contextual"


class Import(NamedTuple):
    """One module's import of another module of the same package."""

    source: str
    target: str
    line: int


def module_names(root: Path) -> dict[str, Path]:
    """Map each module of the package at ``root`` to its file: ``{"pkg.sub": path}``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(node: ast.ImportFrom, module: str, modules: dict[str, Path]) -> str:
    """The absolute name of the module that ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    # Relative to the module's package: itself for an __init__.py.
    package = module.split(".")
    if not _is_package(module, modules):
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, modules: dict[str, Path]) -> list[Import]:
    """Every import of another module in ``modules`` that ``module``'s source makes.

    All count: at module level, inside functions, and under ``if
    TYPE_CHECKING:``. ``from package import name`` is an import of the
    submodule ``package.name`` when there is one, else of ``package``. The
    parent packages that Python imports first are no dependency of their own.
    """
    tree = ast.parse(modules[module].read_text(encoding="utf-8"), str(modules[module]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, modules)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found += [
            Import(module, target, node.lineno)
            for target in dict.fromkeys(targets)
            if target in modules and target != module
        ]
    return found


def import_graph(root: Path) -> dict[str, list[Import]]:
    """Each module of the package at ``root`` and its imports of the others."""
    modules = module_names(root)
    return {module: imports_of(module, modules) for module in modules}


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Every elementary cycle of ``graph``, each starting and ending at its least module."""
    edges = {module: sorted({i.target for i in imports}) for module, imports in graph.items()}
    found = []
    for start in sorted(edges):
        # Cycles through modules after start only: each is found once, from its least.
        stack = [(start, [start])]
        while stack:
            module, path = stack.pop()
            for target in edges[module]:
                if target == start:
                    found.append([*path, start])
                elif target > start and target not in path:
                    stack.append((target, [*path, target]))
    return sorted(found, key=lambda cycle: (len(cycle), cycle))


def describe(cycle: list[str], graph: dict[str, list[Import]], root: Path) -> str:
    """``_a -> _b -> _a``, then the file and lines of each of those imports."""
    files = module_names(root)

    def short(module: str) -> str:
        return module.removeprefix(f"{root.name}.")

    where = []
    for source, target in itertools.pairwise(cycle):
        lines = ", ".join(str(i.line) for i in graph[source] if i.target == target)
        file = files[source].relative_to(root.parent).as_posix()
        where.append(f"    {short(source)} imports {short(target)}: {file}, line {lines}")
    return "\n".join([" -> ".join(map(short, cycle)), *where])


def check(root: Path) -> list[str]:
    """The import cycles among the modules of the package at ``root``, described."""
    graph = import_graph(root)
    return [describe(cycle, graph, root) for cycle in cycles(graph)]


# -- the package ----------------------------------------------------------------


def test_no_import_cycle_among_the_package_s_modules():
    found = check(PACKAGE)
    if found:
        pytest.fail(
            "import cycles among contextual's modules: a layer uses only the layers "
            "below it (DESIGN.md), so the lower module of each pair must not import the "
            "upper one, not even for type checking; give it a Protocol of what it uses.\n"
            + "\n".join(found),
            pytrace=False,
        )


def test_the_graph_covers_every_module_and_sees_known_imports():
    # The check is only as good as the graph it reads: every module is in it,
    # and imports of each kind show as edges.
    graph = import_graph(PACKAGE)
    listed = pkgutil.walk_packages([str(PACKAGE)], "contextual.")
    assert set(graph) == {"contextual", *(module.name for module in listed)}
    edges = {(i.source, i.target) for imports in graph.values() for i in imports}
    assert {
        ("contextual.db._connection", "contextual.db._transaction"),  # from ._transaction import
        ("contextual._core.store", "contextual._core.repair"),  # from . import repair
        ("contextual", "contextual._propagation.executors"),  # if TYPE_CHECKING: from ...
        ("contextual.integrations", "contextual.integrations._carrier"),  # in __init__.py
        ("contextual.integrations._headers", "contextual._request.request"),  # absolute import
        ("contextual.__main__", "contextual"),  # from . import names of the package
    } <= edges


# -- the check itself -------------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    """Write a package ``pkg`` of ``files`` (``{"sub/mod.py": source}``) under ``root``."""
    package = root / "pkg"
    for name, source in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return package


def test_the_check_finds_a_cycle_through_an_import_in_a_function(tmp_path):
    package = _package(
        tmp_path,
        {
            "_a.py": "from ._b import f\n",
            "_b.py": "def f():\n    from ._a import g  # noqa\n",
        },
    )
    [found] = check(package)
    assert found.splitlines()[0] == "_a -> _b -> _a"
    assert found.splitlines()[1:] == [
        "    _a imports _b: pkg/_a.py, line 1",
        "    _b imports _a: pkg/_b.py, line 2",
    ]


def test_the_check_finds_a_cycle_through_a_type_checking_import(tmp_path):
    package = _package(
        tmp_path,
        {
            "_a.py": "from . import _b\n",
            "_b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg._a import A\n"
            ),
        },
    )
    assert [found.splitlines()[0] for found in check(package)] == ["_a -> _b -> _a"]


def test_the_check_names_every_cycle_and_resolves_each_kind_of_import(tmp_path):
    package = _package(
        tmp_path,
        {
            # A package's own relative imports start from the package itself.
            "sub/__init__.py": "from ._c import C\n",
            "sub/_c.py": "from .. import _d\n",
            "_d.py": "import pkg.sub._e\n",
            "sub/_e.py": "from pkg.sub import _c\n",
            # A name of the package, not a submodule: an import of the package.
            "_f.py": "from . import name\nfrom .sub import C\n",
            "_g.py": "from pkg import _f, _g\n",
            "_h.py": "from ._h import x\n",  # itself: not a cycle
        },
    )
    graph = import_graph(package)
    edges = {(i.source, i.target) for imports in graph.values() for i in imports}
    assert edges == {
        ("pkg.sub", "pkg.sub._c"),
        ("pkg.sub._c", "pkg._d"),
        ("pkg._d", "pkg.sub._e"),
        ("pkg.sub._e", "pkg.sub._c"),
        ("pkg._f", "pkg"),
        ("pkg._f", "pkg.sub"),
        ("pkg._g", "pkg._f"),
    }
    assert [found.splitlines()[0] for found in check(package)] == ["_d -> sub._e -> sub._c -> _d"]


def test_the_check_finds_every_cycle_of_a_tangle(tmp_path):
    package = _package(
        tmp_path,
        {
            "_a.py": "from . import _b, _c\n",
            "_b.py": "from . import _a, _c\n",
            "_c.py": "from . import _a\n",
        },
    )
    assert [found.splitlines()[0] for found in check(package)] == [
        "_a -> _b -> _a",
        "_a -> _c -> _a",
        "_a -> _b -> _c -> _a",
    ]


def test_the_check_passes_a_package_without_cycles(tmp_path):
    package = _package(
        tmp_path,
        {
            "_a.py": "from ._b import B\nimport json\nfrom os import path\n",
            "_b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import _c\n",
            "_c.py": "",
        },
    )
    assert check(package) == []


# -- the layers -------------------------------------------------------------------

# The layers of DESIGN.md, lowest first, as the folders of the package: a
# module imports modules of its own folder and of the layers below only.
LAYERS = (
    ("core", ("contextual._core",)),
    ("request context and logging", ("contextual._request",)),
    ("propagation", ("contextual._propagation",)),
    ("top level", ("contextual",)),
    ("helpers", ("contextual.db", "contextual.spinner", "contextual.testing")),
    ("integrations and the demo", ("contextual.integrations", "contextual.__main__")),
)


def layer_of(module: str) -> tuple[int, str]:
    """The rank of ``module``'s layer and the folder (or module) it belongs to there."""
    best: tuple[int, str] | None = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[1])
            ):
                best = (rank, prefix)
    assert best is not None, module
    return best


def layer_violations(graph: dict[str, list[Import]]) -> list[str]:
    """Each import of a higher layer, or of a sibling helper, as ``source -> target: line``."""
    found = []
    for imports in graph.values():
        for i in imports:
            (source_rank, source_home), (target_rank, target_home) = (
                layer_of(i.source),
                layer_of(i.target),
            )
            upward = target_rank > source_rank
            sideways = target_rank == source_rank and source_home != target_home
            if upward or sideways:
                found.append(f"{i.source} -> {i.target}: line {i.line}")
    return found


def test_each_layer_imports_only_itself_and_the_layers_below():
    found = layer_violations(import_graph(PACKAGE))
    assert not found, (
        "imports against the layers of DESIGN.md (a layer uses only the layers below it; "
        "sibling helpers don't use each other):\n" + "\n".join(found)
    )


def test_every_module_has_a_layer():
    for module in import_graph(PACKAGE):
        layer_of(module)  # asserts


def test_the_layer_check_finds_an_upward_and_a_sideways_import():
    graph = {
        "contextual._core.store": [Import("contextual._core.store", "contextual.db._x", 3)],
        "contextual.db._x": [Import("contextual.db._x", "contextual.spinner._y", 7)],
        "contextual.spinner._y": [Import("contextual.spinner._y", "contextual._core.store", 1)],
    }
    assert layer_violations(graph) == [
        "contextual._core.store -> contextual.db._x: line 3",
        "contextual.db._x -> contextual.spinner._y: line 7",
    ]
