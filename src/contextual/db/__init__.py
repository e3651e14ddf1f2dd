"""One database connection per thread, and transactions that follow the work.

:class:`ThreadLocalDB` opens one DB-API connection per thread on first use
and closes it when the thread ends; :class:`TransactionManager` gives
``with db.transaction():`` scopes, savepoints and commit hooks to the
thread or asyncio task that opened them::

    from contextual.db import ThreadLocalDB

    db = ThreadLocalDB("app.sqlite3")
    with db.transaction():
        db.execute("INSERT INTO jobs (name) VALUES (?)", ("report",))

Built on the public API of :mod:`contextual` (a ``"thread"`` store with
``propagate=False`` holds each thread's connection); imports ``sqlite3``,
which ``import contextual`` never does.

.. versionadded:: 0.2.0
   The module; before, these names were imported from :mod:`contextual`.
"""

from contextual._core.publish import publish_all

from ._connection import DBAPIConnection, ThreadLocalDB
from ._errors import CommitOutcomeUnknownError, TransactionError
from ._transaction import Transaction, TransactionManager, TransactionState

__all__ = [
    "CommitOutcomeUnknownError",
    "DBAPIConnection",
    "ThreadLocalDB",
    "Transaction",
    "TransactionError",
    "TransactionManager",
    "TransactionState",
]


publish_all(globals())
