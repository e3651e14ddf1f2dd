"""Every public module's ``__all__``: sorted, exactly what the module exports, all documented.

The public modules are found, not listed: every module of the package whose
dotted name has no part starting with ``_`` (so not ``contextual.__main__``).

What a module exports, by one rule for every module:

* the public names it defines itself (``def``, ``class``, an assignment);
* the names whose object reports it as its module (``__module__``), as the
  objects that ``contextual/__init__.py`` publishes do;
* in a package's ``__init__.py``, the names it imports from its own private
  submodules (``from ._carrier import AllowSpec``).

Every such name bound in the module must be in ``__all__``. The other names a
module binds (imports of the standard library, of other packages, of the
private helpers it is built on) are its business, and ``__all__`` names none
of them: a class or function in ``__all__`` reports the module as its own (one
public home, never a second public module); a value with no ``__module__`` (a
constant, a type alias) may come from a private module of the package.

Names served by a module ``__getattr__`` (the lazy names of ``contextual``)
are reached with getattr(), as users reach them.

Documented: a class or function has a docstring of its own; any other value
has the attribute docstring Sphinx reads (a string right after the
assignment, or ``#:`` comments right above it) where it is defined, or an
``autodata`` directive with text under it in docs/.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import contextual

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _raise(name: str) -> None:
    # walk_packages calls this inside its ``except ImportError``.
    raise  # noqa: PLE0704


def public_modules() -> list[str]:
    """The package and every module of it with no dotted part starting with ``_``."""
    found = [
        info.name
        for info in pkgutil.walk_packages(contextual.__path__, "contextual.", onerror=_raise)
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return sorted(["contextual", *found])


PUBLIC_MODULES = public_modules()


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


@dataclass
class Bindings:
    """How a module's source binds its module-level names (in any branch, TYPE_CHECKING too)."""

    defined: set[str] = field(default_factory=set)
    #: name -> (absolute module it comes from, name there)
    imported: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: name -> its attribute docstring or ``#:`` comment, where it is assigned
    docs: dict[str, str] = field(default_factory=dict)


def _targets(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Tuple | ast.List):
        return [name for element in node.elts for name in _targets(element)]
    return []


def _comment_above(lines: list[str], line: int) -> str:
    """The ``#:`` comment lines right above source line ``line`` (1-based), joined."""
    found: list[str] = []
    index = line - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    return "\n".join(found).strip()


def _docstring(node: ast.stmt | None) -> str:
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return node.value.value.strip()
    return ""


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The absolute name of the module that ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _bind(found: Bindings, body: list[ast.stmt], lines: list[str], package: str) -> None:
    for index, node in enumerate(body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            if isinstance(node, ast.AnnAssign) and node.value is None:
                continue  # an annotation alone binds nothing
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [name for target in targets for name in _targets(target)]
            found.defined.update(names)
            after = body[index + 1] if index + 1 < len(body) else None
            doc = _docstring(after) or _comment_above(lines, node.lineno)
            found.docs.update(dict.fromkeys(names, doc) if doc else {})
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, package)
            for alias in node.names:
                found.imported[alias.asname or alias.name] = (source, alias.name)
        elif isinstance(node, ast.If | ast.Try):
            for branch in (
                node.body,
                node.orelse,
                *(h.body for h in getattr(node, "handlers", [])),
            ):
                _bind(found, branch, lines, package)
            _bind(found, getattr(node, "finalbody", []), lines, package)


@cache
def bindings(name: str) -> Bindings:
    """What the source of module ``name`` binds at module level."""
    path = Path(importlib.import_module(name).__file__ or "")
    source = path.read_text(encoding="utf-8")
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = Bindings()
    _bind(found, ast.parse(source).body, source.splitlines(), package)
    return found


def _exports(module: ModuleType, name: str) -> bool:
    """Whether ``module`` exports ``name`` by the rule of this file's docstring."""
    found = bindings(module.__name__)
    if name in found.defined:
        return True
    if getattr(getattr(module, name), "__module__", None) == module.__name__:
        return True
    source, _ = found.imported.get(name, ("", ""))
    is_package = hasattr(module, "__path__")
    return is_package and source.startswith(f"{module.__name__}.") and _is_private(source)


def _attribute_doc(module: str, name: str) -> str:
    """The attribute docstring of ``name`` where it is assigned, following imports."""
    found = bindings(module)
    if name in found.docs:
        return found.docs[name]
    source, original = found.imported.get(name, ("", ""))
    if source.startswith("contextual"):
        return _attribute_doc(source, original)
    return ""


def _autodata_text(module: str, name: str) -> str:
    """The text under an ``autodata`` directive for ``module.name`` in docs/, if any."""
    for page in sorted(DOCS.rglob("*.md")):
        current = ""
        lines = page.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            directive = re.match(r"\s*\.\. (currentmodule|automodule|autodata)::\s*(\S+)", line)
            if not directive:
                continue
            kind, target = directive.groups()
            if kind != "autodata":
                current = target
                continue
            full = target if "." in target else f"{current}.{target}"
            if full != f"{module}.{name}":
                continue
            body = []
            for following in lines[index + 1 :]:
                if following.strip() and not following.startswith((" ", "\t")):
                    break
                if not following.strip().startswith(":"):  # options aren't text
                    body.append(following.strip())
            if "".join(body):
                return "\n".join(body).strip()
    return ""


def _own_doc(obj: Any) -> str:
    if inspect.isclass(obj):
        return (vars(obj).get("__doc__") or "").strip()
    return (getattr(obj, "__doc__", None) or "").strip()


@pytest.fixture(params=PUBLIC_MODULES)
def module(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def test_the_public_modules_are_found():
    assert {"contextual", "contextual.testing", "contextual.integrations.http"} <= set(
        PUBLIC_MODULES
    )
    assert not [name for name in PUBLIC_MODULES if _is_private(name)]


def test_all_is_a_sorted_list_of_names_the_module_has(module):
    names = module.__all__
    assert all(isinstance(name, str) for name in names)
    assert names == sorted(set(names)), "sorted, each name once"
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []


def test_all_names_every_public_name_the_module_exports(module):
    public = {name for name in dir(module) if not name.startswith("_")}
    exported = {
        name
        for name in public
        if not inspect.ismodule(getattr(module, name)) and _exports(module, name)
    }
    assert sorted(exported - set(module.__all__)) == []


def test_all_names_only_what_the_module_exports(module):
    found = bindings(module.__name__)

    def reexported_value(name: str) -> bool:
        # A value with no module of its own (a constant, a type alias), imported
        # from a private module; a class or function must report this module.
        obj = getattr(module, name)
        source = found.imported.get(name, ("", ""))[0]
        return (
            not (inspect.isclass(obj) or inspect.isfunction(obj))
            and source.startswith("contextual")
            and _is_private(source)
        )

    foreign = [
        name for name in module.__all__ if not _exports(module, name) and not reexported_value(name)
    ]
    assert foreign == [], "another module's: re-exported from a public module or from outside"


def test_public_classes_and_functions_report_a_public_module_that_exports_them(module):
    wrong = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            home = obj.__module__
            if (
                _is_private(home)
                or obj is not getattr(importlib.import_module(home), name, None)
                or name not in importlib.import_module(home).__all__
            ):
                wrong.append(f"{name}: {home}")
    assert wrong == []


def test_the_module_and_every_name_in_all_are_documented(module):
    assert (module.__doc__ or "").strip(), f"{module.__name__} has no docstring"
    undocumented = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isroutine(obj):
            documented = _own_doc(obj)
        else:
            documented = _attribute_doc(module.__name__, name) or _autodata_text(
                module.__name__, name
            )
        if not documented:
            undocumented.append(name)
    assert undocumented == []
