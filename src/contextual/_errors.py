"""The exceptions contextual adds to the standard library's."""

from __future__ import annotations

__all__ = [
    "CommitOutcomeUnknownError",
    "ContextualError",
    "ScopeError",
    "StoreDefaultsError",
    "TransactionError",
]


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


class StoreDefaultsError(ContextualError, RuntimeError):
    """A store's ``defaults`` factory raised, so the store has no values here.

    The message names the store, and the factory's own exception is the
    ``__cause__``. The factory runs again on the next access in that thread
    or context, so the error lasts until the factory succeeds. Until then
    each read of the store there raises this error, and so does each
    :func:`~contextual.capture` in a thread where a ``propagate=True``
    ``"thread"`` store is broken: every :meth:`ContextExecutor.submit
    <contextual.ContextExecutor.submit>`, :meth:`ContextThread.start
    <contextual.ContextThread.start>`, :func:`~contextual.to_thread` and
    :meth:`ContextProcessPoolExecutor.submit
    <contextual.ContextProcessPoolExecutor.submit>` there.

    The factory's exception is never raised as it is: a :class:`KeyError`
    or :class:`AttributeError` from a factory would otherwise read as a
    missing key (``hasattr(store, "user")`` would be false, and ``getattr``
    would return its default).

    .. versionadded:: 0.2.0
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


class CommitOutcomeUnknownError(TransactionError):
    """The connection broke while ``COMMIT`` ran: the transaction may or may not be committed.

    The database may have committed the transaction and lost only its
    answer (a network blip, a proxy or pooler restarting, a failover), or
    never received the ``COMMIT``. Nothing on this side can tell which:
    check whether the transaction's changes are in the database before
    doing its work again. Neither its ``on_commit`` nor its ``on_rollback``
    hooks ran, and its connection was closed; the next use of the database
    opens a new one. The driver's error is the ``__cause__``.

    .. versionadded:: 0.2.0
    """
