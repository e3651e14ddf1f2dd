"""The exceptions contextual adds to the standard library's."""

from __future__ import annotations

__all__ = ["ContextualError", "ScopeError", "TransactionError"]


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


class TransactionError(ContextualError, RuntimeError):
    """A transaction could not do what was asked; the message says why and what to do.

    Raised for a durable transaction inside another, a transaction or
    statement from a task that doesn't own the thread's connection, a failed
    commit (chained to the driver's error), a block that swallowed a failed
    statement, hooks added to a finished transaction, and a connection closed
    under an open transaction.

    .. versionadded:: 0.1.0
    """
