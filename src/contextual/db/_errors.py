"""The exceptions of the DB helpers."""

from __future__ import annotations

from contextual import ContextualError

__all__ = ["CommitOutcomeUnknownError", "TransactionError"]


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
