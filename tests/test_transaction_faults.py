"""Transactions under real faults: a COMMIT whose answer is lost, interrupted, or
a block closed from another thread."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from _db_support import CommitReplyDropper, Database, database, postgres, sqlite
from _servers import postgres_dsn
from contextual import (
    CommitOutcomeUnknownError,
    ScopeError,
    ThreadLocalDB,
    TransactionError,
    TransactionManager,
)

__all__ = ["database", "postgres", "sqlite"]  # the fixtures, imported for pytest

INSERT = "INSERT INTO T (k, v) VALUES (?, ?)"


def insert(database: Database, db: ThreadLocalDB, k: int) -> None:
    db.execute(database.sql(INSERT), (k, str(k)))


def keys(database: Database) -> list[int]:
    return [k for k, _ in database.rows()]


def hooked(txn: Any, ran: list[str]) -> None:
    txn.on_commit(lambda: ran.append("on_commit"))
    txn.on_rollback(lambda: ran.append("on_rollback"))


# -- a COMMIT whose answer is lost ---------------------------------------------------


@pytest.fixture
def dropper(postgres: Database) -> Iterator[CommitReplyDropper]:
    with CommitReplyDropper(postgres_dsn()) as proxy:
        yield proxy


def test_a_commit_whose_answer_is_lost_is_of_unknown_outcome(
    postgres: Database, dropper: CommitReplyDropper
) -> None:
    db = ThreadLocalDB(connect=lambda: psycopg.connect(dropper.dsn, autocommit=True))
    ran: list[str] = []
    with pytest.raises(CommitOutcomeUnknownError) as caught, db.transaction() as txn:
        hooked(txn, ran)
        insert(postgres, db, 1)
    assert dropper.dropped.is_set(), "the server answered the COMMIT, and the answer was lost"
    assert keys(postgres) == [1], "the server did commit: a retry would insert twice"
    assert ran == [], "neither on_commit nor on_rollback: nobody knows which happened"
    assert txn.state == "unknown"
    assert isinstance(caught.value, TransactionError)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    message = str(caught.value)
    assert "no telling whether this transaction was committed" in message
    assert "Check whether its changes are there" in message
    assert "1 on_commit hooks did not" in message
    assert "nothing of this transaction was committed" not in message
    # The broken connection was closed; the next use opens a new one.
    assert db.open_connections == 0
    insert(postgres, db, 2)
    assert keys(postgres) == [1, 2]
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
        insert(postgres, db, 1)
        db.connection.close()
    assert not isinstance(caught.value, CommitOutcomeUnknownError)
    assert (txn.state, ran) == ("rolled back", ["on_rollback"])
    assert keys(postgres) == []


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
    ran: list[str] = []
    with pytest.raises(KeyboardInterrupt), db.transaction() as txn:
        hooked(txn, ran)
        insert(sqlite, db, 1)
    assert (txn.state, keys(sqlite), ran) == (state, rows, hooks)
    db.close_all()


class _InterruptedPostgres:
    """A real psycopg connection whose COMMIT is interrupted before or after it runs."""

    def __init__(self, dsn: str, *, after: bool) -> None:
        self.real = psycopg.connect(dsn, autocommit=True)
        self.after = after
        self.info = self.real.info
        self.autocommit = True

    def cursor(self) -> Any:
        owner, real = self, self.real.cursor()

        class Cursor:
            description: Any = None
            rowcount = -1

            @property
            def statusmessage(self) -> Any:
                return real.statusmessage

            def execute(self, sql: str, params: Any = ()) -> Any:
                if sql == "COMMIT":
                    if owner.after:
                        real.execute(sql)
                    raise KeyboardInterrupt
                real.execute(sql, params)
                self.description = real.description
                return self

            def fetchall(self) -> list[Any]:
                return real.fetchall()

        return Cursor()

    def close(self) -> None:
        self.real.close()


@pytest.mark.parametrize(
    ("after", "state", "rows", "hooks"),
    [(False, "rolled back", [], ["on_rollback"]), (True, "committed", [1], ["on_commit"])],
    ids=["before the commit", "after the commit"],
)
def test_ctrl_c_at_a_postgres_commit_asks_the_server_where_it_is(
    postgres: Database, after: bool, state: str, rows: list[int], hooks: list[str]
) -> None:
    db = ThreadLocalDB(connect=lambda: _InterruptedPostgres(postgres_dsn(), after=after))
    ran: list[str] = []
    with pytest.raises(KeyboardInterrupt), db.transaction() as txn:
        hooked(txn, ran)
        insert(postgres, db, 1)
    assert (txn.state, keys(postgres), ran) == (state, rows, hooks)
    db.close_all()


# -- a block closed from another thread ---------------------------------------------


class _Recording:
    """A real connection that records which thread runs each statement."""

    def __init__(self, real: Any, log: list[tuple[int, str]]) -> None:
        self.real = real
        self.log = log

    def cursor(self) -> Any:
        real, log = self.real.cursor(), self.log

        class Cursor:
            description: Any = None
            rowcount = -1

            def execute(self, sql: str, params: Any = ()) -> Any:
                log.append((threading.get_ident(), sql.split(maxsplit=1)[0]))
                real.execute(sql, params)
                self.description = real.description
                return self

            def fetchall(self) -> list[Any]:
                return real.fetchall()

        return Cursor()

    def close(self) -> None:
        self.real.close()


def test_a_block_closed_from_another_thread_is_current_nowhere(database: Database) -> None:
    log: list[tuple[int, str]] = []
    db = ThreadLocalDB(connect=lambda: _Recording(database.connect(), log))
    ran: list[tuple[str, int]] = []

    def held() -> Iterator[None]:
        with db.transaction() as txn:
            txn.on_rollback(lambda: ran.append(("on_rollback", threading.get_ident())))
            insert(database, db, 1)
            yield

    generator = held()
    next(generator)
    assert db.transactions.current is not None
    closer = threading.Thread(target=generator.close)
    closer.start()
    closer.join()
    assert db.transactions.current is None, "not current in the thread that opened it"
    assert [sql for thread, sql in log if thread != threading.get_ident()] == [], (
        "the closing thread ran nothing on this thread's connection"
    )
    assert ran == [("on_rollback", closer.ident)]
    # This thread closes the retired connection before using it again, which
    # rolls the work back, and goes on with a new one.
    with db.transaction():
        insert(database, db, 2)
    assert keys(database) == [2]
    assert db.open_connections == 1
    db.close_all()


def test_a_savepoint_closed_from_another_thread_fails_the_enclosing_transaction(
    database: Database,
) -> None:
    db = database.db()

    def held() -> Iterator[None]:
        with db.transaction():
            insert(database, db, 2)
            yield

    with pytest.raises(TransactionError, match="closed from another thread"), db.transaction():
        insert(database, db, 1)
        generator = held()
        next(generator)
        closer = threading.Thread(target=generator.close)
        closer.start()
        closer.join()
        assert db.transactions.current is not None
        assert db.transactions.current.parent is None, "the outer one is current again"
    assert keys(database) == []


def test_a_block_closed_after_its_thread_exited_closes_its_connection(
    database: Database,
) -> None:
    db = database.db()
    handed: list[Iterator[None]] = []

    def held() -> Iterator[None]:
        with db.transaction():
            insert(database, db, 1)
            yield

    def opener() -> None:
        generator = held()
        next(generator)
        handed.append(generator)

    thread = threading.Thread(target=opener)
    thread.start()
    thread.join()
    assert db.open_connections == 1, "the suspended block holds its connection"
    handed.pop().close()
    assert db.open_connections == 0
    assert keys(database) == []


def test_a_block_exited_without_error_from_another_thread_is_refused(
    database: Database,
) -> None:
    db = database.db()
    txn = db.transaction()
    txn.__enter__()
    insert(database, db, 1)
    errors: list[BaseException] = []

    def exit_here() -> None:
        try:
            txn.__exit__(None, None, None)
        except ScopeError as error:
            errors.append(error)

    thread = threading.Thread(target=exit_here)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert "rolled back instead of committed" in str(errors[0])
    assert txn.state == "rolled back"
    assert db.transactions.current is None
    assert db.execute("SELECT 1") == [(1,)]  # a new connection, outside any transaction
    assert keys(database) == []


def test_a_unit_of_work_closed_from_another_thread_is_current_nowhere() -> None:
    manager = TransactionManager()
    ran: list[str] = []

    def held() -> Iterator[None]:
        with manager.transaction() as txn:
            txn.on_rollback(lambda: ran.append("on_rollback"))
            yield

    generator = held()
    next(generator)
    closer = threading.Thread(target=generator.close)
    closer.start()
    closer.join()
    assert (manager.current, ran) == (None, ["on_rollback"])
    manager.on_commit(lambda: ran.append("at once"))
    assert ran == ["on_rollback", "at once"], "no transaction: the hook runs now"
