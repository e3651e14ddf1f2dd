"""One DB-API connection per thread: opened on first use, closed with its thread."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import select
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast, final

from contextual import ContextStore
from contextual._core.fork import after_fork_in_child
from contextual._core.store import backend_of

from ._errors import TransactionError
from ._transaction import (
    Transaction,
    TransactionManager,
    _DatabaseLink,
    _owner,
    failed_block,
    innermost_open,
    other_owner,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from types import TracebackType

    from typing_extensions import Self

    from contextual._core.backends import ThreadBackend

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


@after_fork_in_child
def _keep_inherited() -> None:  # pragma: no cover - runs in forked children only
    """Do nothing at the fork (each db's own hook sets its connections aside).

    Held by the after-fork registry until the interpreter ends, this
    function keeps this module's globals, ``_inherited`` among them, alive
    as long: the parent's connections are never collected, closed, nor
    warned about while the child's modules are torn down.
    """


_names = itertools.count(1)


@final
class _Generation:
    """One generation of a ThreadLocalDB's connections: live until ``close_all()`` ends it.

    Each connection's slot holds the generation it opened in; ``close_all()``
    ends the current one, a write to it and never to a slot that another
    thread is using, and each thread closes its connection of an ended
    generation before using it.
    """

    __slots__ = ("live",)

    live: bool

    def __init__(self, *, live: bool = True) -> None:
        self.live = live


# A slot's ``ready`` while its statements need checks first: never live.
_NOT_READY: Final = _Generation(live=False)


class _Slot:
    """One thread's connection, and what ThreadLocalDB knows about it.

    Only its thread's store holds it strongly; ``ThreadLocalDB`` keeps a weak
    reference for ``close_all()``. When the thread exits, its store's values
    go, the slot goes, and ``finalizer`` closes the connection, in that
    thread. Only that thread ever closes it otherwise: no lock is needed
    around a statement, and sqlite3's own thread check stays on.
    Transactions use it through ``_transaction._ConnectionSlot``.
    """

    __slots__ = (
        "__weakref__",
        "after_close",
        "begin",
        "close_lock",
        "closed_by",
        "connection",
        "cursor",
        "failed",
        "finalizer",
        "generation",
        "local",
        "readable",
        "ready",
        "retired",
        "sqlite",
        "task",
        "thread",
        "transaction",
    )

    connection: Any
    cursor: Any
    # Taken by the few paths that close the connection or interrupt it from
    # another thread (never around a statement): sqlite3's interrupt() reads
    # the connection's handle unguarded, so it must not race close().
    close_lock: threading.Lock
    thread: int
    begin: str
    # For a connection with a socket (fileno()): checked before use outside
    # a transaction, to notice a server that dropped the connection.
    readable: Callable[[], object] | None
    transaction: Transaction | None
    # The asyncio task that opened the transactions open on the connection,
    # or None: a thread did, or none is open. Only enter() sets it.
    task: object
    # The transactions open on the connection in which a statement failed.
    failed: set[Transaction]
    sqlite: bool
    # The db's generation when this connection opened; close_all() ends it,
    # and the thread closes a connection of an ended one before using it.
    generation: _Generation
    # ``generation`` when a statement can go straight to the cursor (an open
    # sqlite3 connection, no transaction check to make), else _NOT_READY.
    # The fast path tests ``ready.live``: one test covers both.
    ready: _Generation
    closed_by: str | None
    # Set from another thread (a transaction of this connection's closed
    # there): the owning thread closes the connection before its next use.
    retired: str | None
    # Called once the connection is closed, wherever that happens (its
    # thread, its thread's exit, the last reference going): the rollback
    # hooks of a transaction that another thread closed.
    after_close: list[Callable[[], object]]
    # The owning thread's store: the one whose "slot" is this one.
    local: Any
    finalizer: weakref.finalize[Any, _Slot]

    def enter(self, transaction: Transaction | None, owner: object) -> None:
        """Make ``transaction``, entered by ``owner``, the innermost one open on this connection.

        ``owner`` is the thread's identifier or the asyncio task that entered
        it (``_transaction._owner()``); ignored without a transaction.
        """
        self.transaction = transaction
        task = None if transaction is None or isinstance(owner, int) else owner
        self.task = task
        # Inside a transaction a statement needs checks only when a task
        # owns it (another task must not join) or a statement failed in it.
        # A ready slot has no task, which lets transactions skip enter().
        fast = (
            self.sqlite
            and self.connection is not None
            and task is None
            and transaction not in self.failed
        )
        self.ready = self.generation if fast else _NOT_READY
        # retire() writes retired, then ready: read in the other order here,
        # one of the two threads sees the other's write, and no fast path
        # survives a retirement. That needs each store and load to be seen
        # in program order: the GIL gives it, and so do the free-threaded
        # builds, which make every slot store and load a critical section on
        # the object.
        if self.retired is not None:
            self.ready = _NOT_READY

    def retire(self, reason: str, then: Callable[[], object]) -> None:
        """Have the owning thread close the connection before its next use; any thread.

        ``then`` is called once the connection is closed.
        """
        self.after_close.append(then)
        self.retired = reason
        self.ready = _NOT_READY

    def owned_here(self) -> bool:
        """Tell whether the calling thread is the one this connection belongs to."""
        slot: _Slot | None = self.local.values.get("slot")
        return slot is self

    def drop(self, reason: str) -> None:
        """Forget the connection (closed, or left to another process)."""
        self.closed_by = reason
        self.connection = self.cursor = self.readable = None
        self.ready = _NOT_READY

    def close(self, reason: str) -> None:
        """Close the connection now (in its own thread, or as it dies)."""
        with self.close_lock:
            self.drop(reason)
            self.finalizer()

    def lost_before_commit(self) -> bool:
        """Tell whether the connection is already lost, so a COMMIT would never arrive.

        A server that ended the session on its own (the backend terminated,
        an idle-in-transaction timeout) says so on the socket, which a
        driver only reads with the next answer: without this check, that
        COMMIT would seem to have broken the connection while it ran.
        """
        connection = self.connection
        if connection is None or _is_broken(connection):
            return True
        if self.readable is None or not self.readable():
            return False
        # The server spoke unprompted inside a transaction: most likely its
        # goodbye. A probe tells; inside the transaction it changes nothing.
        try:
            self.cursor.execute("SELECT 1")
            self.cursor.fetchall()
        except Exception:  # noqa: BLE001 (the COMMIT that follows reports the rest)
            return _is_broken(connection)
        return False

    def commit_outcome(
        self, error: BaseException, broken_before: bool
    ) -> Literal["committed", "not committed", "unknown"]:
        """Tell what became of the transaction whose ``COMMIT`` raised ``error``.

        Args:
            error: What the ``COMMIT`` raised.
            broken_before: The connection was already broken when the
                ``COMMIT`` was sent, so it never reached the server.
        """
        connection = self.connection
        if connection is None or broken_before:
            return "not committed"  # never sent; closing the connection rolled it back
        if self.sqlite:
            return _sqlite_commit_outcome(connection, error)
        if _is_broken(connection):
            # The COMMIT went out and the connection broke before the answer
            # came: the server may have committed. Nobody here can tell.
            return "unknown"
        if isinstance(error, Exception):
            return "not committed"  # the server answered with an error
        # Interrupted while the COMMIT ran, and the connection survived:
        # psycopg says where the server is (libpq's transaction status).
        status = getattr(getattr(connection, "info", None), "transaction_status", None)
        if status == _IDLE:
            committed = getattr(self.cursor, "statusmessage", None) == "COMMIT"
            return "committed" if committed else "not committed"
        return "not committed" if status in (_INTRANS, _INERROR) else "unknown"


def _close_quietly(connection: Any, pid: int, after_close: list[Callable[[], object]]) -> None:
    # Runs as a finalizer: at thread exit in the owning thread, when the
    # slot dies elsewhere (a traceback or a Transaction kept it), or at
    # interpreter exit. Nothing can be done about a failure there.
    if os.getpid() != pid:
        # A forked child frees the slots of the parent's other threads
        # before any after-fork hook runs: keep those connections, unused.
        _inherited.append(connection)
        return
    with contextlib.suppress(Exception):
        connection.close()
    for then in after_close:
        then()  # hook runners: they log their own failures


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


def _sqlite_commit_outcome(
    connection: sqlite3.Connection, error: BaseException
) -> Literal["committed", "not committed"]:
    if isinstance(error, sqlite3.Error):
        return "not committed"  # SQLite refused it: still open, or rolled back
    # Anything else (Ctrl-C, an exception from a signal handler) was raised by
    # Python around the C call, which ran to its end or never started: the
    # connection knows which.
    try:
        return "not committed" if connection.in_transaction else "committed"
    except sqlite3.ProgrammingError:
        return "not committed"  # closed: closing rolled it back


def _interrupt(connection: Any) -> None:
    """Ask a running statement to stop, from another thread."""
    # sqlite3's interrupt() is made for this and costs nothing when idle.
    # psycopg's cancel_safe() (cancel() before 3.2) asks the server, and
    # waits for it: only for a connection that is running a query.
    if isinstance(connection, sqlite3.Connection):
        method = connection.interrupt
    else:
        info = getattr(connection, "info", None)
        if getattr(info, "transaction_status", None) != _ACTIVE:
            return
        method = getattr(connection, "cancel_safe", None) or connection.cancel
    # On failure the statement just runs to its end.
    with contextlib.suppress(Exception):
        method()


# psycopg's TransactionStatus (libpq's PGTransactionStatusType): no
# transaction, a query running, inside a transaction, inside a failed one.
_IDLE, _ACTIVE, _INTRANS, _INERROR = 0, 1, 2, 3


def _readable(connection: Any) -> Callable[[], object] | None:
    """A check that ``connection``'s socket has something to read, or None."""
    fileno = getattr(connection, "fileno", None)
    if not callable(fileno):
        return None  # sqlite3, and drivers that don't show their socket
    fd = fileno()
    if _poll is None:
        # Windows has no poll(); its select() takes sockets, which is all
        # a connection's fileno() is there.
        return functools.partial(_select_readable, fd)
    poll = _poll()
    poll.register(fd, select.POLLIN | select.POLLPRI)
    return functools.partial(poll.poll, 0)


def _select_readable(fd: int) -> list[Any]:
    readable: list[Any] = select.select([fd], [], [], 0)[0]
    return readable


# poll() where the system has it: select() refuses descriptors past
# FD_SETSIZE (1024), which a busy server's connections reach.
_poll = getattr(select, "poll", None)


@final
class ThreadLocalDB:
    """One database connection per thread, opened on first use and always closed.

    Give it a sqlite3 database file, or a ``connect`` callable that returns a
    DB-API 2.0 connection (psycopg, for one)::

        db = ThreadLocalDB("app.sqlite3")
        db = ThreadLocalDB(connect=functools.partial(psycopg.connect, dsn))

    Each thread that touches ``db`` gets a connection of its own, which no
    other thread ever receives: the connection lives in a ``"thread"``
    :class:`~contextual.ContextStore` with ``propagate=False``, so it stays behind when
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

    **close_all() and threads.** A connection in use is only ever closed by
    its own thread, so a statement never takes a lock. :meth:`close_all`
    closes the calling thread's connection at once, interrupts the
    statements other threads are running (``interrupt()``,
    ``cancel_safe()``), and retires their connections: each thread closes
    its own the next time it uses ``db``, before running anything on it, or
    when it exits, whichever comes first. A thread blocked for good keeps
    its connection open until interpreter exit; :attr:`open_connections`
    counts it until then. A thread that was inside a transaction gets
    :class:`TransactionError` from its next statement, or from the end of
    the block: closing its connection rolled that work back.

    sqlite3 connections opened from a path use ``check_same_thread=False``:
    ``db`` itself keeps each one to its thread, and the flag lets a
    connection be closed wherever its last reference goes (a traceback kept
    by another thread). Don't hand ``db.connection`` to another thread.

    **Broken connections.** Outside a transaction, a connection whose socket
    shows that the server went away (restarted, or the backend was
    terminated) is replaced before the next statement is sent. A statement
    that fails because its connection broke raises the driver's error, and
    the next use gets a new connection. Inside a transaction, the error
    reaches the caller and the transaction is lost. A connection that breaks
    while ``COMMIT`` runs raises :class:`CommitOutcomeUnknownError`: the
    server may have committed. On a system without ``select.poll()``
    (Windows), the socket is checked with ``select.select()``.

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
    .. versionchanged:: 0.2.0
       A commit whose outcome is unknown raises
       :class:`CommitOutcomeUnknownError`; the liveness check works without
       ``select.poll()``.
    """

    __slots__ = (
        "__weakref__",
        "_begin",
        "_connect",
        "_description",
        "_generation",
        "_link",
        "_local",
        "_lock",
        "_setup",
        "_slots",
        "_store",
        "transactions",
    )

    _store: ContextStore
    # The current generation of connections: close_all() ends it.
    _generation: _Generation
    # What this database hands to its transactions.
    _link: _DatabaseLink
    _lock: threading.Lock
    _slots: dict[int, weakref.ref[_Slot]]
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
        self._generation = _Generation()
        self._store = ContextStore(
            f"contextual.db.{next(_names)}", backend="thread", propagate=False
        )
        # The store's threading.local, read directly on the fast path.
        self._local = cast("ThreadBackend", backend_of(self._store)).local
        operations = (self._slot, self._run, self._close_if_retired)
        self._link = _DatabaseLink(self, self._store.name, operations)
        self.transactions = self._link.transactions
        # Weakly held: the hook ends with this db.
        after_fork_in_child(self._forget_connections_after_fork)

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
        slot: _Slot | None = self._local.values.get("slot")
        if slot is not None and slot.ready.live:
            return slot
        return self._prepared(slot)

    def _prepared(self, slot: _Slot | None) -> _Slot:
        """Return ``slot`` checked (closing it if close_all() retired it), or a new one."""
        if slot is None:
            return self._open()
        self._close_if_retired(slot)
        if slot.connection is None:
            # A transaction closed from another thread is over: only one it
            # was nested in, still open here, makes this an error.
            slot.transaction = innermost_open(slot.transaction)
            if slot.transaction is not None:
                raise _closed_in_transaction(slot)
            return self._open()
        if slot.readable is not None and slot.transaction is None and slot.readable():
            return self._check_alive(slot)
        return slot

    def _close_if_retired(self, slot: _Slot) -> None:
        """Close ``slot``'s connection if close_all() or another thread retired it."""
        if slot.connection is not None:
            if slot.retired is not None:
                self._discard(slot, slot.retired)
            elif not slot.generation.live:
                self._discard(slot, "close_all()")

    def _open(self) -> _Slot:
        connection = self._connect()
        try:
            _autocommit(connection)
            if self._setup is not None:
                self._setup(connection)
            cursor = connection.cursor()
        except BaseException:
            _close_quietly(connection, os.getpid(), [])
            raise
        slot = _Slot()
        slot.connection = connection
        slot.cursor = cursor
        slot.thread = threading.get_ident()
        slot.close_lock = threading.Lock()
        slot.generation = self._generation
        slot.closed_by = slot.retired = None
        slot.after_close = []
        slot.failed = set()
        slot.local = self._local
        slot.readable = _readable(connection)
        slot.sqlite = isinstance(connection, sqlite3.Connection)
        slot.enter(None, None)
        if self._begin is not None:
            slot.begin = self._begin
        elif slot.sqlite:
            slot.begin = "BEGIN IMMEDIATE"
        else:
            slot.begin = "BEGIN"
        slot.finalizer = weakref.finalize(
            slot, _close_quietly, connection, os.getpid(), slot.after_close
        )
        with self._lock:
            self._slots = {k: r for k, r in self._slots.items() if r() is not None}
            self._slots[id(slot)] = weakref.ref(slot)
        self._store["slot"] = slot
        return slot

    def _check_alive(self, slot: _Slot) -> _Slot:
        # The socket of an idle connection has something to read: a
        # notification, or the server saying goodbye. A probe tells which.
        try:
            slot.cursor.execute("SELECT 1")
            slot.cursor.fetchall()
        except Exception:  # noqa: BLE001 (any failure means: replace it)
            self._discard(slot, "a broken connection")
            return self._open()
        return slot

    def _discard(self, slot: _Slot, reason: str) -> None:
        slot.close(reason)

    def close(self) -> None:
        """Close this thread's connection, if it has one.

        The next use in this thread opens a new one.

        Raises:
            TransactionError: A transaction is open on it in this thread;
                end the ``with db.transaction()`` block first.
        """
        slot: _Slot | None = self._local.values.get("slot")
        if slot is None:
            return
        if innermost_open(slot.transaction) is not None:
            msg = (
                f"close() was called inside a transaction on {self!r}; leave the "
                "'with db.transaction()' block first (its end commits or rolls back)."
            )
            raise TransactionError(msg)
        if slot.connection is not None:
            self._discard(slot, "close()")
        del self._store["slot"]

    def close_all(self) -> None:
        """Close this thread's connection now, and retire every other thread's.

        Statements running in other threads are interrupted; each of those
        threads closes its own connection the next time it uses this object
        (and then gets a new one), or when it exits. A thread that was inside
        a transaction gets :class:`TransactionError` until it leaves the
        ``with`` block. See the class description for why another thread's
        connection is never closed from here.
        """
        here = threading.get_ident()
        with self._lock:
            self._generation.live = False
            self._generation = _Generation()
            slots = self._live_slots()
        for slot in slots:
            if slot.thread == here:
                if slot.connection is not None:
                    self._discard(slot, "close_all()")
                continue
            with slot.close_lock:
                if slot.connection is not None:
                    _interrupt(slot.connection)
        # Other threads' slots must die in their own threads, not here.
        del slots

    def _live_slots(self) -> list[_Slot]:
        """The slots whose thread still holds them. Call with ``_lock`` held."""
        return [s for r in self._slots.values() if (s := r()) is not None]

    def _forget_connections_after_fork(self) -> None:
        """Leave every connection to the parent process: this is its forked child."""
        # Another thread of the parent may have held the lock when it forked;
        # in the child that thread no longer exists to release it.
        self._lock = threading.Lock()
        for ref in self._slots.values():
            slot = ref()
            if slot is not None and slot.connection is not None:
                slot.finalizer.detach()
                _inherited.append(slot.connection)
                slot.drop("fork")
        self._slots = {}

    @property
    def open_connections(self) -> int:
        """How many connections are open in this process, in all threads.

        Connections that :meth:`close_all` retired count until their thread
        closes them.
        """
        with self._lock:
            slots = self._live_slots()
        return sum(1 for s in slots if s.connection is not None)

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
        slot: _Slot | None = self._local.values.get("slot")
        if slot is None or not slot.ready.live:
            return self._execute(self._prepared(slot), sql, params)
        try:
            # sqlite3 answers [] for statements without rows, and building
            # cursor.description costs more than this whole method.
            rows: list[Any] = slot.cursor.execute(sql, params).fetchall()
        except BaseException:
            self._failed(slot)
            # A traceback the caller keeps holds this frame: it must not
            # keep the connection open after its thread exits.
            del slot
            raise
        return rows

    def _execute(self, slot: _Slot, sql: str, params: Any) -> list[Any]:
        if slot.transaction is not None:
            self._check_transaction(slot)
        cursor = slot.cursor
        try:
            cursor.execute(sql, params)
            rows: list[Any] = [] if cursor.description is None else cursor.fetchall()
        except BaseException:
            self._failed(slot)
            # A traceback the caller keeps holds this frame: it must not
            # keep the connection open after its thread exits.
            del slot
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
        cursor = slot.cursor
        try:
            cursor.executemany(sql, seq_of_params)
        except BaseException:
            self._failed(slot)
            # A traceback the caller keeps holds this frame: it must not
            # keep the connection open after its thread exits.
            del slot
            raise
        count: int = cursor.rowcount
        return count

    def _check_transaction(self, slot: _Slot) -> None:
        # A transaction opened outside any task lets an event loop run
        # inside its block take part (that code is nested in the block);
        # one opened by a task is that task's alone.
        task = slot.task
        if task is not None and task != _owner():
            raise other_owner(self, task, "run a statement on it")
        if slot.transaction in slot.failed:
            raise failed_block()

    def _failed(self, slot: _Slot) -> None:
        """Record a failed statement."""
        if slot.transaction is not None:
            # PostgreSQL refuses every further statement of a transaction
            # after an error; sqlite3 goes on. Refusing on both keeps code
            # that catches the error from committing half its work.
            slot.failed.add(slot.transaction)
            slot.ready = _NOT_READY
        elif slot.connection is not None and _is_broken(slot.connection):
            self._discard(slot, "a broken connection")

    # -- used by transactions ------------------------------------------------
    # Through the _transaction._DatabaseLink this object hands them: its
    # _slot, _close_if_retired and _run.

    def _run(self, slot: _Slot, sql: str) -> None:
        """Run a transaction-control statement on ``slot``."""
        self._close_if_retired(slot)
        if slot.connection is None:
            raise _closed_in_transaction(slot)
        cursor = slot.cursor
        # A traceback the caller keeps holds this frame: it must not keep
        # the connection open after its thread exits.
        del slot
        cursor.execute(sql)

    def transaction(self, *, durable: bool = False) -> Transaction:
        """Open a transaction (or a savepoint, inside one): a ``with`` block or a decorator.

        Shorthand for ``db.transactions.transaction(durable=durable)``; see
        :meth:`TransactionManager.transaction`.
        """
        link = self._link
        return Transaction(self.transactions, durable, link.current, link)


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
    # The library gives each connection to one thread only; sqlite3's own
    # check would also stop the finalizer from closing a connection whose
    # last reference went away in another thread (a kept traceback).
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
