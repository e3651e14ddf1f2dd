"""Transaction scopes: commit or roll back, savepoints, and after-commit hooks."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    NoReturn,
    Protocol,
    TypeVar,
    final,
)

from contextual import ScopeError
from contextual._core.decorate import AsyncToo, decorate
from contextual._core.fork import renew_locks_after_fork

from ._errors import CommitOutcomeUnknownError, TransactionError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Transaction", "TransactionManager", "TransactionState", "innermost_open"]

_F = TypeVar("_F", bound=Callable[..., Any])
_H = TypeVar("_H", bound=Callable[[], object])

logger: Final = logging.getLogger("contextual.transactions")

TransactionState = Literal["new", "open", "released", "committed", "rolled back", "unknown"]
"""The life of a :class:`Transaction`: ``"new"`` until its block starts,
``"open"`` inside it, then ``"committed"`` or ``"rolled back"``; a savepoint
whose block succeeded is ``"released"``: its work and hooks joined the
enclosing transaction, whose end decides them. ``"unknown"``: the connection
broke while ``COMMIT`` ran, so the database may or may not have committed it
(see :class:`CommitOutcomeUnknownError`).

.. versionchanged:: 0.2.0
   ``"unknown"``."""


class _Generation(Protocol):
    """One generation of a database's connections: live until the database ends it."""

    @property
    def live(self) -> bool:
        """Whether the generation is still the database's current one."""


class _ConnectionSlot(Protocol):
    """What a transaction uses of the connection it runs on: one thread's, of its database.

    ``ThreadLocalDB``'s per-thread slot is the one kind. This layer knows
    databases only through this and ``_Database``: the DB layer builds on
    this one, so this one never imports it.
    """

    cursor: Any
    # The statement that opens a transaction.
    begin: str
    # The innermost transaction open on the connection.
    transaction: Transaction | None
    # The transactions open on the connection in which a statement failed:
    # nothing more runs in them, and they roll back.
    failed: set[Transaction]
    # The DB-API connection, or None once it is closed.
    connection: Any

    @property
    def ready(self) -> _Generation:
        """Live when a statement can go straight to the cursor: no check to make first."""

    def enter(self, transaction: Transaction | None, owner: object) -> None:
        """Make ``transaction``, entered by ``owner`` (see ``_owner()``), the innermost one."""

    def owned_here(self) -> bool:
        """Tell whether the calling thread is the one this connection belongs to."""

    def retire(self, reason: str, then: Callable[[], object]) -> None:
        """Have the owning thread close the connection; call ``then`` once it is closed."""

    def lost_before_commit(self) -> bool:
        """Tell whether the connection is already lost, so a COMMIT would never arrive."""

    def commit_outcome(
        self, error: BaseException, broken_before: bool
    ) -> Literal["committed", "not committed", "unknown"]:
        """Tell what became of the transaction whose ``COMMIT`` raised ``error``."""

    def close(self, reason: str) -> None:
        """Close the connection now."""


class _Database(Protocol):
    """A database that transactions run on: a ``ThreadLocalDB``, which this layer never imports.

    ``TransactionManager(db)`` shares the state of ``db.transactions``.
    """

    @property
    def transactions(self) -> TransactionManager:
        """The manager of the database's transactions."""


@final
class _DatabaseLink:
    """A database as its transactions see it: what ``ThreadLocalDB`` hands to this layer.

    Each ``ThreadLocalDB`` makes one and keeps it; every manager of the
    database, and every transaction on it, holds it. Its operations take
    back the slots it hands out (``slot``), of the database's own kind:
    hence ``Any`` for them here.
    """

    __slots__ = ("close_if_retired", "current", "database", "run", "slot", "transactions")

    # The database itself, and its own manager.
    database: _Database
    transactions: TransactionManager
    # The current transaction of each thread and task: every manager of the
    # database shares it.
    current: contextvars.ContextVar[Transaction | None]
    # This thread's slot of the database, checked and open (a new one if
    # the thread had none).
    slot: Callable[[], _ConnectionSlot]
    # Run a transaction-control statement on ``slot``.
    run: Callable[[Any, str], None]
    # Close ``slot``'s connection if another thread retired it.
    close_if_retired: Callable[[Any], None]

    # operations: the database's slot, run and close_if_retired, in that order.
    def __init__(
        self,
        database: _Database,
        name: str,
        operations: tuple[
            Callable[[], _ConnectionSlot], Callable[[Any, str], None], Callable[[Any], None]
        ],
    ) -> None:
        self.database = database
        self.slot, self.run, self.close_if_retired = operations
        self.current = contextvars.ContextVar(f"{name}.transaction", default=None)
        self.transactions = TransactionManager(self)


def _owner() -> object:
    """The asyncio task running here, or else the thread's identifier."""
    get_running_loop = _get_running_loop or (_loop_getter() if "asyncio" in _modules else None)
    if get_running_loop is not None and get_running_loop() is not None:
        task = _modules["asyncio"].current_task()
        if task is not None:
            return task
    return _get_ident()


def _loop_getter() -> Callable[[], object]:
    """Return asyncio's ``_get_running_loop``, asyncio being imported: "the running loop, or None".

    Without asyncio imported no task can be running, and importing it here
    would cost every program that never uses it: it is looked up once
    asyncio is there. It is exported in ``asyncio.__all__`` for event
    loops; ``get_running_loop()`` and ``current_task()`` raise instead,
    which would cost every call outside a loop.
    """
    global _get_running_loop  # noqa: PLW0603 (set once)
    getter: Callable[[], object] = _modules["asyncio"]._get_running_loop  # noqa: SLF001 (asyncio's own fast "is a loop running", see the docstring)
    _get_running_loop = getter
    return getter


def _owner_name(owner: object) -> str:
    """Name ``owner``, a thread's identifier or a task, for an error message."""
    if isinstance(owner, int):
        return f"thread {owner}"
    get_name = getattr(owner, "get_name", None)
    return f"task {get_name()!r}" if callable(get_name) else repr(owner)


_modules = sys.modules
_get_ident = threading.get_ident
# asyncio's _get_running_loop, once asyncio is imported: see _loop_getter().
_get_running_loop: Callable[[], object] | None = None
# Serialises hook registrations, so that two threads adding hooks to one
# transaction at once both get in.
_hooks_lock = threading.Lock()


renew_locks_after_fork(globals(), "_hooks_lock")


@final
class TransactionManager:
    """Track the current transaction of each thread and task, and run its hooks.

    With a :class:`ThreadLocalDB`, transactions are database transactions
    on the current thread's connection (``TransactionManager(db)`` shares
    its state with ``db.transactions``, so both see the same transactions).
    Without one, a transaction is a unit of work with no database: scopes
    nest, and ``on_commit`` and ``on_rollback`` hooks are its participants,
    run when the outermost scope succeeds or when a scope fails.

    Visibility: the current transaction belongs to the thread, or the
    asyncio task, that opened it. :attr:`current` is ``None`` in every
    other thread and task, child tasks and pool workers included; to let
    them add hooks, hand them the :class:`Transaction` itself.

    Args:
        db: The :class:`ThreadLocalDB` whose connections the transactions
            run on, or ``None`` for a unit of work without a database.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_link", "_var")

    _link: _DatabaseLink | None
    _var: contextvars.ContextVar[Transaction | None]

    def __init__(self, db: _Database | None = None) -> None:
        given: object = db
        if given is None:
            self._link = None
            self._var = contextvars.ContextVar("contextual.transaction", default=None)
        elif isinstance(given, _DatabaseLink):  # a ThreadLocalDB making its own
            self._link, self._var = given, given.current
        else:
            shared = getattr(given, "transactions", None)
            if not isinstance(shared, TransactionManager) or shared.db is not given:
                msg = (
                    f"TransactionManager takes a ThreadLocalDB or None, got {type(given).__name__}."
                )
                raise TypeError(msg)
            self._share(shared)

    def _share(self, other: TransactionManager) -> None:
        """Track the same transactions as ``other``: its database's, in its variable."""
        self._link, self._var = other._link, other._var

    def __repr__(self) -> str:
        link = self._link
        return "<TransactionManager>" if link is None else f"<TransactionManager {link.database!r}>"

    @property
    def db(self) -> _Database | None:
        """The database the transactions run on, if any."""
        link = self._link
        return None if link is None else link.database

    @property
    def current(self) -> Transaction | None:
        """The innermost open transaction of this thread or task, or ``None``."""
        transaction = innermost_open(self._var.get())
        # Who entered it: the one state of a Transaction its manager reads.
        if transaction is None or transaction._owner != _owner():  # noqa: SLF001 (a manager reads who entered its transaction)
            return None
        return transaction

    def transaction(self, *, durable: bool = False) -> Transaction:
        """Open a transaction, or a savepoint inside one: a ``with`` block or a decorator.

        On entry, outside any transaction of this thread or task, it starts
        one (``BEGIN`` on the database); inside one, it makes a savepoint.
        When the block ends normally it commits, or releases its savepoint;
        when it raises, it rolls back (the whole transaction, or to its
        savepoint, so that the enclosing block can go on) and lets the
        exception through. ``on_commit`` hooks run after the outermost
        commit, never after a rollback.

        A statement that fails inside the block marks it: no further
        statement runs in it and it rolls back, even if the code catches the
        error, and then raises :class:`TransactionError` if the block ended
        without an exception. Run statements that may fail in a nested
        block.

        As a decorator (``@db.transaction()``), each call of the function
        runs in a transaction of its own; coroutine functions work too.
        ``async with`` works like ``with``: the statements themselves still
        run synchronously.

        Args:
            durable: Refuse to run inside another transaction, so that a
                successful end of the block is a real commit.

        The block belongs to the thread that entered it. Exited from
        another thread (a generator holding it, closed there), it rolls back
        without touching the connection from there: the entering thread
        closes its connection before its next use (at once, if it has
        exited), which rolls the work back on the server, and gets a new
        one. Its ``on_rollback`` hooks run once that connection is closed;
        until then the server holds the transaction's locks.

        Raises:
            TransactionError: On entry: ``durable`` inside a transaction, or
                this thread's connection is inside a transaction of another
                task. On exit: the database refused the commit (nothing was
                committed), or the block swallowed an error of one of its
                statements.
            CommitOutcomeUnknownError: On exit: the connection broke while
                ``COMMIT`` ran, so the transaction may or may not have been
                committed. Neither ``on_commit`` nor ``on_rollback`` hooks
                run; check for the transaction's changes before redoing it.
            ScopeError: On exit from another thread than the one that
                entered the block, without an exception: it was rolled back.

        .. versionchanged:: 0.2.0
           :class:`CommitOutcomeUnknownError`, and blocks exited from
           another thread.
        """
        return Transaction(self, durable, self._var, self._link)

    def on_commit(self, fn: _H) -> _H:
        """Run ``fn`` after the current transaction commits, or now if there is none.

        The same as ``manager.current.on_commit(fn)`` inside a transaction.
        Outside one, ``fn`` runs at once, as there is nothing to wait for.

        Raises:
            TransactionError: The current context holds a transaction of
                another thread or task (a child task, a pool worker): add the
                hook to that :class:`Transaction` object instead.
        """
        transaction = innermost_open(self._var.get())
        if transaction is None:
            fn()
            return fn
        owner = transaction._owner  # noqa: SLF001 (a manager reads who entered its transaction)
        if owner != _owner():
            msg = (
                f"on_commit() was called from a thread or task that did not open the current "
                f"transaction ({_owner_name(owner)}), so there is no telling whether "
                "it should wait for that one. Call on_commit() on the Transaction object "
                "('with db.transaction() as txn:' ... 'txn.on_commit(fn)')."
            )
            raise TransactionError(msg)
        return transaction.on_commit(fn)


@final
class Transaction(AsyncToo["Transaction"]):
    """One transaction, or one savepoint inside a transaction.

    Made by :meth:`TransactionManager.transaction` and
    :meth:`ThreadLocalDB.transaction`; it serves one ``with`` block (used as
    a decorator, it makes a fresh transaction for each call). See
    :meth:`TransactionManager.transaction` for what its block does.

    Visibility: it belongs to the thread or asyncio task that entered it;
    only that one can nest blocks in it or, with a database, run statements
    in it. Hooks can also come from other threads, as long as they are
    added before the block ends (from work the block waits for, such as a
    pool task whose result it collects); a hook that arrives as the block
    ends raises :class:`TransactionError` rather than being dropped.

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "_commit_hooks",
        "_link",
        "_owner",
        "_rollback_hooks",
        "_slot",
        "_token",
        "_var",
        "durable",
        "manager",
        "parent",
        "state",
    )

    manager: TransactionManager
    """The manager that tracks this transaction."""
    durable: bool
    """Whether it refuses to run inside another transaction."""
    parent: Transaction | None
    """The enclosing transaction, if this one is a savepoint."""
    state: TransactionState
    """Where it is in its life."""

    # The manager's: its current-transaction variable, and its database.
    _var: contextvars.ContextVar[Transaction | None]
    _link: _DatabaseLink | None
    _owner: object
    _slot: _ConnectionSlot | None
    _token: contextvars.Token[Transaction | None]
    # Made on the first hook: most transactions have none.
    _commit_hooks: list[Callable[[], object]] | None
    _rollback_hooks: list[Callable[[], object]] | None

    # Arguments go by position: keywords make every call slower.
    def __init__(
        self,
        manager: TransactionManager,
        durable: bool,
        var: contextvars.ContextVar[Transaction | None],
        link: _DatabaseLink | None,
    ) -> None:
        self.manager = manager
        self.durable = durable
        self._var = var
        self._link = link
        self.parent = None
        self.state = "new"
        self._slot = None
        self._commit_hooks = self._rollback_hooks = None

    def __repr__(self) -> str:
        kind = f"savepoint {self.savepoint}" if self.savepoint else "transaction"
        return f"<Transaction: {kind}, {self.state}>"

    @property
    def depth(self) -> int:
        """0 for an outermost transaction, 1 for a savepoint in it, and so on."""
        depth, parent = 0, self.parent
        while parent is not None:
            depth, parent = depth + 1, parent.parent
        return depth

    @property
    def savepoint(self) -> str | None:
        """The name of its savepoint, or ``None`` for an outermost transaction."""
        return f"contextual_{self.depth}" if self.parent is not None else None

    def on_commit(self, fn: _H) -> _H:
        """Run ``fn()`` once the outermost transaction commits; return ``fn``.

        Hooks run in the order they were added, after the commit and outside
        the transaction (``current`` is ``None`` there). A hook added to a
        savepoint is dropped if that savepoint rolls back. An exception in a
        hook doesn't undo the commit nor stop the other hooks: it is logged
        with its traceback on the ``contextual.transactions`` logger, at
        ERROR level.

        Raises:
            TransactionError: The transaction is no longer open.
        """
        with _hooks_lock:
            self._check_open("on_commit")
            if self._commit_hooks is None:
                self._commit_hooks = []
            self._commit_hooks.append(fn)
            self._check_still_open("on_commit")
        return fn

    def on_rollback(self, fn: _H) -> _H:
        """Run ``fn()`` if this transaction or savepoint rolls back; return ``fn``.

        Hooks run after the rollback, newest first, like an undo log; they
        are dropped when the outermost transaction commits. Exceptions are
        logged as for :meth:`on_commit`.

        Raises:
            TransactionError: The transaction is no longer open.
        """
        with _hooks_lock:
            self._check_open("on_rollback")
            if self._rollback_hooks is None:
                self._rollback_hooks = []
            self._rollback_hooks.append(fn)
            self._check_still_open("on_rollback")
        return fn

    def _check_open(self, what: str) -> None:
        if self.state != "open":
            msg = (
                f"{what}() needs an open transaction, and {self!r} is not: add hooks inside "
                "its 'with' block."
            )
            raise TransactionError(msg)

    def _check_still_open(self, what: str) -> None:
        # The block ends without this lock (it would cost every transaction):
        # if it ended while the hook went in, it may have missed the hook.
        # Say so rather than drop it silently.
        if self.state != "open":
            msg = (
                f"{self!r} ended while {what}() was adding a hook from another thread, so "
                "the hook may not run. Add hooks before the block ends: from its own "
                "code, or from work that the block waits for."
            )
            raise TransactionError(msg)

    def __call__(self, fn: _F) -> _F:
        """Decorate ``fn``: each call runs inside a new transaction like this one."""
        manager, durable, var, link = self.manager, self.durable, self._var, self._link

        def fresh() -> Transaction:
            return Transaction(manager, durable, var, link)

        return decorate(fn, fresh, what="transaction()")

    def __enter__(self) -> Transaction:
        if self.state != "new":
            raise _used(self)
        var = self._var
        # _owner(), inlined for a thread that runs no event loop: this runs
        # for every transaction.
        get_running_loop = _get_running_loop or (_loop_getter() if "asyncio" in _modules else None)
        running = get_running_loop is not None and get_running_loop() is not None
        owner = _owner() if running else _get_ident()
        parent = var.get()
        if parent is not None:
            parent = self._nest_in(parent, owner)
        self._owner = owner
        link = self._link
        if link is not None:
            slot = link.slot()
            if parent is None:
                if slot.transaction is not None:
                    raise self._connection_taken(link.database, slot.transaction, owner)
                slot.cursor.execute(slot.begin)
            else:
                try:
                    slot.cursor.execute(f"SAVEPOINT {self.savepoint}")
                except BaseException:
                    slot.failed.add(parent)  # PostgreSQL refuses what follows
                    slot.enter(parent, owner)
                    raise
            if slot.ready.live and type(owner) is int:
                slot.transaction = self  # still ready: nothing else to work out
            else:
                slot.enter(self, owner)
            self._slot = slot
        self.state = "open"
        self._token = var.set(self)
        return self

    def _nest_in(self, parent: Transaction, owner: object) -> Transaction | None:
        """Return the block this one nests in (``parent`` or an enclosing one), or None."""
        if parent.state != "open":
            # Closed from another thread, which can't reset this context's
            # variable: the innermost block still open is the one to nest in.
            still_open = innermost_open(parent)
            return None if still_open is None else self._nest_in(still_open, owner)
        if parent._owner != owner:
            return None  # another thread's or task's: not ours to nest in
        if self.durable:
            raise _durable_nested(parent)
        if parent._slot is not None and parent in parent._slot.failed:
            raise failed_block()
        self.parent = parent
        return parent

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The connection's own thread is the one whose store holds its slot:
        # an exact test, where a thread ID can be reused by a later thread.
        if self.state != "open" or (self._slot is not None and not self._slot.owned_here()):
            self._exit_elsewhere(exc_type)
            return
        var = self._var
        current = var.get()
        slot, parent = self._slot, self.parent
        if current is not self or (slot is not None and slot.transaction is not self):
            self._check_order(current)
        try:
            var.reset(self._token)
        except ValueError:
            # Exited in another context than the one it was entered in (an
            # async generator finalized elsewhere): undo there, if it shows.
            if current is self:
                var.set(parent)
        if slot is None:
            self._end(exc_type)
            return
        try:
            # _check_order made sure this block is the connection's innermost.
            if parent is None and slot.ready.live:
                slot.transaction = None  # still ready, as on entry
            else:
                slot.enter(parent, self._owner)
            self._end(exc_type)
        finally:
            # A Transaction, or a traceback through here, kept after the block
            # must not keep the connection alive past its thread.
            self._slot = slot = None

    def _end(self, exc_type: type[BaseException] | None) -> None:
        failed = self._slot is not None and self in self._slot.failed
        if exc_type is None and not failed:
            self._succeed()
            return
        self._roll_back()
        if exc_type is None:
            raise _swallowed_failure()

    def _check_order(self, current: Transaction | None) -> None:
        # The innermost open block, as this context or the connection sees it
        # (a savepoint entered in a copy of the context shows only there).
        slot = self._slot
        for inner in (current, slot.transaction if slot is not None else None):
            if inner is not None and inner.state == "open" and _descends(inner, self):
                msg = (
                    f"{self!r} was exited before the transaction inside it ({inner!r}); "
                    "transactions end innermost first."
                )
                raise ScopeError(msg)

    def _succeed(self) -> None:
        parent, slot, link = self.parent, self._slot, self._link
        if parent is not None:
            self._release(parent)
            return
        if slot is not None and link is not None:
            broken = False
            try:
                if slot.ready.live:
                    # Nothing to check first (an open sqlite3 connection of
                    # the current generation): straight to the cursor.
                    slot.cursor.execute("COMMIT")
                else:
                    broken = slot.lost_before_commit()
                    link.run(slot, "COMMIT")
            except BaseException as error:  # noqa: BLE001 (_commit_failed re-raises it)
                # A traceback the caller keeps holds this frame: it must not
                # keep the connection open after its thread exits.
                del slot
                self._commit_failed(error, broken_before=broken)
            if getattr(slot.cursor, "statusmessage", None) == "ROLLBACK":
                # PostgreSQL answers COMMIT of a failed transaction (a
                # statement that failed on db.connection directly) this way.
                self.state = "rolled back"
                _run_hooks(self._rollback_hooks, "on_rollback")
                msg = (
                    "the database rolled this transaction back instead of committing it: a "
                    "statement in it failed (one run on db.connection directly, which "
                    "db.execute() would have reported)."
                )
                raise TransactionError(msg)
        self.state = "committed"
        if self._commit_hooks:
            _run_hooks(self._commit_hooks, "on_commit")

    def _commit_failed(self, error: BaseException, *, broken_before: bool) -> NoReturn:
        slot = self._slot
        assert slot is not None  # noqa: S101 (only a transaction on a connection commits)
        outcome = slot.commit_outcome(error, broken_before)
        if outcome == "unknown":
            slot.close("a commit whose outcome is unknown")
        # A traceback the caller keeps holds this frame: it must not keep
        # the connection open after its thread exits.
        del slot
        if outcome == "committed":
            # Interrupted (Ctrl-C) once the COMMIT was done: it stands, and
            # so do the hooks that wait for it; the interruption goes on up.
            self.state = "committed"
            _run_hooks(self._commit_hooks, "on_commit")
            raise error
        if outcome == "unknown":
            self.state = "unknown"
            if not isinstance(error, Exception):
                raise error
            raise self._outcome_unknown(error) from error
        # sqlite3 keeps the transaction open after a failed COMMIT ("database
        # is locked"); PostgreSQL has already ended it. Roll back for both.
        self._roll_back()
        if not isinstance(error, Exception):
            raise error  # KeyboardInterrupt before the commit: rolled back, goes on up
        msg = f"the commit failed, so nothing of this transaction was committed: {error}"
        raise TransactionError(msg) from error

    def _release(self, parent: Transaction) -> None:
        """End a savepoint whose block succeeded: its work and hooks join ``parent``."""
        if parent.state != "open":
            self._orphaned(parent)
        slot, link = self._slot, self._link
        if slot is not None and link is not None:
            try:
                link.run(slot, f"RELEASE SAVEPOINT {self.savepoint}")
            except BaseException:
                slot.failed.add(parent)
                slot.enter(parent, self._owner)
                self.state = "rolled back"
                _run_hooks(self._rollback_hooks, "on_rollback")
                raise
        del slot
        self.state = "released"
        # Under the lock that hook registrations take: a parent closed from
        # another thread meanwhile may have missed these hooks.
        with _hooks_lock:
            if self._commit_hooks:
                parent._commit_hooks = (parent._commit_hooks or []) + self._commit_hooks
            if self._rollback_hooks:
                parent._rollback_hooks = (parent._rollback_hooks or []) + self._rollback_hooks
            joined = parent.state == "open"
        if not joined:
            raise _ended_first(self, parent)

    def _orphaned(self, parent: Transaction) -> NoReturn:
        """End a block whose enclosing one ended first (closed from another thread)."""
        slot, link = self._slot, self._link
        if slot is not None and link is not None:
            # This is the connection's own thread: close the retired
            # connection now, which rolls this block's work back with the rest.
            link.close_if_retired(slot)
        del slot
        self.state = "rolled back"
        _run_hooks(self._rollback_hooks, "on_rollback")
        raise _ended_first(self, parent)

    def _exit_elsewhere(self, exc_type: type[BaseException] | None) -> None:
        """End a block exited in a thread other than the one that entered it."""
        if self.state == "new":
            raise ScopeError(f"{self!r} was exited without being entered.")
        if self.state != "open":
            msg = (
                f"{self!r} was exited again: it had already ended, from another thread "
                "or an earlier exit."
            )
            raise ScopeError(msg)
        # A generator holding the block, closed from another thread: its
        # connection belongs to the entering thread, which may be using it
        # right now, and that thread's context still shows this block as
        # current, out of reach from here. So nothing runs on the connection
        # here: it is retired, and its own thread closes it (which rolls the
        # work back) before using it again; or, if that thread is gone, the
        # last reference to it goes below, and that closes it. The rollback
        # hooks run once it is closed, wherever that happens.
        slot = self._slot
        assert slot is not None  # noqa: S101 (checked by the caller)
        self._slot = None
        # Retired before the state changes: a thread that sees this block
        # ended also sees its connection retired, and can't commit on it.
        name = self.savepoint
        what = f"its savepoint {name}" if name else "its transaction"
        slot.retire(f"{what} was closed from another thread", self._run_rollback_hooks)
        self.state = "rolled back"
        del slot
        if exc_type is None:
            msg = (
                f"{self!r} was exited in another thread than the one that entered it, and "
                "a connection is only used by its own thread, so it was rolled back instead "
                "of committed. End a transaction block in the thread that entered it."
            )
            raise ScopeError(msg)

    @staticmethod
    def _connection_taken(db: object, open_one: Transaction, owner: object) -> TransactionError:
        if open_one._owner != owner:
            return other_owner(db, open_one._owner, "open a transaction")
        # Same owner, but this context lost track of it (a block entered in a
        # copy of the context, still open).
        msg = (
            "this thread's connection is already inside a transaction opened in another "
            "context of this thread; exit that block first."
        )
        return TransactionError(msg)

    def _outcome_unknown(self, error: BaseException) -> CommitOutcomeUnknownError:
        hooks = len(self._commit_hooks or ())
        waiting = f"{hooks} on_commit hook{'s' if hooks != 1 else ''} did not run" if hooks else ""
        msg = (
            f"the connection broke while COMMIT ran ({error}), so there is no telling whether "
            "this transaction was committed: the database may have committed it and lost only "
            "the answer. Check whether its changes are there (look up a row it wrote, or an "
            "idempotency key) before doing the work again: redoing it blindly may do it twice. "
            "Neither its on_commit nor its on_rollback hooks "
            f"ran{f' ({waiting})' if waiting else ''}."
        )
        return CommitOutcomeUnknownError(msg)

    def _run_rollback_hooks(self) -> None:
        # Read when they run: a savepoint ending meanwhile may add its own.
        _run_hooks(self._rollback_hooks, "on_rollback")

    def _roll_back(self) -> None:
        """Roll back this block, and run its rollback hooks."""
        parent, slot, link = self.parent, self._slot, self._link
        self.state = "rolled back"
        try:
            if slot is not None and link is not None:
                slot.failed.discard(self)  # over: nothing is refused in it any more
                try:
                    if parent is None:
                        link.run(slot, "ROLLBACK")
                    else:
                        name = self.savepoint
                        link.run(slot, f"ROLLBACK TO SAVEPOINT {name}")
                        link.run(slot, f"RELEASE SAVEPOINT {name}")
                except Exception:  # noqa: BLE001 (the block's own outcome says more)
                    # The work is lost either way: the enclosing block can't
                    # commit (it will roll back), and a connection whose
                    # transaction didn't end is closed, which rolls it back.
                    if parent is not None:
                        slot.failed.add(parent)
                        slot.enter(parent, self._owner)
                    elif slot.connection is not None:
                        slot.close("a failed rollback")
        finally:
            _run_hooks(self._rollback_hooks, "on_rollback")


def _used(transaction: Transaction) -> ScopeError:
    msg = (
        f"{transaction!r} was already used: a Transaction serves one block. Call "
        "db.transaction() again for another one."
    )
    return ScopeError(msg)


def _durable_nested(parent: Transaction) -> TransactionError:
    msg = (
        f"a durable transaction can't start inside another one ({parent!r}): "
        "its commit would not be final. Move the block out of the enclosing "
        "transaction, or drop durable=True."
    )
    return TransactionError(msg)


def other_owner(db: object, owner: object, action: str) -> TransactionError:
    """The error for ``action`` on ``db``'s connection, inside a transaction ``owner`` opened."""
    msg = (
        f"can't {action}: this thread's connection of {db!r} is inside a transaction "
        f"opened by {_owner_name(owner)}. Tasks and other code on one thread share "
        "its connection, so their transactions would mix. Let that transaction end first, "
        "or run this work on a thread of its own (asyncio.to_thread, contextual.to_thread)."
    )
    return TransactionError(msg)


def failed_block() -> TransactionError:
    """The error for a statement or block inside a block whose statement failed."""
    msg = (
        "an earlier statement in this transaction block failed, so the block will roll "
        "back; nothing more can run in it. To go on after a statement that may fail, run "
        "it in a nested 'with db.transaction():' block and catch the error outside that "
        "block."
    )
    return TransactionError(msg)


def _swallowed_failure() -> TransactionError:
    msg = (
        "a statement failed inside this transaction block and the error was caught, "
        "so the block was rolled back instead of committed. Run the statement that may "
        "fail in a nested 'with db.transaction():' block to keep the rest."
    )
    return TransactionError(msg)


def innermost_open(transaction: Transaction | None) -> Transaction | None:
    """Return ``transaction``, or its innermost enclosing transaction that is still open."""
    while transaction is not None and transaction.state != "open":
        transaction = transaction.parent
    return transaction


def _ended_first(transaction: Transaction, parent: Transaction) -> TransactionError:
    msg = (
        f"{transaction!r} ended after the transaction it was nested in, {parent!r}, which "
        "was closed from another thread: its work and its hooks went with that one's. End "
        "a transaction block in the thread that entered it, innermost first."
    )
    return TransactionError(msg)


def _descends(inner: Transaction, outer: Transaction) -> bool:
    parent = inner.parent
    while parent is not None:
        if parent is outer:
            return True
        parent = parent.parent
    return False


def _run_hooks(hooks: list[Callable[[], object]] | None, kind: str) -> None:
    """Run commit hooks in order, rollback hooks newest first; log failures."""
    if not hooks:
        return
    for hook in hooks if kind == "on_commit" else reversed(hooks):
        try:
            hook()
        except Exception:  # noqa: PERF203 (each hook runs whatever the others did)
            logger.exception("%s hook %r raised; the other hooks still ran", kind, hook)
