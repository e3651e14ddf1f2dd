"""Transactions: commit or roll back, savepoints, hooks, and whose transaction is current."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import Any

import psycopg
import pytest

from contextual import ContextExecutor, ScopeError
from contextual.db import Transaction, TransactionError, TransactionManager
from support.db import Database, database, postgres, sqlite

__all__ = ["database", "postgres", "sqlite"]  # the fixtures, imported for pytest


class BoomError(Exception):
    """What the code inside a block raises."""


# -- commit and roll back on a database -------------------------------------------


def test_a_block_that_ends_normally_commits(database: Database) -> None:
    db = database.db()
    with db.transaction() as txn:
        database.insert(db, 1)
        assert database.keys() == []  # not visible outside before the commit
    assert database.keys() == [1]
    assert txn.state == "committed"


def test_a_block_that_raises_rolls_back_and_the_error_goes_through(database: Database) -> None:
    db = database.db()
    with pytest.raises(ZeroDivisionError), db.transaction() as txn:
        database.insert(db, 1)
        _ = 1 / 0
    assert database.keys() == []
    assert txn.state == "rolled back"


def test_keyboard_interrupt_rolls_back_too(database: Database) -> None:
    db = database.db()
    with pytest.raises(KeyboardInterrupt), db.transaction():
        database.insert(db, 1)
        raise KeyboardInterrupt
    assert database.keys() == []


def test_an_inner_block_that_raises_rolls_back_only_its_own_work(database: Database) -> None:
    db = database.db()
    with db.transaction():
        database.insert(db, 1)
        with pytest.raises(BoomError, match="inner"), db.transaction() as inner:
            database.insert(db, 2)
            raise BoomError("inner")
        database.insert(db, 3)
    assert database.keys() == [1, 3]
    assert inner.state == "rolled back"


def test_a_successful_inner_block_is_undone_by_the_outer_rollback(database: Database) -> None:
    db = database.db()
    with pytest.raises(BoomError, match="outer"), db.transaction():
        with db.transaction() as inner:
            database.insert(db, 1)
        assert inner.state == "released"
        raise BoomError("outer")
    assert database.keys() == []


def test_savepoints_nest_to_any_depth(database: Database) -> None:
    db = database.db()
    with db.transaction() as outer:
        database.insert(db, 1)
        with db.transaction() as middle:
            database.insert(db, 2)
            with pytest.raises(LookupError), db.transaction() as inner:
                database.insert(db, 3)
                raise LookupError
            database.insert(db, 4)
    assert database.keys() == [1, 2, 4]
    assert (outer.depth, middle.depth, inner.depth) == (0, 1, 2)
    assert (outer.savepoint, middle.savepoint, inner.savepoint) == (
        None,
        "contextual_1",
        "contextual_2",
    )


def test_sql_error_inside_a_block_rolls_it_back_with_the_drivers_error(database: Database) -> None:
    db = database.db()
    with pytest.raises(database.error), db.transaction():
        database.insert(db, 1)
        database.insert(db, 1)  # duplicate primary key
    assert database.keys() == []


def test_a_caught_statement_error_refuses_further_statements_and_the_commit(
    database: Database,
) -> None:
    db = database.db()
    with (
        pytest.raises(TransactionError, match=r"error was caught.*rolled back instead"),
        db.transaction(),
    ):
        database.insert(db, 1)
        with pytest.raises(database.error):
            database.insert(db, 1)
        with pytest.raises(TransactionError, match="an earlier statement in this"):
            database.insert(db, 2)
    assert database.keys() == []


def test_a_statement_that_may_fail_runs_in_a_nested_block(database: Database) -> None:
    db = database.db()
    with db.transaction():
        database.insert(db, 1)
        with pytest.raises(database.error), db.transaction():
            database.insert(db, 1)
        database.insert(db, 2)
    assert database.keys() == [1, 2]


def test_commit_of_a_closed_connection_raises_and_nothing_is_committed(
    database: Database,
) -> None:
    db = database.db()
    rolled_back: list[str] = []
    with (
        pytest.raises(TransactionError, match="the commit failed, so nothing") as caught,
        db.transaction() as txn,
    ):
        txn.on_rollback(lambda: rolled_back.append("hook"))
        database.insert(db, 1)
        db.connection.close()
    assert isinstance(caught.value.__cause__, database.error)
    assert database.keys() == []
    assert txn.state == "rolled back"
    assert rolled_back == ["hook"]
    database.insert(db, 2)  # the next use gets a new connection
    assert database.keys() == [2]


def test_a_failed_commit_in_sqlite_leaves_no_transaction_open(sqlite: Database) -> None:
    db = sqlite.db()
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute(
        "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(TransactionError, match="the commit failed") as caught, db.transaction():
        db.execute("INSERT INTO child VALUES (7)")  # checked at COMMIT
    assert "FOREIGN KEY" in str(caught.value.__cause__)
    assert not db.connection.in_transaction
    assert db.execute("SELECT count(*) FROM child") == [(0,)]


def test_a_failed_commit_in_postgres_is_a_transaction_error(postgres: Database) -> None:
    db = postgres.db()
    db.execute(f"CREATE TABLE {postgres.table}_c (k INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    try:
        with pytest.raises(TransactionError, match="the commit failed"), db.transaction():
            db.execute(f"INSERT INTO {postgres.table}_c VALUES (1), (1)")
        assert db.execute(f"SELECT count(*) FROM {postgres.table}_c") == [(0,)]
    finally:
        db.execute(f"DROP TABLE {postgres.table}_c")


# -- durable ------------------------------------------------------------------


def test_a_durable_transaction_commits_on_its_own(database: Database) -> None:
    db = database.db()
    with db.transaction(durable=True) as txn:
        database.insert(db, 1)
    assert database.keys() == [1]
    assert txn.durable


def test_a_durable_transaction_refuses_to_nest(database: Database) -> None:
    db = database.db()
    with db.transaction():
        database.insert(db, 1)
        with (
            pytest.raises(TransactionError, match="durable transaction can't start inside"),
            db.transaction(durable=True),
        ):
            pass  # pragma: no cover (never entered)
        database.insert(db, 2)
    assert database.keys() == [1, 2]


# -- hooks --------------------------------------------------------------------


def test_on_commit_hooks_run_after_the_outermost_commit_in_order(database: Database) -> None:
    db = database.db()
    ran: list[tuple[str, list[int]]] = []
    with db.transaction() as txn:
        database.insert(db, 1)
        txn.on_commit(lambda: ran.append(("first", database.keys())))
        with db.transaction() as inner:
            inner.on_commit(lambda: ran.append(("inner", database.keys())))
        assert ran == []  # not at the savepoint's release
        txn.on_commit(lambda: ran.append(("last", database.keys())))
        assert ran == []
    assert ran == [("first", [1]), ("inner", [1]), ("last", [1])]


def test_on_commit_hooks_of_a_rolled_back_savepoint_are_dropped() -> None:
    manager = TransactionManager()
    ran: list[str] = []
    with manager.transaction() as txn:
        txn.on_commit(lambda: ran.append("kept"))
        with pytest.raises(BoomError), manager.transaction() as inner:
            inner.on_commit(lambda: ran.append("dropped"))
            raise BoomError
    assert ran == ["kept"]


def test_on_commit_hooks_never_run_after_a_rollback() -> None:
    manager = TransactionManager()
    ran: list[str] = []
    with pytest.raises(BoomError), manager.transaction() as txn:
        txn.on_commit(lambda: ran.append("commit"))
        raise BoomError
    assert ran == []


def test_on_rollback_hooks_run_newest_first_after_a_rollback() -> None:
    manager = TransactionManager()
    ran: list[str] = []
    with pytest.raises(BoomError), manager.transaction() as txn:
        txn.on_rollback(lambda: ran.append("first"))
        with manager.transaction() as inner:
            inner.on_rollback(lambda: ran.append("inner"))
        txn.on_rollback(lambda: ran.append("last"))
        raise BoomError
    assert ran == ["last", "inner", "first"]


def test_on_rollback_of_a_savepoint_runs_when_the_savepoint_rolls_back() -> None:
    manager = TransactionManager()
    ran: list[str] = []
    with manager.transaction() as txn:
        txn.on_rollback(lambda: ran.append("outer"))
        with pytest.raises(BoomError), manager.transaction() as inner:
            inner.on_rollback(lambda: ran.append("inner"))
            raise BoomError
        assert ran == ["inner"]
    assert ran == ["inner"]  # the outer committed: its rollback hook is dropped


def test_hooks_run_outside_the_transaction(database: Database) -> None:
    db = database.db()
    seen: list[Any] = []
    with db.transaction() as txn:
        txn.on_commit(lambda: seen.append(db.transactions.current))
        txn.on_commit(lambda: database.insert(db, 1))  # commits on its own
    assert seen == [None]
    assert database.keys() == [1]


def test_a_failing_hook_is_logged_and_neither_undoes_the_commit_nor_stops_the_others(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    db = database.db()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("mail server down")

    with caplog.at_level(logging.ERROR, logger="contextual.transactions"), db.transaction() as txn:
        database.insert(db, 1)
        txn.on_commit(broken)
        txn.on_commit(lambda: ran.append("after"))
    assert database.keys() == [1]
    assert ran == ["after"]
    (record,) = caplog.records
    assert record.name == "contextual.transactions"
    assert record.levelno == logging.ERROR
    assert "on_commit hook" in record.getMessage()
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "mail server down"


def test_a_failing_rollback_hook_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    manager = TransactionManager()

    def broken() -> None:
        raise RuntimeError("cleanup failed")

    with caplog.at_level(logging.ERROR, logger="contextual.transactions"):  # noqa: SIM117
        with pytest.raises(BoomError), manager.transaction() as txn:
            txn.on_rollback(broken)
            raise BoomError
    (record,) = caplog.records
    assert "on_rollback hook" in record.getMessage()


def test_hooks_return_the_function_so_they_work_as_decorators() -> None:
    manager = TransactionManager()
    ran: list[str] = []
    with manager.transaction() as txn:

        @txn.on_commit
        def notify() -> None:
            ran.append("notified")

    assert ran == ["notified"]
    assert callable(notify)


@pytest.mark.parametrize("method", ["on_commit", "on_rollback"])
def test_hooks_on_a_finished_transaction_are_refused(method: str) -> None:
    manager = TransactionManager()
    with manager.transaction() as txn:
        pass
    with pytest.raises(TransactionError, match=f"{method}\\(\\) needs an open transaction"):
        getattr(txn, method)(lambda: None)


def test_manager_on_commit_outside_a_transaction_runs_at_once() -> None:
    manager = TransactionManager()
    ran: list[str] = []
    manager.on_commit(lambda: ran.append("now"))
    assert ran == ["now"]


def test_manager_on_commit_inside_a_transaction_waits_for_the_commit() -> None:
    manager = TransactionManager()
    ran: list[str] = []
    with manager.transaction():
        manager.on_commit(lambda: ran.append("later"))
        assert ran == []
    assert ran == ["later"]


def test_manager_on_commit_from_a_pool_worker_of_a_transaction_is_refused() -> None:
    manager = TransactionManager()
    ran: list[str] = []
    with manager.transaction() as txn, ContextExecutor(1) as pool:
        future = pool.submit(manager.on_commit, lambda: ran.append("?"))
        with pytest.raises(TransactionError, match="did not open the current transaction"):
            future.result()
        # Handing over the Transaction itself works.
        pool.submit(txn.on_commit, lambda: ran.append("via txn")).result()
    assert ran == ["via txn"]


# -- whose transaction is current --------------------------------------------------


def test_current_is_the_innermost_open_transaction() -> None:
    manager = TransactionManager()
    assert manager.current is None
    with manager.transaction() as outer:
        assert manager.current is outer
        with manager.transaction() as inner:
            assert manager.current is inner
            assert inner.parent is outer
        assert manager.current is outer
    assert manager.current is None


def test_another_thread_sees_no_current_transaction() -> None:
    manager = TransactionManager()
    inside = threading.Event()
    seen: list[Any] = []
    with manager.transaction():
        thread = threading.Thread(target=lambda: seen.append(manager.current))
        inside.set()
        thread.start()
        thread.join()
    assert seen == [None]


def test_a_pool_worker_sees_no_current_transaction_and_can_open_its_own(
    database: Database,
) -> None:
    db = database.db()
    with db.transaction() as txn, ContextExecutor(1) as pool:
        database.insert(db, 1)

        def worker() -> tuple[Any, str]:
            seen = db.transactions.current
            with db.transactions.transaction() as own:
                db.execute("SELECT 1")
            return seen, own.state

        if database.kind == "sqlite":
            # BEGIN IMMEDIATE would wait for this transaction's write lock.
            seen = pool.submit(lambda: db.transactions.current).result()
            assert seen is None
        else:
            assert pool.submit(worker).result() == (None, "committed")
        assert db.transactions.current is txn


def test_each_asyncio_task_has_its_own_current_transaction() -> None:
    manager = TransactionManager()

    async def main() -> list[Any]:
        seen: list[Any] = []
        async with manager.transaction() as txn:

            async def child() -> None:
                seen.append(manager.current)
                async with manager.transaction() as own:
                    seen.append(own.parent)

            await asyncio.create_task(child())
            seen.append(manager.current is txn)
        return seen

    assert asyncio.run(main()) == [None, None, True]


def test_two_tasks_on_one_thread_cannot_share_its_connection_s_transaction(
    database: Database,
) -> None:
    db = database.db()

    async def main() -> list[str]:
        seen: list[str] = []
        opened = asyncio.Event()
        done = asyncio.Event()

        async def first() -> None:
            with db.transaction():
                database.insert(db, 1)
                opened.set()
                await done.wait()
                database.insert(db, 2)

        async def second() -> None:
            await opened.wait()
            try:
                with db.transaction():
                    pass  # pragma: no cover (never entered)
            except TransactionError as error:
                seen.append(str(error))
            try:
                database.insert(db, 3)
            except TransactionError as error:
                seen.append(str(error))
            done.set()

        await asyncio.gather(first(), second())
        return seen

    opening, statement = asyncio.run(main())
    assert "can't open a transaction" in opening
    assert "opened by task 'Task-" in opening
    assert "can't run a statement on it" in statement
    assert database.keys() == [1, 2]


def test_a_task_created_inside_a_transaction_cannot_nest_in_it(database: Database) -> None:
    db = database.db()

    async def main() -> str:
        with db.transaction():

            async def child() -> str:
                try:
                    with db.transaction():
                        pass  # pragma: no cover (never entered)
                except TransactionError as error:
                    return str(error)
                return "nested"  # pragma: no cover (a failure)

            return await asyncio.create_task(child())

    assert "opened by task 'Task-" in asyncio.run(main())


def test_a_block_exited_in_another_context_still_ends() -> None:
    manager = TransactionManager()
    txn = manager.transaction()
    contextvars.copy_context().run(txn.__enter__)
    contextvars.copy_context().run(txn.__exit__, None, None, None)
    assert txn.state == "committed"


def test_a_transaction_opened_in_another_context_of_the_thread_blocks_a_new_one(
    database: Database,
) -> None:
    db = database.db()
    first = db.transaction()
    contextvars.copy_context().run(first.__enter__)
    with pytest.raises(TransactionError, match="opened in another context of this thread"):  # noqa: SIM117
        with db.transaction():
            pass  # pragma: no cover (never entered)
    first.__exit__(None, None, None)
    assert first.state == "committed"


# -- the block itself: reuse, order, decorator, async ------------------------------------


def test_a_transaction_serves_one_block() -> None:
    manager = TransactionManager()
    txn = manager.transaction()
    with txn:
        pass
    with pytest.raises(ScopeError, match="already used: a Transaction serves one block"):  # noqa: SIM117
        with txn:
            pass  # pragma: no cover (never entered)


def test_exit_without_entry_is_a_scope_error() -> None:
    txn = TransactionManager().transaction()
    with pytest.raises(ScopeError, match="exited without being entered"):
        txn.__exit__(None, None, None)


def test_exiting_an_outer_block_before_its_inner_one_is_a_scope_error() -> None:
    manager = TransactionManager()
    outer = manager.transaction()
    inner = manager.transaction()
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(ScopeError, match="transactions end innermost first"):
        outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    outer.__exit__(None, None, None)
    assert (inner.state, outer.state) == ("released", "committed")


def test_as_a_decorator_each_call_runs_in_its_own_transaction(database: Database) -> None:
    db = database.db()
    seen: list[Transaction | None] = []

    @db.transaction()
    def add(k: int) -> None:
        seen.append(db.transactions.current)
        database.insert(db, k)
        if k == 2:
            raise BoomError(k)

    add(1)
    with pytest.raises(BoomError):
        add(2)
    add(3)
    assert database.keys() == [1, 3]
    assert [t.state for t in seen if t] == ["committed", "rolled back", "committed"]
    assert len({id(t) for t in seen}) == 3


def test_as_a_decorator_on_a_coroutine_function() -> None:
    manager = TransactionManager()
    ran: list[str] = []

    @manager.transaction()
    async def work() -> str:
        current = manager.current
        assert current is not None
        current.on_commit(lambda: ran.append("committed"))
        await asyncio.sleep(0)
        return "done"

    assert asyncio.run(work()) == "done"
    assert ran == ["committed"]


def test_decorating_a_generator_function_is_refused() -> None:
    manager = TransactionManager()
    with pytest.raises(TypeError, match="can't decorate the generator function"):

        @manager.transaction()
        def rows() -> Any:
            yield 1  # pragma: no cover (never called)


def test_the_decorator_keeps_durable() -> None:
    manager = TransactionManager()

    @manager.transaction(durable=True)
    def work() -> None:
        pass  # pragma: no cover (never entered)

    with manager.transaction(), pytest.raises(TransactionError, match="durable"):
        work()


def test_async_with_works_like_with(database: Database) -> None:
    db = database.db()

    async def main() -> None:
        async with db.transaction():
            database.insert(db, 1)
        with pytest.raises(BoomError):
            async with db.transaction():
                database.insert(db, 2)
                raise BoomError

    asyncio.run(main())
    assert database.keys() == [1]


# -- managers -------------------------------------------------------------------


def test_a_manager_made_for_a_db_shares_its_transactions(database: Database) -> None:
    db = database.db()
    manager = TransactionManager(db)
    with db.transaction() as txn:
        assert manager.current is txn
        with manager.transaction() as inner:
            database.insert(db, 1)
        assert inner.parent is txn
    assert manager.db is db
    assert database.keys() == [1]


def test_a_manager_without_a_db_has_no_db() -> None:
    assert TransactionManager().db is None


def test_a_manager_refuses_what_is_not_a_thread_local_db() -> None:
    with pytest.raises(TypeError, match="takes a ThreadLocalDB or None, got str"):
        TransactionManager("app.sqlite3")  # type: ignore[arg-type]


def test_reprs_say_what_and_where(database: Database) -> None:
    db = database.db()
    assert repr(TransactionManager()) == "<TransactionManager>"
    assert repr(db.transactions) == f"<TransactionManager {db!r}>"
    txn = db.transaction()
    assert repr(txn) == "<Transaction: transaction, new>"
    with txn, db.transaction() as inner:
        assert repr(inner) == "<Transaction: savepoint contextual_1, open>"
    assert repr(txn) == "<Transaction: transaction, committed>"


def test_a_callback_on_the_event_loop_outside_any_task_belongs_to_the_thread() -> None:
    manager = TransactionManager()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def callback() -> None:
            with manager.transaction() as txn:
                done.set_result((manager.current is txn, txn.state))

        with manager.transaction():
            loop.call_soon(callback)
            return [await done]

    assert asyncio.run(main()) == [(True, "open")]


def test_exiting_two_levels_out_of_order_is_a_scope_error() -> None:
    manager = TransactionManager()
    blocks = [manager.transaction() for _ in range(3)]
    for block in blocks:
        block.__enter__()
    with pytest.raises(ScopeError, match="innermost first"):
        blocks[0].__exit__(None, None, None)
    for block in reversed(blocks):
        block.__exit__(None, None, None)
    assert [b.state for b in blocks] == ["committed", "released", "released"]


def test_a_savepoint_whose_release_fails_fails_the_whole_transaction(database: Database) -> None:
    db = database.db()
    ran: list[str] = []
    with pytest.raises(database.error), db.transaction() as outer:
        database.insert(db, 1)
        with db.transaction() as inner:
            inner.on_rollback(lambda: ran.append("inner undone"))
            db.connection.close()
    assert (outer.state, inner.state) == ("rolled back", "rolled back")
    assert ran == ["inner undone"]
    assert database.keys() == []


def test_a_savepoint_whose_rollback_fails_lets_the_blocks_error_through(
    database: Database,
) -> None:
    db = database.db()
    with pytest.raises(BoomError), db.transaction() as outer:
        database.insert(db, 1)
        with db.transaction():
            db.connection.close()
            raise BoomError
    assert outer.state == "rolled back"
    assert database.keys() == []


def test_a_caught_failure_whose_rollback_also_fails_still_says_rolled_back(
    database: Database,
) -> None:
    db = database.db()
    with pytest.raises(TransactionError, match="error was caught"), db.transaction():
        with pytest.raises(database.error):
            database.insert(db, 1)
            database.insert(db, 1)
        db.connection.close()
    assert database.keys() == []
    database.insert(db, 2)
    assert database.keys() == [2]


def test_a_block_exited_while_an_unrelated_one_is_current_still_ends() -> None:
    manager = TransactionManager()
    elsewhere = manager.transaction()
    contextvars.copy_context().run(elsewhere.__enter__)
    with manager.transaction() as here:
        elsewhere.__exit__(None, None, None)
        assert manager.current is here
    assert (elsewhere.state, here.state) == ("committed", "committed")


def test_close_all_during_an_idle_transaction_fails_its_commit(database: Database) -> None:
    db = database.db()
    inside = threading.Event()
    closed = threading.Event()
    saw: list[str] = []
    ran: list[str] = []

    def worker() -> None:
        try:
            with db.transaction() as txn:
                txn.on_rollback(lambda: ran.append("rolled back"))
                database.insert(db, 1)
                inside.set()
                closed.wait()  # no statement after close_all(): straight to the commit
        except TransactionError as error:
            saw.append(str(error))

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait()
    db.close_all()
    closed.set()
    thread.join()
    assert len(saw) == 1
    assert "the commit failed" in saw[0]
    assert "closed (close_all())" in saw[0]
    assert ran == ["rolled back"]
    assert database.keys() == []


def test_a_postgres_commit_that_the_server_turns_into_a_rollback_is_an_error(
    postgres: Database,
) -> None:
    db = postgres.db()
    ran: list[str] = []
    with pytest.raises(TransactionError, match="rolled this transaction back instead"):  # noqa: SIM117
        with db.transaction() as txn:
            txn.on_commit(lambda: ran.append("commit hook"))
            txn.on_rollback(lambda: ran.append("rollback hook"))
            postgres.insert(db, 1)
            with pytest.raises(psycopg.errors.DivisionByZero):
                db.connection.execute("SELECT 1/0")  # behind db.execute's back
    assert ran == ["rollback hook"]
    assert txn.state == "rolled back"
    assert postgres.keys() == []


def test_a_block_inside_a_failed_block_is_refused(database: Database) -> None:
    db = database.db()
    with pytest.raises(TransactionError, match="error was caught"), db.transaction():
        with pytest.raises(database.error):
            database.insert(db, 1)
            database.insert(db, 1)
        with pytest.raises(TransactionError, match="an earlier statement"), db.transaction():
            pass  # pragma: no cover (never entered)
    assert database.keys() == []


def test_a_savepoint_that_cannot_start_fails_the_enclosing_block(database: Database) -> None:
    db = database.db()
    with pytest.raises(TransactionError, match="error was caught"), db.transaction():
        database.insert(db, 1)
        db.connection.close()
        with pytest.raises(database.error), db.transaction():
            pass  # pragma: no cover (never entered)
    assert database.keys() == []


def test_an_outer_block_cannot_end_while_a_savepoint_of_another_context_is_open(
    database: Database,
) -> None:
    db = database.db()
    outer = db.transaction()
    inner = db.transaction()
    outer.__enter__()
    context = contextvars.copy_context()
    context.run(inner.__enter__)  # like a generator that entered a block
    with pytest.raises(ScopeError, match="innermost first"):
        outer.__exit__(None, None, None)
    context.run(inner.__exit__, None, None, None)
    outer.__exit__(None, None, None)
    assert (inner.state, outer.state) == ("released", "committed")
    with db.transaction():  # the connection is free again
        database.insert(db, 1)
    assert database.keys() == [1]


def test_a_hook_added_while_the_block_ends_is_reported_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = TransactionManager()
    checked = threading.Event()
    ended = threading.Event()
    errors: list[BaseException] = []
    ran: list[str] = []
    check_open = Transaction._check_open

    def check_then_pause(self: Transaction, what: str) -> None:
        # The adder has seen the block open; the block ends before the hook goes in.
        check_open(self, what)
        if threading.current_thread() is not owner:
            checked.set()
            ended.wait()

    monkeypatch.setattr(Transaction, "_check_open", check_then_pause)
    owner = threading.current_thread()

    def adder(txn: Transaction) -> None:
        try:
            txn.on_commit(lambda: ran.append("late"))
        except TransactionError as error:
            errors.append(error)

    with manager.transaction() as txn:
        thread = threading.Thread(target=adder, args=(txn,))
        thread.start()
        checked.wait()
    ended.set()
    thread.join()
    assert ran == []  # the block's hooks had run when it went in...
    assert len(errors) == 1  # ...and the adder hears of it
    assert "may not run" in str(errors[0])


def test_a_transaction_kept_after_its_thread_exits_keeps_no_connection(
    database: Database,
) -> None:
    db = database.db()
    kept: list[Transaction] = []

    def worker() -> None:
        with db.transaction() as txn:
            database.insert(db, 1)
        kept.append(txn)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert db.open_connections == 0
    assert kept[0].state == "committed"


def test_a_failed_commits_traceback_kept_after_its_thread_exits_keeps_no_connection(
    sqlite: Database,
) -> None:
    db = sqlite.db()
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute(
        "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    errors: list[BaseException] = []

    def worker() -> None:
        db.execute("PRAGMA foreign_keys = ON")
        try:
            with db.transaction():
                db.execute("INSERT INTO child VALUES (7)")
        except TransactionError as error:
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert db.open_connections == 1  # main thread's, from the CREATE TABLEs


def test_a_block_exited_in_a_copy_of_its_context_is_undone_in_that_copy() -> None:
    manager = TransactionManager()
    txn = manager.transaction()
    entered = contextvars.copy_context()
    entered.run(txn.__enter__)
    copy = entered.run(contextvars.copy_context)  # it shows txn as current too
    copy.run(txn.__exit__, None, None, None)
    assert copy.run(lambda: manager.current) is None
    assert txn.state == "committed"
