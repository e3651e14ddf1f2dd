"""Transactions under real faults: a COMMIT whose answer is lost, interrupted, or
a block closed from another thread."""

from __future__ import annotations

import select
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from contextual import ScopeError
from contextual.db import (
    CommitOutcomeUnknownError,
    ThreadLocalDB,
    Transaction,
    TransactionError,
    TransactionManager,
)
from support.db import (
    Database,
    Intercept,
    Intercepted,
    PostgresProxy,
    database,
    postgres,
    sqlite,
    wait_for,
)
from support.servers import postgres_dsn

__all__ = ["database", "postgres", "sqlite"]  # the fixtures, imported for pytest


def hooked(txn: Any, ran: list[str]) -> None:
    txn.on_commit(lambda: ran.append("on_commit"))
    txn.on_rollback(lambda: ran.append("on_rollback"))


def in_another_thread(fn: Callable[[], object]) -> threading.Thread:
    """Run ``fn`` in a new thread, to its end; return the thread."""
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join()
    return thread


def interrupted(database: Database, db: ThreadLocalDB) -> tuple[Transaction, list[str]]:
    """Insert a row in a block whose COMMIT gets Ctrl-C; return it and the hooks that ran."""
    ran: list[str] = []
    with pytest.raises(KeyboardInterrupt), db.transaction() as txn:
        hooked(txn, ran)
        database.insert(db, 1)
    return txn, ran


# -- a COMMIT whose answer is lost ---------------------------------------------------


@pytest.fixture
def dropper(postgres: Database) -> Iterator[PostgresProxy]:
    with PostgresProxy(postgres_dsn(), drop_commit_reply=True) as proxy:
        yield proxy


def test_a_commit_whose_answer_is_lost_is_of_unknown_outcome(
    postgres: Database, dropper: PostgresProxy
) -> None:
    db = ThreadLocalDB(connect=lambda: psycopg.connect(dropper.dsn, autocommit=True))
    ran: list[str] = []
    with pytest.raises(CommitOutcomeUnknownError) as caught, db.transaction() as txn:
        hooked(txn, ran)
        postgres.insert(db, 1)
    assert dropper.dropped.is_set(), "the server answered the COMMIT, and the answer was lost"
    assert postgres.keys() == [1], "the server did commit: a retry would insert twice"
    assert ran == [], "neither on_commit nor on_rollback: nobody knows which happened"
    assert txn.state == "unknown"
    assert isinstance(caught.value, TransactionError)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    message = str(caught.value)
    assert "no telling whether this transaction was committed" in message
    assert "Check whether its changes are there" in message
    assert "(1 on_commit hook did not run)" in message
    assert "nothing of this transaction was committed" not in message
    # The broken connection was closed; the next use opens a new one.
    assert db.open_connections == 0
    postgres.insert(db, 2)
    assert postgres.keys() == [1, 2]
    db.close_all()


def test_a_commit_the_server_refuses_is_still_a_rollback(postgres: Database) -> None:
    db = postgres.db()
    table = f"{postgres.table}_d"
    db.execute(f"CREATE TABLE {table} (k INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    ran: list[str] = []
    try:
        with pytest.raises(TransactionError) as caught, db.transaction() as txn:
            hooked(txn, ran)
            db.execute(f"INSERT INTO {table} VALUES (1), (1)")  # refused at COMMIT
        assert not isinstance(caught.value, CommitOutcomeUnknownError)
        assert "nothing of this transaction was committed" in str(caught.value)
        assert (txn.state, ran) == ("rolled back", ["on_rollback"])
    finally:
        db.execute(f"DROP TABLE {table}")


def test_a_commit_on_a_connection_closed_before_it_is_a_rollback(postgres: Database) -> None:
    # Closed before the COMMIT was sent: it never reached the server.
    db = postgres.db()
    ran: list[str] = []
    with pytest.raises(TransactionError) as caught, db.transaction() as txn:
        hooked(txn, ran)
        postgres.insert(db, 1)
        db.connection.close()
    assert not isinstance(caught.value, CommitOutcomeUnknownError)
    assert (txn.state, ran) == ("rolled back", ["on_rollback"])
    assert postgres.keys() == []


def _terminate(postgres: Database, pid: int) -> None:
    admin = postgres.connect()
    try:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        admin.close()


def _time_out(postgres: Database, pid: int) -> None:
    del pid  # the server ends the session by itself
    # idle_in_transaction_session_timeout, set in the block: 50 ms idle ends it.


def _gone(postgres: Database, pid: int) -> bool:
    admin = postgres.connect()
    try:
        return not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchall()
    finally:
        admin.close()


@pytest.mark.parametrize("end", [_terminate, _time_out], ids=["terminated", "idle timeout"])
def test_a_session_the_server_ended_before_the_commit_is_a_rollback(
    postgres: Database, end: Any
) -> None:
    # The server rolled back when it ended the session: certain, not unknown,
    # though the driver only learns of it when it reads the COMMIT's answer.
    db = postgres.db()
    ran: list[str] = []
    with pytest.raises(TransactionError) as caught, db.transaction() as txn:
        hooked(txn, ran)
        db.execute("SET LOCAL idle_in_transaction_session_timeout = 50")
        postgres.insert(db, 1)
        (pid,) = db.execute("SELECT pg_backend_pid()")[0]
        end(postgres, pid)
        wait_for(lambda: _gone(postgres, pid), f"the end of backend {pid}")
    assert not isinstance(caught.value, CommitOutcomeUnknownError)
    assert "nothing of this transaction was committed" in str(caught.value)
    assert (txn.state, ran, postgres.keys()) == ("rolled back", ["on_rollback"], [])
    postgres.insert(db, 2)  # a new connection
    assert postgres.keys() == [2]


def test_a_live_session_whose_server_spoke_unprompted_still_commits(postgres: Database) -> None:
    # The socket has something to read before the COMMIT, as when the server
    # says goodbye; here it is a notice, and the probe finds the session alive.
    with PostgresProxy(postgres_dsn()) as proxy:
        db = ThreadLocalDB(connect=lambda: psycopg.connect(proxy.dsn, autocommit=True))
        notices: list[str | None] = []
        ran: list[str] = []
        with db.transaction() as txn:
            hooked(txn, ran)
            postgres.insert(db, 1)
            connection = db.connection
            connection.add_notice_handler(lambda notice: notices.append(notice.message_primary))
            proxy.notice("unprompted")
            readable, _, _ = select.select([connection.fileno()], [], [], 10)
            assert readable, "the notice arrived before the COMMIT"
        assert (txn.state, ran, postgres.keys()) == ("committed", ["on_commit"], [1])
        assert notices == ["unprompted"], "read by the probe before the COMMIT"
        db.close_all()


# -- a COMMIT interrupted (Ctrl-C) --------------------------------------------------


class _InterruptCursor(sqlite3.Cursor):
    """Raises KeyboardInterrupt at COMMIT: before running it, or once it ran."""

    after = False

    def execute(self, sql: str, parameters: Any = (), /) -> _InterruptCursor:
        if sql == "COMMIT":
            if self.after:
                super().execute(sql, parameters)
            raise KeyboardInterrupt
        super().execute(sql, parameters)
        return self


class _InterruptAfterCursor(_InterruptCursor):
    after = True


class _InterruptBefore(sqlite3.Connection):
    def cursor(self, factory: Any = _InterruptCursor) -> Any:
        return super().cursor(factory)


class _InterruptAfter(sqlite3.Connection):
    def cursor(self, factory: Any = _InterruptAfterCursor) -> Any:
        return super().cursor(factory)


@pytest.mark.parametrize(
    ("factory", "state", "rows", "hooks"),
    [
        (_InterruptBefore, "rolled back", [], ["on_rollback"]),
        (_InterruptAfter, "committed", [1], ["on_commit"]),
    ],
    ids=["before the commit", "after the commit"],
)
def test_ctrl_c_at_a_sqlite_commit_reports_what_really_happened(
    sqlite: Database,
    factory: type[sqlite3.Connection],
    state: str,
    rows: list[int],
    hooks: list[str],
) -> None:
    # Python raises KeyboardInterrupt around sqlite3's C call, never inside
    # it: the connection tells whether the COMMIT ran.
    db = ThreadLocalDB(sqlite.path, factory=factory)
    txn, ran = interrupted(sqlite, db)
    assert (txn.state, sqlite.keys(), ran) == (state, rows, hooks)
    db.close_all()


def test_ctrl_c_at_the_commit_of_a_closed_sqlite_connection_is_a_rollback(
    sqlite: Database,
) -> None:
    db = ThreadLocalDB(sqlite.path, factory=_InterruptBefore)
    ran: list[str] = []
    with pytest.raises(KeyboardInterrupt), db.transaction() as txn:
        hooked(txn, ran)
        sqlite.insert(db, 1)
        db.connection.close()  # closing rolled it back
    assert (txn.state, sqlite.keys(), ran) == ("rolled back", [], ["on_rollback"])
    assert db.execute("SELECT 1") == [(1,)]
    db.close_all()


def _interrupt_commit(after: bool | str) -> Intercept:
    """Ctrl-C at the COMMIT: before it runs, after (``True``), or as the connection breaks."""

    def intercept(sql: str, run: Callable[[], object], real: Any) -> None:
        if sql != "COMMIT":
            run()
            return
        if after:
            run()
        if after == "break":
            real.close()
        raise KeyboardInterrupt

    return intercept


def _interrupted_postgres(after: bool | str) -> Callable[[], Intercepted]:
    return lambda: Intercepted(
        psycopg.connect(postgres_dsn(), autocommit=True), _interrupt_commit(after)
    )


@pytest.mark.parametrize(
    ("after", "state", "rows", "hooks"),
    [(False, "rolled back", [], ["on_rollback"]), (True, "committed", [1], ["on_commit"])],
    ids=["before the commit", "after the commit"],
)
def test_ctrl_c_at_a_postgres_commit_asks_the_server_where_it_is(
    postgres: Database, after: bool, state: str, rows: list[int], hooks: list[str]
) -> None:
    db = ThreadLocalDB(connect=_interrupted_postgres(after))
    txn, ran = interrupted(postgres, db)
    assert (txn.state, postgres.keys(), ran) == (state, rows, hooks)
    db.close_all()


def test_ctrl_c_as_the_connection_breaks_at_the_commit_is_of_unknown_outcome(
    postgres: Database,
) -> None:
    db = ThreadLocalDB(connect=_interrupted_postgres("break"))
    txn, ran = interrupted(postgres, db)
    assert (txn.state, ran) == ("unknown", [])
    assert db.open_connections == 0
    db.close_all()


# -- a block closed from another thread ---------------------------------------------


def _recording(database: Database, log: list[tuple[int, str]]) -> Callable[[], Intercepted]:
    """Real connections that log which thread runs each statement."""

    def intercept(sql: str, run: Callable[[], object], real: Any) -> None:
        del real
        log.append((threading.get_ident(), sql.split(maxsplit=1)[0]))
        run()

    return lambda: Intercepted(database.connect(), intercept)


def test_a_block_closed_from_another_thread_is_current_nowhere(database: Database) -> None:
    log: list[tuple[int, str]] = []
    db = ThreadLocalDB(connect=_recording(database, log))
    ran: list[tuple[str, int]] = []

    def held() -> Iterator[None]:
        with db.transaction() as txn:
            txn.on_rollback(lambda: ran.append(("on_rollback", threading.get_ident())))
            database.insert(db, 1)
            yield

    generator = held()
    next(generator)
    assert db.transactions.current is not None
    in_another_thread(generator.close)
    assert db.transactions.current is None, "not current in the thread that opened it"
    assert [sql for thread, sql in log if thread != threading.get_ident()] == [], (
        "the closing thread ran nothing on this thread's connection"
    )
    assert ran == [], "rollback hooks wait for the rollback"
    # This thread closes the retired connection before using it again, which
    # rolls the work back, runs the hooks, and goes on with a new one.
    with db.transaction():
        assert ran == [("on_rollback", threading.get_ident())]
        database.insert(db, 2)
    assert database.keys() == [2]
    assert db.open_connections == 1
    db.close()  # nothing open here: close() agrees
    assert db.open_connections == 0


def test_a_savepoint_closed_from_another_thread_fails_the_enclosing_transaction(
    database: Database,
) -> None:
    db = database.db()

    def held() -> Iterator[None]:
        with db.transaction():
            database.insert(db, 2)
            yield

    with (
        pytest.raises(TransactionError, match="its savepoint contextual_1 was closed from another"),
        db.transaction(),
    ):
        database.insert(db, 1)
        generator = held()
        next(generator)
        in_another_thread(generator.close)
        assert db.transactions.current is not None
        assert db.transactions.current.parent is None, "the outer one is current again"
    assert database.keys() == []


def test_a_block_closed_after_its_thread_exited_closes_its_connection(
    database: Database,
) -> None:
    db = database.db()
    handed: list[Iterator[None]] = []

    blocks: list[Transaction] = []

    def held() -> Iterator[None]:
        with db.transaction() as txn:
            blocks.append(txn)
            database.insert(db, 1)
            yield

    def opener() -> None:
        generator = held()
        next(generator)
        handed.append(generator)

    in_another_thread(opener)
    assert db.open_connections == 1, "the suspended block holds its connection"
    ran: list[str] = []
    generator = handed.pop()
    blocks[0].on_rollback(lambda: ran.append("on_rollback"))
    generator.close()
    assert db.open_connections == 0, "nobody else could use it: closed at once"
    assert ran == ["on_rollback"], "after the close, which rolled it back"
    assert database.keys() == []


def test_a_block_exited_without_error_from_another_thread_is_refused(
    database: Database,
) -> None:
    db = database.db()
    txn = db.transaction()
    txn.__enter__()
    database.insert(db, 1)
    errors: list[BaseException] = []

    def exit_here() -> None:
        try:
            txn.__exit__(None, None, None)
        except ScopeError as error:
            errors.append(error)

    in_another_thread(exit_here)
    assert len(errors) == 1
    assert "rolled back instead of committed" in str(errors[0])
    assert txn.state == "rolled back"
    assert db.transactions.current is None
    with pytest.raises(ScopeError, match="exited again: it had already ended"):
        txn.__exit__(None, None, None)  # the entering thread's own exit, later
    assert db.execute("SELECT 1") == [(1,)]  # a new connection, outside any transaction
    assert database.keys() == []


def test_a_unit_of_work_closed_from_another_thread_is_current_nowhere() -> None:
    manager = TransactionManager()
    ran: list[str] = []

    def held() -> Iterator[None]:
        with manager.transaction() as txn:
            txn.on_rollback(lambda: ran.append("on_rollback"))
            yield

    generator = held()
    next(generator)
    in_another_thread(generator.close)
    assert (manager.current, ran) == (None, ["on_rollback"])
    manager.on_commit(lambda: ran.append("at once"))
    assert ran == ["on_rollback", "at once"], "no transaction: the hook runs now"


def test_a_block_exited_in_a_later_thread_with_a_reused_id_is_still_refused(
    database: Database,
) -> None:
    # Thread IDs are reused as soon as a thread exits: ownership is the
    # connection's, not the ID's. (Whether the OS reuses the ID here or
    # not, the later thread must not run anything on the dead one's
    # connection.)
    db = database.db()
    handed: list[Iterator[None]] = []
    idents: list[int | None] = []
    messages: list[str] = []

    def held() -> Iterator[None]:
        with db.transaction():
            database.insert(db, 1)
            yield

    def opener() -> None:
        generator = held()
        next(generator)
        handed.append(generator)

    def finisher() -> None:
        try:
            next(handed[0])
        except ScopeError as error:
            idents.append(threading.get_ident())
            messages.append(str(error))

    in_another_thread(opener)
    later = in_another_thread(finisher)
    assert idents == [later.ident], "refused, whatever its ID"
    assert "rolled back instead of committed" in messages[0]
    assert database.keys() == []
    assert db.open_connections == 0


def test_a_unit_of_work_nested_in_a_block_closed_elsewhere_keeps_no_hook_silently() -> None:
    manager = TransactionManager()
    ran: list[str] = []

    def held() -> Iterator[None]:
        with manager.transaction() as outer:
            outer.on_rollback(lambda: ran.append("outer on_rollback"))
            yield

    generator = held()
    next(generator)
    with pytest.raises(TransactionError, match="closed from another thread"):  # noqa: SIM117
        with manager.transaction() as inner:  # nests in the generator's block
            inner.on_rollback(lambda: ran.append("inner on_rollback"))
            inner.on_commit(lambda: ran.append("inner on_commit"))
            in_another_thread(generator.close)
    assert inner.state == "rolled back"
    assert ran == ["outer on_rollback", "inner on_rollback"]


def test_a_savepoint_open_here_when_its_transaction_is_closed_elsewhere_rolls_back(
    database: Database,
) -> None:
    db = database.db()
    ran: list[str] = []

    def held() -> Iterator[None]:
        with db.transaction() as outer:
            outer.on_rollback(lambda: ran.append("outer on_rollback"))
            database.insert(db, 1)
            yield

    generator = held()
    next(generator)
    with pytest.raises(TransactionError, match="closed from another thread"):  # noqa: SIM117
        with db.transaction() as inner:  # a savepoint in the generator's block
            inner.on_rollback(lambda: ran.append("inner on_rollback"))
            database.insert(db, 2)
            in_another_thread(generator.close)
            assert ran == [], "nothing rolled back yet"
    assert inner.state == "rolled back"
    # Closing the connection rolled both back, then ran both blocks' hooks.
    assert sorted(ran) == ["inner on_rollback", "outer on_rollback"]
    assert database.keys() == []
    assert db.execute("SELECT 1") == [(1,)]


def test_a_refused_commit_kept_after_its_thread_exits_keeps_no_connection(
    postgres: Database,
) -> None:
    db = postgres.db()
    table = f"{postgres.table}_d"
    db.execute(f"CREATE TABLE {table} (k INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with db.transaction():
                db.execute(f"INSERT INTO {table} VALUES (1), (1)")
        except TransactionError as error:
            errors.append(error)  # its traceback and cause go with it

    try:
        in_another_thread(worker)
        assert len(errors) == 1
        assert db.open_connections == 1  # this thread's, from the CREATE TABLE
    finally:
        db.execute(f"DROP TABLE {table}")


def test_a_savepoint_released_as_its_transaction_is_closed_elsewhere_is_an_error(
    database: Database,
) -> None:
    # The enclosing block ends in another thread while this one releases:
    # its hooks would go into a finished block, so it says so.
    during_release: list[Callable[[], None]] = []

    def intercept(sql: str, run: Callable[[], object], real: Any) -> None:
        del real
        if sql.startswith("RELEASE") and during_release:
            during_release.pop()()
        run()

    db = ThreadLocalDB(connect=lambda: Intercepted(database.connect(), intercept))
    ran: list[str] = []

    def held() -> Iterator[None]:
        with db.transaction() as outer:
            outer.on_rollback(lambda: ran.append("outer on_rollback"))
            yield

    generator = held()
    next(generator)

    def close_elsewhere() -> None:
        in_another_thread(generator.close)

    during_release.append(close_elsewhere)
    with pytest.raises(TransactionError, match="closed from another thread"):  # noqa: SIM117
        with db.transaction() as inner:
            inner.on_rollback(lambda: ran.append("inner on_rollback"))
            database.insert(db, 1)
    assert inner.state == "released"
    assert db.execute("SELECT 1") == [(1,)]  # closes the retired connection first
    # The inner block's hooks joined in time: newest first, as an undo log.
    assert ran == ["inner on_rollback", "outer on_rollback"]
    assert database.keys() == []
    db.close_all()
