"""One DB-API connection per thread: opened on first use, closed with its thread."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import select
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol, final

from ._errors import TransactionError
from ._store import ContextStore
from ._transaction import Transaction, TransactionManager, _owner

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["DBAPIConnection", "ThreadLocalDB"]


class DBAPIConnection(Protocol):
    """The part of a DB-API 2.0 connection that :class:`ThreadLocalDB` uses.

    ``sqlite3.Connection``, psycopg's and most drivers' connections fit.

    .. versionadded:: 0.1.0
    """

    def cursor(self) -> Any:
        """Return a new cursor.

        :class:`ThreadLocalDB` uses its ``execute()``, ``executemany()``,
        ``fetchall()``, ``description`` and ``rowcount``.
        """

    def close(self) -> None:
        """Close the connection."""


# Connections that a forked child inherited from its parent. Closing them in
# the child would end the parent's session (PostgreSQL's terminate message
# goes down the shared socket), and letting them be collected closes them
# too, so the child keeps them, unused, until it exits.
_inherited: list[object] = []
_dbs: weakref.WeakSet[ThreadLocalDB] = weakref.WeakSet()
_dbs_lock = threading.Lock()
_names = itertools.count(1)


class _Slot:
    """One thread's connection, and what ThreadLocalDB knows about it.

    Only its thread's store holds it strongly; ``ThreadLocalDB`` keeps a weak
    reference for ``close_all()``. When the thread exits, its store's values
    go, the slot goes, and ``finalizer`` closes the connection, in that
    thread.
    """

    __slots__ = (
        "__weakref__",
        "begin",
        "closed_by",
        "connection",
        "cursor",
        "finalizer",
        "lock",
        "poll",
        "retired",
        "thread",
        "transaction",
    )

    connection: Any
    cursor: Any
    # Held while a statement runs, so that close_all() never closes a
    # connection under a running statement: it interrupts it, then waits.
    lock: threading.Lock
    thread: int
    begin: str
    # For a connection with a socket (fileno()): checked before use outside
    # a transaction, to notice a server that dropped the connection.
    poll: select.poll | None
    transaction: Transaction | None
    closed_by: str | None
    # A connection close_all() couldn't close from its thread: this slot's
    # own thread closes it on its next use.
    retired: Any
    finalizer: weakref.finalize[Any, _Slot]


def _close_quietly(connection: Any) -> None:
    # Runs as a finalizer: at thread exit in the owning thread, or at
    # interpreter exit. Nothing can be done about a failure there.
    with contextlib.suppress(Exception):
        connection.close()


def _is_broken(connection: Any) -> bool:
    """Tell whether ``connection`` can no longer run statements."""
    if isinstance(connection, sqlite3.Connection):
        try:
            connection.in_transaction  # noqa: B018 (raises once closed)
        except sqlite3.ProgrammingError:
            return True
        return False
    # psycopg 3 (closed, broken), psycopg2 (closed, an int) and others.
    return bool(getattr(connection, "closed", False) or getattr(connection, "broken", False))


def _interrupt(connection: Any) -> None:
    """Ask a running statement to stop, from another thread."""
    # sqlite3's interrupt() and psycopg's cancel() are both documented as
    # safe to call from another thread while a statement runs.
    for name in ("interrupt", "cancel"):
        method = getattr(connection, name, None)
        if callable(method):
            # On failure the statement just runs to its end.
            with contextlib.suppress(Exception):
                method()
            return


def _socket_poll(connection: Any) -> select.poll | None:
    fileno = getattr(connection, "fileno", None)
    if not callable(fileno):
        return None  # sqlite3, and drivers that don't show their socket
    poll = select.poll()
    poll.register(fileno(), select.POLLIN | select.POLLPRI)
    return poll


@final
class ThreadLocalDB:
    """One database connection per thread, opened on first use and always closed.

    Give it a sqlite3 database file, or a ``connect`` callable that returns a
    DB-API 2.0 connection (psycopg, for one)::

        db = ThreadLocalDB("app.sqlite3")
        db = ThreadLocalDB(connect=functools.partial(psycopg.connect, dsn))

    Each thread that touches ``db`` gets a connection of its own, which no
    other thread ever receives: the connection lives in a ``"thread"``
    :class:`ContextStore` with ``propagate=False``, so it stays behind when
    work moves to a pool worker, a new thread or another process, where
    ``db`` opens that thread's own. Tasks of one event loop share their
    thread's connection (see :meth:`transaction` for what that means for
    transactions). A forked child never uses its parent's connections: it
    opens its own.

    A connection is closed:

    - by :meth:`close`, in its own thread;
    - by :meth:`close_all` (and leaving ``with ThreadLocalDB(...) as db:``),
      from any thread;
    - when its thread exits, in that thread, without waiting for
      :meth:`close_all` (no ``ResourceWarning``);
    - at interpreter exit, if still open.

    A thread that uses ``db`` after its connection was closed gets a new one.

    **Transactions.** Connections run in autocommit mode: a statement
    outside :meth:`transaction` commits on its own, and :meth:`transaction`
    issues ``BEGIN`` itself rather than relying on the driver's implicit
    transactions. sqlite3 connections that ``db`` opens get
    ``isolation_level=None``; a connection from ``connect`` gets
    ``autocommit = True`` if it has that attribute set to false (sqlite3,
    psycopg, psycopg2 and others do), and otherwise must already be in
    autocommit mode.

    **close_all() from another thread.** Connections that ``db`` opened
    from a path use ``check_same_thread=False``, so that another thread may
    close them; ``db`` still gives each one to its own thread only, and
    holds a per-connection lock while a statement runs. ``close_all()``
    closes idle connections at once; it interrupts a statement in progress
    (``interrupt()``, ``cancel()``), waits for it to return, then closes.
    A connection the driver refuses to close from another thread (a sqlite3
    connection made by ``connect`` with the default ``check_same_thread``)
    is closed by its own thread, the next time that thread uses ``db``, or
    when it exits; :attr:`open_connections` counts it until then. A thread
    whose connection was closed in the middle of a transaction gets
    :class:`TransactionError` from its next statement and from the end of
    the block; the database rolled that work back.

    **Broken connections.** Outside a transaction, a connection whose socket
    shows that the server went away (restarted, or the backend was
    terminated) is replaced before the next statement is sent. A statement
    that fails because its connection broke raises the driver's error, and
    the next use gets a new connection. Inside a transaction, the error
    reaches the caller and the transaction is lost.

    Args:
        path: A sqlite3 database: a file path, or a ``file:`` URI with
            ``uri=True``. Not ``":memory:"`` nor ``""``: each thread would get
            a database of its own.
        connect: Instead of ``path``: a callable with no arguments that
            returns a new DB-API connection.
        begin: The statement that opens a transaction. Defaults to
            ``"BEGIN IMMEDIATE"`` for sqlite3 (it takes the write lock up
            front, so that concurrent writers wait for the busy timeout
            rather than fail with "database is locked") and ``"BEGIN"`` for
            other drivers.
        setup: Called with each new connection before its first use:
            ``PRAGMA`` statements, ``row_factory``, session settings.
        **connect_kwargs: Passed to :func:`sqlite3.connect` with ``path``
            (``timeout``, ``uri``, ``detect_types``...).

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_begin",
        "_connect",
        "_current",
        "_description",
        "_lock",
        "_setup",
        "_slots",
        "_store",
        "transactions",
    )

    _store: ContextStore
    _lock: threading.Lock
    _slots: dict[int, weakref.ref[_Slot]]
    _current: contextvars.ContextVar[Transaction | None]
    transactions: TransactionManager
    """The :class:`TransactionManager` behind :meth:`transaction`:
    ``db.transactions.current`` is the open transaction of this thread or task."""

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
        /,
        *,
        connect: Callable[[], DBAPIConnection] | None = None,
        begin: str | None = None,
        setup: Callable[[Any], object] | None = None,
        **connect_kwargs: Any,
    ) -> None:
        self._connect, self._description = _connector(path, connect, connect_kwargs)
        given: object = begin
        if given is not None and (not isinstance(given, str) or not given.strip()):
            msg = f"begin must be the SQL statement that opens a transaction, got {begin!r}."
            raise ValueError(msg)
        hook: object = setup
        if hook is not None and not callable(hook):
            msg = f"setup must be a callable that takes a connection, got {setup!r}."
            raise TypeError(msg)
        self._begin = begin
        self._setup = setup
        self._lock = threading.Lock()
        self._slots = {}
        self._store = ContextStore(
            f"contextual.db.{next(_names)}", backend="thread", propagate=False
        )
        self._current = contextvars.ContextVar(f"{self._store.name}.transaction", default=None)
        self.transactions = TransactionManager(self)
        with _dbs_lock:
            _dbs.add(self)

    def __repr__(self) -> str:
        return f"<ThreadLocalDB {self._description}, {self.open_connections} open>"

    def __reduce__(self) -> str | tuple[Any, ...]:
        msg = (
            "a ThreadLocalDB can't be pickled: its connections belong to this process's "
            "threads. Give the other process the path or DSN and make a ThreadLocalDB there."
        )
        raise TypeError(msg)

    # -- connections --------------------------------------------------------

    @property
    def connection(self) -> Any:
        """This thread's connection, opened if it has none.

        Never handed to another thread. Use it for what :meth:`execute`
        doesn't cover (``cursor()`` with server-side cursors, ``copy``...);
        statements run on it directly bypass the bookkeeping described in
        :meth:`transaction`.
        """
        return self._slot().connection

    def _slot(self) -> _Slot:
        """Return this thread's live slot, opening a connection if needed."""
        slot: _Slot | None = self._store._get()[0].get("slot")  # noqa: SLF001
        if slot is None or slot.connection is None:
            return self._reopen(slot)
        if slot.poll is not None and slot.transaction is None and slot.poll.poll(0):
            return self._check_alive(slot)
        return slot

    def _reopen(self, slot: _Slot | None) -> _Slot:
        if slot is not None:
            if slot.retired is not None:
                retired, slot.retired = slot.retired, None
                slot.finalizer.detach()
                retired.close()
            if slot.transaction is not None:
                raise _closed_in_transaction(slot)
        return self._open()

    def _open(self) -> _Slot:
        connection = self._connect()
        try:
            _autocommit(connection)
            if self._setup is not None:
                self._setup(connection)
            cursor = connection.cursor()
        except BaseException:
            _close_quietly(connection)
            raise
        slot = _Slot()
        slot.connection = connection
        slot.cursor = cursor
        slot.lock = threading.Lock()
        slot.thread = threading.get_ident()
        slot.transaction = None
        slot.closed_by = None
        slot.retired = None
        slot.poll = _socket_poll(connection)
        if self._begin is not None:
            slot.begin = self._begin
        elif isinstance(connection, sqlite3.Connection):
            slot.begin = "BEGIN IMMEDIATE"
        else:
            slot.begin = "BEGIN"
        slot.finalizer = weakref.finalize(slot, _close_quietly, connection)
        with self._lock:
            self._slots = {k: r for k, r in self._slots.items() if r() is not None}
            self._slots[id(slot)] = weakref.ref(slot)
        self._store["slot"] = slot
        return slot

    def _check_alive(self, slot: _Slot) -> _Slot:
        # The socket of an idle connection has something to read: a
        # notification, or the server saying goodbye. A probe tells which.
        try:
            with slot.lock:
                slot.cursor.execute("SELECT 1")
                slot.cursor.fetchall()
        except Exception:  # noqa: BLE001 (any failure means: replace it)
            self._discard(slot, "a broken connection")
            return self._open()
        return slot

    def _discard(self, slot: _Slot, reason: str) -> None:
        slot.closed_by = reason
        slot.connection = slot.cursor = slot.poll = None
        slot.finalizer()

    def close(self) -> None:
        """Close this thread's connection, if it has one.

        The next use in this thread opens a new one.

        Raises:
            TransactionError: A transaction is open on it in this thread;
                end the ``with db.transaction()`` block first.
        """
        slot: _Slot | None = self._store._get()[0].get("slot")  # noqa: SLF001
        if slot is None:
            return
        if slot.transaction is not None:
            msg = (
                f"close() was called inside a transaction on {self!r}; leave the "
                "'with db.transaction()' block first (its end commits or rolls back)."
            )
            raise TransactionError(msg)
        with slot.lock:
            if slot.connection is not None:
                self._discard(slot, "close()")
        del self._store["slot"]

    def close_all(self) -> None:
        """Close every thread's connection, from any thread.

        Idle connections close at once. A statement in progress is
        interrupted, and its connection closed once it returns. A
        connection that only its own thread may close is closed there, the
        next time that thread uses this object or when it exits. Every
        thread that uses this object afterwards gets a new connection; one
        that was inside a transaction gets :class:`TransactionError` until it
        leaves the ``with`` block.
        """
        with self._lock:
            slots = [s for r in self._slots.values() if (s := r()) is not None]
            self._slots = {}
        for slot in slots:
            if not slot.lock.acquire(blocking=False):
                _interrupt(slot.connection)
                slot.lock.acquire()
            try:
                if slot.connection is None:
                    continue
                try:
                    slot.connection.close()
                except sqlite3.ProgrammingError:
                    # check_same_thread: its own thread closes it (_reopen).
                    slot.retired = slot.connection
                    slot.closed_by = "close_all()"
                    slot.connection = slot.cursor = slot.poll = None
                    with self._lock:
                        self._slots[id(slot)] = weakref.ref(slot)
                    continue
                slot.finalizer.detach()
                slot.closed_by = "close_all()"
                slot.connection = slot.cursor = slot.poll = None
            finally:
                slot.lock.release()

    @property
    def open_connections(self) -> int:
        """How many connections are open in this process, in all threads."""
        with self._lock:
            slots = [s for r in self._slots.values() if (s := r()) is not None]
        return sum(1 for s in slots if s.connection is not None or s.retired is not None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_all()

    # -- statements ---------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """Run one statement on this thread's connection and return its rows.

        Args:
            sql: The statement, with the driver's placeholders (``?`` or
                ``:name`` for sqlite3, ``%s`` or ``%(name)s`` for psycopg).
            params: Its parameters.

        Returns:
            Every row, as the driver gives them; an empty list for a
            statement that returns no rows.

        Raises:
            TransactionError: This thread's connection is inside a
                transaction that another task opened, or an earlier
                statement of the current transaction block failed.
        """
        slot = self._slot()
        if slot.transaction is not None:
            self._check_transaction(slot)
        with slot.lock:
            cursor = slot.cursor
            try:
                cursor.execute(sql, params)
                if cursor.description is None:
                    return []
                rows: list[Any] = cursor.fetchall()
            except BaseException:
                self._failed(slot)
                raise
        return rows

    def executemany(
        self, sql: str, seq_of_params: Iterable[Sequence[Any] | Mapping[str, Any]]
    ) -> int:
        """Run one statement once for each set of parameters.

        Returns:
            The number of rows changed, or -1 if the driver can't tell.

        Raises:
            TransactionError: As for :meth:`execute`.
        """
        slot = self._slot()
        if slot.transaction is not None:
            self._check_transaction(slot)
        with slot.lock:
            cursor = slot.cursor
            try:
                cursor.executemany(sql, seq_of_params)
            except BaseException:
                self._failed(slot)
                raise
            count: int = cursor.rowcount
        return count

    def _check_transaction(self, slot: _Slot) -> None:
        transaction = slot.transaction
        assert transaction is not None  # noqa: S101 (the caller checked)
        if transaction._owner != _owner():  # noqa: SLF001
            raise _other_owner(self, transaction, "run a statement on it")
        if transaction._failed:  # noqa: SLF001
            msg = (
                "an earlier statement in this transaction block failed, so the block "
                "will roll back; no statement can run in it any more. To go on after a "
                "statement that may fail, run it in a nested 'with db.transaction():' "
                "block and catch the error outside that block."
            )
            raise TransactionError(msg)

    def _failed(self, slot: _Slot) -> None:
        """Record a failed statement (called with ``slot.lock`` held)."""
        if slot.transaction is not None:
            # PostgreSQL refuses every further statement of a transaction
            # after an error; sqlite3 goes on. Refusing on both keeps code
            # that catches the error from committing half its work.
            slot.transaction._failed = True  # noqa: SLF001
        elif slot.connection is not None and _is_broken(slot.connection):
            self._discard(slot, "a broken connection")

    # -- used by TransactionManager ----------------------------------------

    def _run(self, slot: _Slot, sql: str) -> None:
        """Run a transaction-control statement on ``slot``."""
        if slot.connection is None:
            raise _closed_in_transaction(slot)
        with slot.lock:
            slot.cursor.execute(sql)

    def transaction(self, *, durable: bool = False) -> Transaction:
        """Open a transaction (or a savepoint, inside one): a ``with`` block or a decorator.

        Shorthand for ``db.transactions.transaction(durable=durable)``; see
        :meth:`TransactionManager.transaction`.
        """
        return Transaction(self.transactions, durable=durable)


def _connector(
    path: object, connect: object, kwargs: dict[str, Any]
) -> tuple[Callable[[], Any], str]:
    if connect is not None:
        if path is not None:
            msg = "give ThreadLocalDB either a sqlite3 path or connect=, not both."
            raise TypeError(msg)
        if not callable(connect):
            msg = f"connect must be a callable that returns a new connection, got {connect!r}."
            raise TypeError(msg)
        if kwargs:
            msg = (
                f"keyword arguments {sorted(kwargs)} go to sqlite3.connect() with a path; with "
                "connect=, bind them in the callable (functools.partial(driver.connect, ...))."
            )
            raise TypeError(msg)
        return connect, f"connect={getattr(connect, '__qualname__', connect)!r}"
    return _sqlite_connector(path, kwargs)


def _sqlite_connector(path: object, kwargs: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    if path is None:
        msg = (
            "ThreadLocalDB needs a sqlite3 database path, or connect= with a callable that "
            "returns a DB-API connection."
        )
        raise TypeError(msg)
    if not isinstance(path, (str, bytes, os.PathLike)):
        msg = f"path must be a str, bytes or os.PathLike, got {type(path).__name__} {path!r}."
        raise TypeError(msg)
    if os.fspath(path) in (":memory:", "", b":memory:", b""):
        msg = (
            f"ThreadLocalDB({path!r}) would give each thread a separate, empty database. "
            "Use a file, or a shared in-memory database: "
            "ThreadLocalDB('file:name?mode=memory&cache=shared', uri=True)."
        )
        raise ValueError(msg)
    for name in ("isolation_level", "autocommit"):
        if name in kwargs:
            msg = (
                f"ThreadLocalDB opens sqlite3 connections in autocommit mode and issues BEGIN "
                f"itself, so it doesn't take {name}=. Choose the BEGIN statement with begin=, "
                "such as begin='BEGIN DEFERRED'."
            )
            raise TypeError(msg)
    options = {"check_same_thread": False, **kwargs, "isolation_level": None}

    def connect_sqlite() -> sqlite3.Connection:
        connection: sqlite3.Connection = sqlite3.connect(database, **options)
        return connection

    database: Any = path
    return connect_sqlite, f"sqlite3 {os.fsdecode(database)!r}"


def _autocommit(connection: Any) -> None:
    if isinstance(connection, sqlite3.Connection):
        connection.isolation_level = None
    # psycopg, psycopg2, and sqlite3's PEP 249 mode (3.12), which ignores
    # isolation_level.
    if getattr(connection, "autocommit", None) is False:
        connection.autocommit = True


def _closed_in_transaction(slot: _Slot) -> TransactionError:
    if slot.closed_by == "fork":
        what = (
            "this process was forked while a transaction was open on this thread's "
            "connection, which stays with the parent process"
        )
    else:
        what = (
            f"this thread's connection was closed ({slot.closed_by}) while a transaction "
            "was open on it, so the database rolled the transaction back"
        )
    msg = (
        f"{what}. Leave the 'with db.transaction()' block; the next use of the db "
        "opens a new connection."
    )
    return TransactionError(msg)


def _other_owner(db: ThreadLocalDB, transaction: Transaction, action: str) -> TransactionError:
    msg = (
        f"can't {action}: this thread's connection of {db!r} is inside a transaction that "
        f"another task opened ({transaction._owner_name()}). Tasks on one thread share its "  # noqa: SLF001
        "connection, so their transactions would mix. Await the work inside that task, or "
        "run it on a thread of its own (asyncio.to_thread, contextual.to_thread)."
    )
    return TransactionError(msg)


def _after_fork_in_child() -> None:
    global _dbs_lock  # noqa: PLW0603
    # Another thread of the parent may have held any of these locks when it
    # forked; in the child that thread no longer exists to release them.
    _dbs_lock = threading.Lock()
    for db in list(_dbs):
        db._lock = threading.Lock()  # noqa: SLF001
        for ref in db._slots.values():  # noqa: SLF001
            slot = ref()
            if slot is not None and slot.connection is not None:
                slot.finalizer.detach()
                _inherited.append(slot.connection)
                slot.closed_by = "fork"
                slot.connection = slot.cursor = slot.poll = None
                slot.lock = threading.Lock()
        db._slots = {}  # noqa: SLF001


os.register_at_fork(after_in_child=_after_fork_in_child)
