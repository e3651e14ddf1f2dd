"""Sphinx configuration for the contextual documentation.

Build from the repository root, warnings as errors and every reference checked::

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html
    python -m sphinx -W -n --keep-going -b doctest docs docs/_build/doctest

The builds work offline. Set ``CONTEXTUAL_DOCS_INTERSPHINX=1`` to link
standard-library names to docs.python.org instead (this needs network access).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sphinx.util import logging

if TYPE_CHECKING:
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

# Document the tree being built, not whatever version happens to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import contextual

# -- Project ------------------------------------------------------------------

project = "contextual"
author = "The contextual developers"
copyright = "The contextual developers"
release = contextual.__version__
version = ".".join(release.split(".")[:2])

# -- General ------------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
nitpicky = True
default_role = "py:obj"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc and napoleon -----------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Type aliases show by name in signatures, linked to their own entry.
autodoc_type_aliases = {"AllowSpec": "contextual.integrations.AllowSpec"}

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- doctest ------------------------------------------------------------------

# Run the ">>>" examples of docstrings pulled in by autodoc, not only the
# {doctest} and {testcode} blocks of the pages.
doctest_test_doctest_blocks = "default"

# -- Cross-references to the standard library ---------------------------------

# Offline, intersphinx has no objects.inv to read, so the standard-library
# names our pages, docstrings and signatures mention can't resolve. Ignore
# exactly those, and only while intersphinx is off: with it on, a broken stdlib
# reference fails the build like any other. (Sphinx itself already accepts
# builtins such as str, KeyError and typing.Any without an inventory.)
#
# The standard-library modules contextual builds on or integrates with.
_STDLIB_MODULES = (
    "asyncio",
    "collections.abc",
    "concurrent.futures",
    "contextvars",
    "dataclasses",
    "fractions",
    "functools",
    "logging",
    "numbers",
    "os",
    "pty",
    "sqlite3",
    "sys",
    "threading",
    "types",
    "typing",
    "wsgiref",
)
# Builtin types whose methods the docs name (dict.update).
_BUILTIN_TYPES = ("dict", "list", "set", "str", "tuple")


def _alternatives(names: tuple[str, ...]) -> str:
    return "|".join(re.escape(name) for name in names)


if os.environ.get("CONTEXTUAL_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {"python": ("https://docs.python.org/3", None)}
    nitpick_ignore_regex: list[tuple[str, str]] = []
else:
    intersphinx_mapping = {}
    nitpick_ignore_regex = [
        # A standard-library module, or any name inside one: contextvars,
        # contextvars.ContextVar, asyncio.create_task, sys.flags...
        (
            r"py:(mod|class|func|meth|attr|data|exc|obj)",
            rf"({_alternatives(_STDLIB_MODULES)})(\..+)?",
        ),
        # A method of a builtin type: dict.update.
        (r"py:meth", rf"({_alternatives(_BUILTIN_TYPES)})\.\w+"),
    ]

# Private type variables (_T, _P.args...) stand in signatures for "the type
# you passed"; they have no page of their own. Future is concurrent.futures',
# named as its module imports it.
nitpick_ignore_regex += [
    (r"py:class", r"(contextual\.[\w.]+\.)?_[A-Z]\w*(\.args|\.kwargs)?"),
    (r"py:class", r"Future"),
    # Django has no intersphinx inventory here: its names stay plain text.
    (r"py:(class|exc|obj|meth|func)", r"django\..+"),
]

# -- HTML -----------------------------------------------------------------------

html_theme = "furo"
html_title = f"contextual {release}"
html_static_path = ["_static"]

# -- Every public name is documented -------------------------------------------

_logger = logging.getLogger(__name__)


# The public modules whose __all__ the reference must cover in full.
_PUBLIC_MODULES = ("contextual", "contextual.db", "contextual.spinner")


def _check_public_names(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn about each name in a public module's ``__all__`` that no page documents."""
    del app
    documented = env.get_domain("py").objects
    for module_name in _PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if f"{module_name}.{name}" not in documented:
                _logger.warning(
                    "%s.%s is in %s.__all__ but not documented; add it to docs/reference.md.",
                    module_name,
                    name,
                    module_name,
                )


def _drop_type_docstring(  # noqa: PLR0913, PLR0917 (the event's signature)
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    lines: list[str],
) -> None:
    """Drop the docstring a constant inherits from its type (tuple, str).

    ``BACKENDS`` and ``__version__`` would otherwise be described by the
    docstrings of ``tuple`` and ``str``; reference.md describes them instead.
    """
    del app, name, options
    if what == "data" and obj.__doc__ == type(obj).__doc__:
        lines.clear()


def setup(app: Sphinx) -> None:
    """Register the reference checks and docstring fixes."""
    app.connect("env-check-consistency", _check_public_names)
    app.connect("autodoc-process-docstring", _drop_type_docstring)
