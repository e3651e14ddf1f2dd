"""A database connection per thread, and transactions that commit or roll back.

A sqlite3 connection must not be shared between threads, and opening one per
call is slow; the classic answer keeps one per thread in a threading.local,
and then nobody closes it. ThreadLocalDB gives each thread its own
connection on first use and closes it when the thread exits (or at
close_all()). db.transaction() issues BEGIN itself, commits at the end of the
block or rolls back if it raises, turns a nested block into a savepoint that
can roll back alone, and runs on_commit hooks only after a real commit.

Three threads take turns (Events order them, so the output is stable): one
commits, one fails and rolls back, and one commits while a nested block
rolls back to its savepoint. The database lives in a temporary directory.

Run: python examples/db_per_thread.py
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from contextual.db import ThreadLocalDB


class CardDeclinedError(Exception):
    """The payment failed: the order must not be saved."""


def place_order(db: ThreadLocalDB, order: int, item: str) -> None:
    """Save one order; print once it is committed."""
    with db.transaction() as txn:
        db.execute("INSERT INTO orders (id, item) VALUES (?, ?)", (order, item))
        txn.on_commit(lambda: print(f"  on_commit: order {order} is saved"))


def order_1(db: ThreadLocalDB) -> None:
    """A transaction that commits."""
    print("thread 1: order 1, a book")
    place_order(db, 1, "book")


def order_2(db: ThreadLocalDB) -> None:
    """A transaction that rolls back: its on_commit hook never runs."""
    print("thread 2: order 2, a chair, but the card is declined")
    try:
        with db.transaction() as txn:
            db.execute("INSERT INTO orders (id, item) VALUES (?, ?)", (2, "chair"))
            txn.on_commit(lambda: print("  on_commit: order 2 is saved"))
            raise CardDeclinedError  # noqa: TRY301 (the failure this example shows)
    except CardDeclinedError:
        print("  rolled back: no order 2")


def order_3(db: ThreadLocalDB) -> None:
    """A transaction that commits, with a savepoint inside that rolls back alone."""
    print("thread 3: order 3, a lamp, with gift wrap that is out of stock")
    with db.transaction() as txn:
        db.execute("INSERT INTO orders (id, item) VALUES (?, ?)", (3, "lamp"))
        try:
            with db.transaction():  # nested: a savepoint
                db.execute("INSERT INTO orders (id, item) VALUES (?, ?)", (4, "gift wrap"))
                raise LookupError  # noqa: TRY301 (the failure this example shows)
        except LookupError:
            print("  savepoint rolled back: no gift wrap, the lamp stays")
        txn.on_commit(lambda: print("  on_commit: order 3 is saved"))


def main() -> None:
    """Run the three threads in turn, then show that their connections are gone."""
    with tempfile.TemporaryDirectory() as tmp:
        db = ThreadLocalDB(Path(tmp) / "shop.sqlite3")
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
        db.close()  # the main thread's connection: closed, until it needs one again
        print(f"main: table created, open_connections={db.open_connections}")

        jobs = [order_1, order_2, order_3]
        turns = [threading.Event() for _ in jobs]
        all_done = threading.Barrier(len(jobs) + 1)
        may_exit = threading.Event()
        connections: list[Any] = [None] * len(jobs)

        def worker(index: int) -> None:
            turns[index].wait()
            connections[index] = db.connection
            jobs[index](db)
            if index + 1 < len(jobs):
                turns[index + 1].set()
            all_done.wait()  # every thread still holds its connection here
            may_exit.wait()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        turns[0].set()
        all_done.wait()
        different = len({id(c) for c in connections}) == len(jobs)  # all kept alive in the list
        print(f"3 threads, 3 different connections: {different}")
        print(f"while the threads run: open_connections={db.open_connections}")
        may_exit.set()
        for thread in threads:
            thread.join()
        print(f"after the threads exit: open_connections={db.open_connections}")

        rows = db.execute("SELECT id, item FROM orders ORDER BY id")
        print(f"main: orders saved: {rows}")
        print(f"main: its new connection is none of theirs: {db.connection not in connections}")
        db.close_all()
        print(f"after close_all(): open_connections={db.open_connections}")


if __name__ == "__main__":
    main()
