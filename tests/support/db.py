"""The databases the DB tests run against: a sqlite3 file and a real PostgreSQL server.

PostgreSQL comes from ``CONTEXTUAL_TEST_POSTGRES_DSN`` (``.ci/run`` starts a
server with ``.ci/start-postgres`` and exports it). Without it the
PostgreSQL cases skip, unless ``CONTEXTUAL_REQUIRE_SERVERS`` is set, as in
CI, where a missing server fails them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.conninfo
import pytest

from contextual.db import ThreadLocalDB
from support.servers import postgres_dsn

if TYPE_CHECKING:
    from typing_extensions import Self

_tables = itertools.count()


@dataclass
class Database:
    """One database to test against, with what differs between drivers."""

    kind: str
    connect: Callable[[], Any]
    """A new raw connection, outside any ThreadLocalDB (for checks and admin)."""
    placeholder: str
    error: type[Exception]
    """The driver's base exception class."""
    table: str
    """A table of this test's own: (k INTEGER PRIMARY KEY, v TEXT)."""
    path: str = ""
    """The sqlite3 file."""
    made: list[ThreadLocalDB] = field(default_factory=list)

    def db(self, **kwargs: Any) -> ThreadLocalDB:
        """A new ThreadLocalDB on this database, closed at the end of the test."""
        if self.kind == "sqlite":
            db = ThreadLocalDB(self.path, **kwargs)
        else:
            db = ThreadLocalDB(connect=self.connect, **kwargs)
        self.made.append(db)
        return db

    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders in the driver's style, and ``T`` for the table."""
        return text.replace("?", self.placeholder).replace(" T", f" {self.table}")

    def insert(self, db: ThreadLocalDB, k: int, v: str = "") -> None:
        """Insert row ``k`` (with ``v``, or ``str(k)``) into the table through ``db``."""
        db.execute(self.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (k, v or str(k)))

    def keys(self) -> list[int]:
        """The keys of the table's rows, read on a connection of its own (committed data only)."""
        return [k for k, _ in self.rows()]

    def rows(self) -> list[tuple[int, str]]:
        """The table's rows, read on a connection of its own (committed data only)."""
        connection = self.connect()
        try:
            cursor = connection.cursor()
            cursor.execute(f"SELECT k, v FROM {self.table} ORDER BY k")
            return [tuple(row) for row in cursor.fetchall()]  # type: ignore[misc]
        finally:
            connection.close()


def _sqlite(tmp_path: Path) -> Database:
    path = str(tmp_path / "test.sqlite3")
    return Database(
        kind="sqlite",
        connect=functools.partial(sqlite3.connect, path, isolation_level=None),
        placeholder="?",
        error=sqlite3.Error,
        table="items",
        path=path,
    )


def _postgres() -> Database:
    dsn = postgres_dsn()
    return Database(
        kind="postgres",
        connect=functools.partial(psycopg.connect, dsn, autocommit=True),
        placeholder="%s",
        error=psycopg.Error,
        table=f"items_{os.getpid()}_{next(_tables)}",
    )


def _prepared(database: Database) -> Iterator[Database]:
    admin = database.connect()
    admin.cursor().execute(f"CREATE TABLE {database.table} (k INTEGER PRIMARY KEY, v TEXT)")
    admin.close()
    yield database
    for db in database.made:
        db.close_all()
    if database.kind == "postgres":
        admin = database.connect()
        admin.cursor().execute(f"DROP TABLE IF EXISTS {database.table}")
        admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A sqlite3 file or the PostgreSQL server, with a fresh table; everything closed after."""
    yield from _prepared(_sqlite(tmp_path) if request.param == "sqlite" else _postgres())


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Database]:
    """The sqlite3 file alone, for what only sqlite3 does."""
    yield from _prepared(_sqlite(tmp_path))


@pytest.fixture
def postgres() -> Iterator[Database]:
    """The PostgreSQL server alone, for what only a server can do."""
    yield from _prepared(_postgres())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll an outside condition (a server process going away) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


#: What :class:`Intercepted` calls for each statement: the SQL, a function
#: that runs it on the real cursor, and the real connection.
Intercept = Callable[[str, Callable[[], object], Any], None]


class Intercepted:
    """A real DB-API connection whose statements go through ``intercept`` first.

    ``intercept(sql, run, real)`` runs the statement by calling ``run()``, or
    doesn't, and may raise: to record which thread ran what, or to make a
    fault happen at one exact statement (Ctrl-C at the COMMIT). Everything
    else is the real connection's and cursor's.
    """

    def __init__(self, real: Any, intercept: Intercept) -> None:
        self._real = real
        self._intercept = intercept

    def cursor(self) -> _InterceptedCursor:
        return _InterceptedCursor(self._real, self._intercept)

    def close(self) -> None:
        self._real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _InterceptedCursor:
    def __init__(self, connection: Any, intercept: Intercept) -> None:
        self._connection = connection
        self._real = connection.cursor()
        self._intercept = intercept

    def execute(self, sql: str, params: Any = ()) -> _InterceptedCursor:
        self._intercept(sql, lambda: self._real.execute(sql, params), self._connection)
        return self

    def fetchall(self) -> list[Any]:
        return list(self._real.fetchall())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class PostgresProxy:
    """A loopback TCP proxy to PostgreSQL that can lose the answer to a COMMIT.

    Clients connect to :attr:`dsn`; everything is forwarded both ways. With
    ``drop_commit_reply``, once a client sends a message holding ``COMMIT``,
    that message reaches the server, and once the server's answer arrives
    (so the server has committed), the proxy closes both sockets instead of
    forwarding it: the client sees its connection break while COMMIT runs,
    as with a network blip or a pooler restarting at the wrong moment. It
    does this once; later connections pass through. :meth:`notice` sends
    every client a message of the server's that nobody asked for.
    """

    def __init__(self, dsn: str, *, drop_commit_reply: bool = False) -> None:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        self._target = (str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.dsn = psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=port)
        self.dropped = threading.Event()
        """Set once a COMMIT's answer was dropped."""
        if not drop_commit_reply:
            self.dropped.set()  # as if done: nothing more to drop
        self._clients: list[tuple[socket.socket, threading.Lock]] = []
        self._closing = False
        self._threads: list[threading.Thread] = []
        accepter = threading.Thread(target=self._accept, name="postgres-proxy", daemon=True)
        accepter.start()
        self._threads.append(accepter)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing = True
        # close() alone doesn't wake a thread blocked in accept() on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        # The accepting thread first: once it ended, the list is complete.
        for thread in self._threads:
            thread.join(timeout=10)
            assert not thread.is_alive(), f"{thread.name} did not end"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed by __exit__
            server = socket.create_connection(self._target)
            pump = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            pump.start()
            self._threads.append(pump)

    def notice(self, text: str) -> None:
        """Send each client a NoticeResponse, as a server may between queries."""
        fields = b"".join(
            kind + value.encode() + b"\x00"
            for kind, value in ((b"S", "NOTICE"), (b"V", "NOTICE"), (b"C", "00000"), (b"M", text))
        )
        body = fields + b"\x00"
        message = b"N" + (len(body) + 4).to_bytes(4, "big") + body
        for client, lock in self._clients:
            with lock:
                client.sendall(message)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        committing = False
        lock = threading.Lock()  # notice() writes to the client too
        self._clients.append((client, lock))
        with client, server:
            while not self._closing:
                readable, _, _ = select.select([client, server], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        if not self.dropped.is_set() and b"COMMIT\x00" in data:
                            committing = True
                        server.sendall(data)
                    elif committing:
                        self.dropped.set()  # the server answered the COMMIT: drop it
                        return
                    else:
                        with lock:
                            client.sendall(data)
