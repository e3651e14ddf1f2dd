"""Public objects report the public module they are imported from."""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["publish", "publish_all"]

_T = TypeVar("_T")


def publish(module: str, obj: _T) -> _T:
    """Set ``obj.__module__`` to ``module`` if it names a private module of contextual.

    Reprs, tracebacks, pickles of classes and the docs then show the import
    users write (``contextual.db.ThreadLocalDB``), not the private module
    the object is defined in. Names that are no class or function (a type
    alias, a constant) are left alone.
    """
    defined_in = getattr(obj, "__module__", None)
    if (
        isinstance(defined_in, str)
        and defined_in.startswith("contextual.")
        and any(part.startswith("_") for part in defined_in.split(".")[1:])
    ):
        obj.__module__ = module
    return obj


def publish_all(namespace: dict[str, Any]) -> None:
    """:func:`publish` every name of a public module's ``__all__``: pass its ``globals()``.

    Names not defined yet (loaded on first use through the module's
    ``__getattr__``) are left for it to publish.
    """
    module = namespace["__name__"]
    for name in namespace["__all__"]:
        if name in namespace:
            publish(module, namespace[name])
