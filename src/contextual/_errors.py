"""The exceptions contextual adds to the standard library's."""

from __future__ import annotations

__all__ = ["ContextualError", "ScopeError"]


class ContextualError(Exception):
    """Base class of every exception that contextual defines itself.

    Where a standard exception fits, contextual raises that one (``KeyError``,
    ``TypeError``, ``ValueError``...); its own exceptions also derive from the
    standard class they refine, so ``except RuntimeError`` still catches a
    :class:`ScopeError`.

    .. versionadded:: 0.1.0
    """


class ScopeError(ContextualError, RuntimeError):
    """A scope was used out of order: entered twice, or exited without entry.

    .. versionadded:: 0.1.0
    """
