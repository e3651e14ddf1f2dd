"""ThreadLocalDB: one connection per thread, on a sqlite3 file and on PostgreSQL."""

from __future__ import annotations

import functools
import gc
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contextual import ContextExecutor, ContextThread, list_stores, request_context
from contextual._core import fork
from contextual.db import ThreadLocalDB, TransactionError
from contextual.db import _connection as _db
from support.db import Database, database, postgres, postgres_dsn, sqlite, wait_for

__all__ = ["database", "postgres", "sqlite"]  # the fixtures, imported for pytest


def in_thread(fn: Any) -> Any:
    """Run ``fn`` in a new thread, wait for it, and return what it returned."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


# -- one connection per thread -------------------------------------------------


def test_no_connection_opens_before_first_use(database: Database) -> None:
    db = database.db()
    assert db.open_connections == 0
    db.execute(database.sql("SELECT k FROM T"))
    assert db.open_connections == 1


def test_a_thread_gets_the_same_connection_every_time(database: Database) -> None:
    db = database.db()
    assert db.connection is db.connection


def test_each_thread_gets_a_connection_of_its_own(database: Database) -> None:
    db = database.db()
    barrier = threading.Barrier(3)
    seen: dict[str, Any] = {}

    def worker(name: str) -> None:
        seen[name] = db.connection
        barrier.wait()  # all three are open at once
        seen[f"{name} again"] = db.connection
        barrier.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    seen["main"] = db.connection
    barrier.wait()
    assert db.open_connections == 3
    barrier.wait()
    for thread in threads:
        thread.join()
    assert len({id(seen[n]) for n in ("a", "b", "main")}) == 3
    assert seen["a again"] is seen["a"]
    assert seen["b again"] is seen["b"]


def test_the_connection_store_is_a_thread_store_that_never_propagates(
    database: Database,
) -> None:
    database.db()
    stores = [s for s in list_stores() if s.name.startswith("contextual.db.")]
    assert any(s.backend == "thread" and not s.propagate for s in stores)


def test_pool_workers_and_new_threads_never_receive_the_callers_connection(
    database: Database,
) -> None:
    db = database.db()
    mine = db.connection
    with ContextExecutor(1) as pool:
        in_pool = pool.submit(lambda: db.connection).result()
    thread_saw: list[Any] = []
    thread = ContextThread(target=lambda: thread_saw.append(db.connection))
    thread.start()
    thread.join()
    assert in_pool is not mine
    assert thread_saw[0] is not mine
    assert db.connection is mine


# -- statements ---------------------------------------------------------------


def test_execute_returns_the_rows(database: Database) -> None:
    db = database.db()
    db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (1, "one"))
    rows = db.execute(database.sql("SELECT k, v FROM T WHERE k = ?"), (1,))
    assert [tuple(r) for r in rows] == [(1, "one")]


def test_execute_returns_an_empty_list_for_statements_without_rows(database: Database) -> None:
    db = database.db()
    assert db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (1, "one")) == []
    assert db.execute(database.sql("DELETE FROM T")) == []


def test_executemany_returns_the_rows_changed(database: Database) -> None:
    db = database.db()
    count = db.executemany(
        database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), [(1, "a"), (2, "b"), (3, "c")]
    )
    assert count == 3
    assert database.rows() == [(1, "a"), (2, "b"), (3, "c")]


def test_a_statement_outside_a_transaction_commits_on_its_own(database: Database) -> None:
    db = database.db()
    db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (1, "one"))
    assert database.rows() == [(1, "one")]  # read on another connection


def test_a_failed_statement_raises_the_drivers_error_and_the_connection_goes_on(
    database: Database,
) -> None:
    db = database.db()
    with pytest.raises(database.error):
        db.execute(database.sql("INSERT INTO missing_table VALUES (?)"), (1,))
    db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (1, "one"))
    assert database.rows() == [(1, "one")]


def test_setup_runs_once_on_each_new_connection(database: Database) -> None:
    prepared: list[Any] = []
    db = database.db(setup=prepared.append)
    db.execute(database.sql("SELECT k FROM T"))
    db.execute(database.sql("SELECT k FROM T"))
    other = in_thread(lambda: db.connection)
    assert prepared == [db.connection, other]


def test_a_failing_setup_closes_the_new_connection_and_raises(tmp_path: Path) -> None:
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(tmp_path / "db.sqlite3")
        opened.append(connection)
        return connection

    def setup(connection: Any) -> None:
        raise RuntimeError("bad pragma")

    db = ThreadLocalDB(connect=connect, setup=setup)
    with pytest.raises(RuntimeError, match="bad pragma"):
        db.execute("SELECT 1")
    assert db.open_connections == 0
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")  # closed


def test_sqlite_connections_run_in_autocommit_mode_with_explicit_begin(tmp_path: Path) -> None:
    statements: list[str] = []
    db = ThreadLocalDB(
        tmp_path / "db.sqlite3", setup=lambda c: c.set_trace_callback(statements.append)
    )
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    with db.transaction():
        db.execute("INSERT INTO t VALUES (2)")
    assert statements == [
        "CREATE TABLE t (x)",
        "INSERT INTO t VALUES (1)",
        "BEGIN IMMEDIATE",
        "INSERT INTO t VALUES (2)",
        "COMMIT",
    ]
    db.close_all()


def test_a_connect_callable_s_sqlite_connection_is_switched_to_autocommit(
    tmp_path: Path,
) -> None:
    statements: list[str] = []

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(tmp_path / "db.sqlite3")  # isolation_level ""
        connection.set_trace_callback(statements.append)
        return connection

    db = ThreadLocalDB(connect=connect, begin="BEGIN DEFERRED")
    db.execute("CREATE TABLE t (x)")
    with db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
    db.execute("INSERT INTO t VALUES (2)")
    assert statements == [
        "CREATE TABLE t (x)",
        "BEGIN DEFERRED",
        "INSERT INTO t VALUES (1)",
        "COMMIT",
        "INSERT INTO t VALUES (2)",  # no implicit BEGIN before it
    ]
    db.close_all()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3 autocommit is new in 3.12")
def test_a_sqlite_connection_in_pep_249_mode_is_switched_to_autocommit(tmp_path: Path) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(tmp_path / "db.sqlite3", autocommit=False)

    db = ThreadLocalDB(connect=connect)
    db.execute("CREATE TABLE t (x)")
    assert db.connection.autocommit is True
    assert not db.connection.in_transaction
    db.close_all()


def test_a_driver_connection_with_autocommit_off_is_switched_on(postgres: Database) -> None:
    db = ThreadLocalDB(connect=functools.partial(psycopg.connect, postgres_dsn()))
    postgres.made.append(db)
    assert db.connection.autocommit is True


# -- closing ------------------------------------------------------------------


def test_close_closes_this_threads_connection_and_the_next_use_opens_another(
    database: Database,
) -> None:
    db = database.db()
    first = db.connection
    db.close()
    assert db.open_connections == 0
    assert _closed(first)
    assert db.connection is not first
    assert db.open_connections == 1


def test_close_without_a_connection_does_nothing(database: Database) -> None:
    db = database.db()
    db.close()
    db.close()
    assert db.open_connections == 0


def test_close_inside_a_transaction_is_refused_and_the_transaction_goes_on(
    database: Database,
) -> None:
    db = database.db()
    with db.transaction():
        db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (1, "one"))
        with pytest.raises(TransactionError, match=r"leave the 'with db\.transaction\(\)' block"):
            db.close()
        db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (2, "two"))
    assert database.rows() == [(1, "one"), (2, "two")]


def test_a_connection_is_closed_when_its_thread_exits(database: Database) -> None:
    db = database.db()
    connection = in_thread(lambda: db.connection)
    assert db.open_connections == 0
    assert _closed(connection)


def test_thread_exit_closes_without_a_resource_warning(tmp_path: Path) -> None:
    script = f"""
        import threading
        from contextual.db import ThreadLocalDB
        db = ThreadLocalDB({str(tmp_path / "db.sqlite3")!r})
        threads = [threading.Thread(target=db.execute, args=("SELECT 1",)) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert db.open_connections == 0, db.open_connections
        db.execute("SELECT 1")  # the main thread's: closed at interpreter exit
        print("done")
    """
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


def test_close_all_retires_idle_connections_and_their_threads_close_them(
    database: Database,
) -> None:
    db = database.db()
    opened = threading.Barrier(4)
    go_on = threading.Event()
    seen: dict[int, tuple[Any, Any, bool]] = {}

    def worker(n: int) -> None:
        first = db.connection
        opened.wait()
        go_on.wait()
        after = db.connection  # the first use after close_all()
        seen[n] = (first, after, _closed(first))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    opened.wait()
    db.close_all()
    assert db.open_connections == 3  # retired, still open: only their threads close them
    go_on.set()
    for thread in threads:
        thread.join()
    assert [closed for _, _, closed in seen.values()] == [True, True, True]
    assert all(after is not first for first, after, _ in seen.values())
    assert db.open_connections == 0  # the new ones closed as their threads exited


def test_close_all_interrupts_a_running_statement(tmp_path: Path) -> None:
    started = threading.Event()

    def setup(connection: sqlite3.Connection) -> None:
        connection.create_function("started", 0, lambda: started.set() or 0)

    db = ThreadLocalDB(tmp_path / "db.sqlite3", setup=setup)
    errors: list[BaseException] = []
    after: list[Any] = []

    def long_query() -> None:
        endless = (
            "WITH RECURSIVE n(i) AS (SELECT started() UNION ALL SELECT i + 1 FROM n) "
            "SELECT count(*) FROM n"
        )
        try:
            db.execute(endless)
        except sqlite3.OperationalError as error:
            errors.append(error)
        after.append(db.execute("SELECT 1"))  # on a new connection

    thread = threading.Thread(target=long_query)
    thread.start()
    started.wait()
    db.close_all()
    thread.join()
    assert [str(e) for e in errors] == ["interrupted"]
    assert after == [[(1,)]]
    assert db.open_connections == 0


def test_close_all_while_a_thread_is_in_a_transaction(database: Database) -> None:
    db = database.db()
    inside = threading.Event()
    closed = threading.Event()
    saw: list[BaseException] = []

    def worker() -> None:
        try:
            with db.transaction():
                db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (1, "lost"))
                inside.set()
                closed.wait()
                db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (2, "lost"))
        except TransactionError as error:
            saw.append(error)
        # Outside the block, the thread goes on with a new connection.
        db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (3, "after"))

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait()
    db.close_all()
    closed.set()
    thread.join()
    assert len(saw) == 1
    assert "closed (close_all())" in str(saw[0])
    assert "rolled the transaction back" in str(saw[0])
    assert database.rows() == [(3, "after")]


def test_close_all_closes_this_threads_own_connection_at_once(database: Database) -> None:
    db = database.db()
    first = db.connection
    db.close_all()
    assert _closed(first)
    assert db.open_connections == 0
    db.close()  # nothing left to close: harmless
    assert db.connection is not first


def test_close_in_the_owning_thread_after_close_all_closes_the_retired_one(
    tmp_path: Path,
) -> None:
    db = ThreadLocalDB(tmp_path / "db.sqlite3")
    opened = threading.Event()
    go_on = threading.Event()
    seen: list[Any] = []

    def worker() -> None:
        seen.append(db.connection)
        opened.set()
        go_on.wait()
        db.close()
        seen.append(_closed(seen[0]))
        seen.append(db.open_connections)

    thread = threading.Thread(target=worker)
    thread.start()
    opened.wait()
    db.close_all()
    go_on.set()
    thread.join()
    assert seen[1:] == [True, 0]


def test_a_thread_blocked_through_close_all_closes_its_connection_when_it_exits(
    tmp_path: Path,
) -> None:
    db = ThreadLocalDB(tmp_path / "db.sqlite3")
    opened = threading.Event()
    go_on = threading.Event()
    seen: list[Any] = []

    def worker() -> None:
        seen.append(db.connection)
        opened.set()
        go_on.wait()  # never touches db again

    thread = threading.Thread(target=worker)
    thread.start()
    opened.wait()
    db.close_all()
    go_on.set()
    thread.join()
    assert _closed(seen[0])
    assert db.open_connections == 0


def test_leaving_the_with_block_closes_every_connection(database: Database) -> None:
    with database.db() as db:
        db.execute(database.sql("SELECT k FROM T"))
        in_thread(lambda: db.connection)
        connection = db.connection
    assert db.open_connections == 0
    assert _closed(connection)


def test_a_db_can_be_used_again_after_close_all(database: Database) -> None:
    db = database.db()
    db.execute(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (1, "one"))
    db.close_all()
    assert db.execute(database.sql("SELECT v FROM T")) == [("one",)]


# -- broken connections (PostgreSQL) -----------------------------------------------


def _terminate_backend(database: Database, pid: int) -> None:
    admin = database.connect()
    try:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(
            lambda: (
                not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchall()
            ),
            f"the end of backend {pid}",
        )
    finally:
        admin.close()


@pytest.mark.parametrize("poll", [True, False], ids=["poll", "select (no poll, as on Windows)"])
def test_a_connection_whose_backend_was_killed_is_replaced_on_next_use(
    postgres: Database, monkeypatch: pytest.MonkeyPatch, poll: bool
) -> None:
    if not poll:
        monkeypatch.setattr(_db, "_poll", None)
    db = postgres.db()
    (pid,) = db.execute("SELECT pg_backend_pid()")[0]
    _terminate_backend(postgres, pid)
    (new_pid,) = db.execute("SELECT pg_backend_pid()")[0]
    assert new_pid != pid
    assert db.open_connections == 1


def test_a_killed_backend_inside_a_transaction_reaches_the_caller(postgres: Database) -> None:
    db = postgres.db()
    with pytest.raises(psycopg.OperationalError), db.transaction():
        db.execute(postgres.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (1, "lost"))
        (pid,) = db.execute("SELECT pg_backend_pid()")[0]
        _terminate_backend(postgres, pid)
        db.execute(postgres.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (2, "lost"))
    # The next use, outside the transaction, recovers.
    db.execute(postgres.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (3, "after"))
    assert postgres.rows() == [(3, "after")]
    assert db.open_connections == 1


def test_a_statement_whose_connection_breaks_raises_and_the_next_use_recovers(
    postgres: Database,
) -> None:
    db = postgres.db()
    # The backend ends in the middle of the statement: nothing could have
    # told beforehand. Whether a statement ran is unknown, so it isn't retried.
    with pytest.raises(psycopg.OperationalError):
        db.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    assert db.open_connections == 0
    assert db.execute("SELECT 1") == [(1,)]


# -- fork ---------------------------------------------------------------------


def test_a_forked_child_never_uses_the_parents_connection(database: Database) -> None:
    if database.kind == "sqlite":
        setup = f"db = ThreadLocalDB({database.path!r})"
        ident = "db.connection.execute('PRAGMA data_version')"
        who = "id(db.connection)"
    else:
        dsn = postgres_dsn()
        setup = (
            "import functools, psycopg; "
            f"db = ThreadLocalDB(connect=functools.partial(psycopg.connect, {dsn!r}))"
        )
        ident = "db.execute('SELECT 1')"
        who = "db.execute('SELECT pg_backend_pid()')[0][0]"
    script = f"""
        import os, sys
        from contextual.db import ThreadLocalDB
        {setup}
        {ident}
        parent = {who}
        pid = os.fork()
        if pid == 0:
            child = {who}
            ok = child != parent and db.open_connections == 1
            db.close_all()
            sys.exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child used the parent's connection"
        assert {who} == parent, "the parent's connection changed"
        db.execute("SELECT 1")  # still works after the child exited
        db.close_all()
        print("ok")
    """
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("path", [":memory:", "", b":memory:"])
def test_a_per_thread_in_memory_database_is_refused(path: Any) -> None:
    with pytest.raises(ValueError, match=r"separate, empty database\..*cache=shared"):
        ThreadLocalDB(path)


def test_a_shared_in_memory_database_works_across_threads() -> None:
    with ThreadLocalDB("file:shared_db_test?mode=memory&cache=shared", uri=True) as db:
        db.execute("CREATE TABLE t (x)")
        in_thread(lambda: db.execute("INSERT INTO t VALUES (1)"))
        assert db.execute("SELECT x FROM t") == [(1,)]


def test_a_path_and_connect_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="either a sqlite3 path or connect=, not both"):
        ThreadLocalDB(tmp_path / "db", connect=sqlite3.connect)


def test_neither_path_nor_connect_is_refused() -> None:
    with pytest.raises(TypeError, match="needs a sqlite3 database path, or connect="):
        ThreadLocalDB()


def test_a_path_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match=r"path must be a str, bytes or os\.PathLike, got int"):
        ThreadLocalDB(3)  # type: ignore[arg-type]


def test_a_connect_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="connect must be a callable"):
        ThreadLocalDB(connect="sqlite:///x")  # type: ignore[arg-type]


def test_connect_keyword_arguments_with_connect_are_refused() -> None:
    with pytest.raises(TypeError, match=r"\['timeout'\] go to sqlite3.connect\(\).*partial"):
        ThreadLocalDB(connect=sqlite3.connect, timeout=3)


@pytest.mark.parametrize("name", ["isolation_level", "autocommit"])
def test_sqlite_transaction_mode_arguments_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(TypeError, match=f"doesn't take {name}=.*begin="):
        ThreadLocalDB(tmp_path / "db", **{name: None})


@pytest.mark.parametrize("begin", ["", "  ", 3])
def test_a_bad_begin_statement_is_refused(tmp_path: Path, begin: Any) -> None:
    with pytest.raises(ValueError, match="begin must be the SQL statement"):
        ThreadLocalDB(tmp_path / "db", begin=begin)


def test_a_setup_that_is_not_callable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="setup must be a callable"):
        ThreadLocalDB(tmp_path / "db", setup="PRAGMA foreign_keys=ON")  # type: ignore[arg-type]


def test_pickling_a_db_is_refused_with_advice(tmp_path: Path) -> None:
    db = ThreadLocalDB(tmp_path / "db")
    with pytest.raises(TypeError, match=r"can't be pickled.*make a ThreadLocalDB there"):
        pickle.dumps(db)


def test_repr_names_the_database_and_the_open_connections(tmp_path: Path) -> None:
    db = ThreadLocalDB(tmp_path / "db.sqlite3")
    db.execute("SELECT 1")
    assert repr(db) == f"<ThreadLocalDB sqlite3 {str(tmp_path / 'db.sqlite3')!r}, 1 open>"
    db.close_all()
    other = ThreadLocalDB(connect=functools.partial(sqlite3.connect, "x"))
    assert repr(other).startswith("<ThreadLocalDB connect=functools.partial(")


def test_request_context_values_never_reach_the_connection_store(database: Database) -> None:
    db = database.db()
    with request_context(request_id="r-1"):
        db.execute("SELECT 1")
        with ContextExecutor(1) as pool:
            assert pool.submit(lambda: db.connection).result() is not db.connection


def _closed(connection: Any) -> bool:
    """Tell whether a sqlite3 or psycopg connection is closed, from any thread."""
    if isinstance(connection, sqlite3.Connection):
        try:
            connection.total_changes  # noqa: B018 (checks only that it is open)
        except sqlite3.ProgrammingError:
            return True
        return False
    return bool(connection.closed)


def test_a_sqlite_connection_closed_behind_the_dbs_back_raises_once_then_is_replaced(
    sqlite: Database,
) -> None:
    db = sqlite.db()
    db.connection.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        db.execute("SELECT 1")
    assert db.open_connections == 0
    assert db.execute("SELECT 1") == [(1,)]


def test_a_postgres_connection_closed_behind_the_dbs_back_is_replaced_before_use(
    postgres: Database,
) -> None:
    db = postgres.db()
    first = db.connection
    first.close()  # its socket is gone: the next use sees it before sending
    assert db.execute("SELECT 1") == [(1,)]
    assert db.connection is not first


def test_a_notification_on_an_idle_connection_keeps_it(postgres: Database) -> None:
    db = postgres.db()
    db.execute("LISTEN contextual_test")
    (pid,) = db.execute("SELECT pg_backend_pid()")[0]
    sender = postgres.connect()
    sender.execute("NOTIFY contextual_test, 'hello'")
    sender.close()
    # The socket has the notification to read: the probe runs, and passes.
    wait_for(lambda: bool(db._store["slot"].readable()), "the notification's arrival")
    assert db.execute("SELECT pg_backend_pid()")[0] == (pid,)


def test_close_all_cancels_a_running_postgres_statement(postgres: Database) -> None:
    db = postgres.db()
    errors: list[BaseException] = []
    started = threading.Event()

    def long_query() -> None:
        started.set()
        try:
            db.execute("SELECT pg_sleep(60)")
        except psycopg.Error as error:
            errors.append(error)

    thread = threading.Thread(target=long_query)
    thread.start()
    started.wait()
    admin = postgres.connect()
    wait_for(
        lambda: bool(
            admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'"
                " AND state = 'active'"
            ).fetchall()
        ),
        "the statement's start",
    )
    admin.close()
    db.close_all()
    thread.join()
    assert [type(e) for e in errors] == [psycopg.errors.QueryCanceled]
    assert db.open_connections == 0


class _PlainConnection:
    """A DB-API connection with nothing beyond the required methods (no interrupt)."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None)

    def cursor(self) -> sqlite3.Cursor:
        return self._connection.cursor()

    def close(self) -> None:
        self._connection.close()

    def create_function(self, *args: Any) -> None:
        self._connection.create_function(*args)


def test_close_all_lets_a_statement_it_cannot_interrupt_run_to_its_end(tmp_path: Path) -> None:
    started = threading.Event()
    release = threading.Event()

    def pause() -> int:
        started.set()
        release.wait()
        return 7

    db = ThreadLocalDB(
        connect=lambda: _PlainConnection(tmp_path / "db.sqlite3"),
        setup=lambda c: c.create_function("pause", 0, pause),
    )
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(db.execute("SELECT pause()")))
    worker.start()
    started.wait()
    db.close_all()  # returns at once: the statement is not its to stop
    release.set()
    worker.join()
    assert result == [[(7,)]]
    assert db.open_connections == 0


class _Gone:
    """Stands for a db collected before the fork."""

    def forget(self) -> None:
        raise AssertionError("a dead db's hook must not run")


def test_after_a_fork_the_child_sets_every_inherited_connection_aside(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = database.db()
    parents = db.connection
    in_thread(lambda: db.connection)  # a thread that exited: nothing left of it
    transaction = db.transaction()
    transaction.__enter__()
    # What os.fork() runs in the child; called here, on this db alone, to
    # look at its effect.
    dead = weakref.WeakMethod(_Gone().forget)
    gc.collect()
    assert dead() is None  # the hook of a db that died does nothing
    monkeypatch.setattr(
        fork, "_hooks", [dead, weakref.WeakMethod(db._forget_connections_after_fork)]
    )
    fork._run_hooks()
    try:
        assert parents in _db._inherited  # kept, not closed: the parent still uses it
        assert db.open_connections == 0
        with pytest.raises(TransactionError, match="forked while a transaction was open"):
            db.execute("SELECT 1")
        with pytest.raises(TransactionError, match="the commit failed"):
            transaction.__exit__(None, None, None)
        assert db.connection is not parents
    finally:
        _db._inherited.remove(parents)
        parents.close()


def test_executemany_inside_a_transaction_marks_it_on_failure(database: Database) -> None:
    db = database.db()
    with pytest.raises(TransactionError, match="error was caught"), db.transaction():
        with pytest.raises(database.error):
            db.executemany(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), [(1, "a"), (1, "b")])
        with pytest.raises(TransactionError, match="an earlier statement"):
            db.executemany(database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), [(2, "c")])
    assert database.rows() == []


def test_a_connection_freed_in_a_forked_child_is_kept_open_not_closed(tmp_path: Path) -> None:
    # In a child, os.fork() frees the slots of the parent's other threads
    # before any hook runs; their finalizers run there, with the parent's pid.
    connection = sqlite3.connect(tmp_path / "db.sqlite3")
    ran: list[str] = []
    _db._close_quietly(connection, os.getpid() + 1, [lambda: ran.append("hook")])
    try:
        assert connection in _db._inherited
        assert not _closed(connection)
        assert ran == [], "the parent's rollback hooks are the parent's"
    finally:
        _db._inherited.remove(connection)
        connection.close()


def test_a_forked_child_leaves_the_connections_of_the_parents_other_threads_alone(
    database: Database,
) -> None:
    if database.kind == "sqlite":
        setup = f"db = ThreadLocalDB({database.path!r})"
        who = "id(db.connection)"
    else:
        setup = (
            "import functools, psycopg; "
            f"db = ThreadLocalDB(connect=functools.partial(psycopg.connect, {postgres_dsn()!r}))"
        )
        who = "db.execute('SELECT pg_backend_pid()')[0][0]"
    script = f"""
        import os, sys, threading
        from contextual.db import ThreadLocalDB
        {setup}
        opened, forked, seen = threading.Event(), threading.Event(), []
        def worker():
            seen.append({who})
            opened.set()
            forked.wait()
            seen.append({who})
            db.execute("SELECT 1")
        thread = threading.Thread(target=worker)
        thread.start()
        opened.wait()
        pid = os.fork()
        if pid == 0:
            db.execute("SELECT 1")  # the child's own connection
            os._exit(0 if db.open_connections == 1 else 1)
        _, status = os.waitpid(pid, 0)
        forked.set()
        thread.join()
        assert os.waitstatus_to_exitcode(status) == 0, "the child's count was wrong"
        assert seen[0] == seen[1], "the worker's connection was replaced"
        print("ok")
    """
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "dev",
            "-W",
            "error::ResourceWarning",
            "-c",
            textwrap.dedent(script),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
