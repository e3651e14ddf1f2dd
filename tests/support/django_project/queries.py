"""Count the SQL statements Django runs, in every thread, during a block.

Django runs a statement through the ``execute_wrappers`` of the connection
that runs it, one connection per thread (or per context). A wrapper is put
on every connection Django opens during the block (``connection_created``)
and on the current thread's, so that the count covers the server's threads
and the thread Django's async handler runs its queries in. With Django's
default ``CONN_MAX_AGE = 0``, servers close a request's connections when it
starts and ends, so every request's queries go through a connection opened
during the block.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection
from django.db.backends.signals import connection_created


@contextmanager
def counting_queries() -> Iterator[list[str]]:
    """Yield a list that gets the SQL of every statement run during the block."""
    statements: list[str] = []
    lock = threading.Lock()
    wrapped: list[Any] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        with lock:
            statements.append(sql)
        return execute(sql, params, many, context)

    def wrap(connection: Any) -> None:
        with lock:
            if all(wrapper is not count for wrapper in connection.execute_wrappers):
                connection.execute_wrappers.append(count)
                wrapped.append(connection)

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        wrap(connection)

    wrap(connection)
    connection_created.connect(created, weak=False)
    try:
        yield statements
    finally:
        connection_created.disconnect(created)
        for each in wrapped:
            each.execute_wrappers[:] = [w for w in each.execute_wrappers if w is not count]


@contextmanager
def opened_connections() -> Iterator[list[tuple[str, Any]]]:
    """Yield a list that gets (thread name, connection) for each connection opened in the block.

    Each connection is Django's wrapper: ``connection.connection`` is ``None``
    once it is closed.
    """
    opened: list[tuple[str, Any]] = []

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        opened.append((threading.current_thread().name, connection))

    connection_created.connect(created, weak=False)
    try:
        yield opened
    finally:
        connection_created.disconnect(created)
