"""Many threads, many transactions, random savepoints and failures: the table equals the model.

Eight threads each run 500 transactions against one table. Every block
inserts a row of its own, opens zero to two nested blocks (savepoints) to a
random depth, and a third of the blocks fail: by raising, or by a statement
the database refuses (a duplicate key). A model computed alongside says which
rows each committed transaction holds; at the end the table holds exactly
those rows, the on_commit hooks ran for exactly the committed transactions,
and no connection is left open.
"""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import dataclass, field

import pytest

from contextual.db import ThreadLocalDB
from support.db import Database, database

__all__ = ["database"]  # the fixture, imported for pytest

THREADS = 8
TRANSACTIONS = 500
MAX_DEPTH = 3


class InjectedError(Exception):
    """A failure the test chose to raise."""


@dataclass
class Worker:
    """One thread's share: its random choices, its model and what its hooks saw."""

    database: Database
    db: ThreadLocalDB
    number: int
    rng: random.Random = field(init=False)
    keys: itertools.count[int] = field(init=False)
    committed: set[int] = field(default_factory=set)
    hooked: list[int] = field(default_factory=list)
    rolled_back_hooks: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.number)
        self.keys = itertools.count(self.number * 1_000_000)

    def block(self, depth: int) -> list[int]:
        """Run one block's body; return the keys it will commit if it succeeds."""
        key = next(self.keys)
        self.db.execute(self.database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (key, "row"))
        kept = [key]
        for _ in range(self.rng.randint(0, 2) if depth < MAX_DEPTH else 0):
            try:
                with self.db.transaction():
                    inner = self.block(depth + 1)
            except (InjectedError, self.database.error):
                continue
            kept += inner
        fate = self.rng.random()
        if fate < 1 / 6:
            raise InjectedError(key)
        if fate < 1 / 3:
            # The database refuses it: the block fails with the driver's error.
            self.db.execute(self.database.sql("INSERT INTO T (k, v) VALUES (?, ?)"), (key, "dup"))
        return kept

    def run(self, start: threading.Barrier) -> None:
        start.wait()
        for _ in range(TRANSACTIONS):
            try:
                with self.db.transaction() as txn:
                    txn.on_rollback(self.count_rollback)
                    kept = self.block(0)
                    txn.on_commit(lambda kept=kept: self.hooked.extend(kept))
            except (InjectedError, self.database.error):
                continue
            self.committed.update(kept)

    def count_rollback(self) -> None:
        self.rolled_back_hooks += 1


@pytest.mark.timeout(120)
def test_the_table_equals_the_model_of_what_committed(database: Database) -> None:
    db = database.db(**({"timeout": 60} if database.kind == "sqlite" else {}))
    workers = [Worker(database, db, n) for n in range(THREADS)]
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(worker: Worker) -> None:
        try:
            worker.run(start)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    expected = set().union(*(w.committed for w in workers))
    assert {k for k, _ in database.rows()} == expected
    # Each committed transaction's hook ran once, in commit order per thread.
    hooked = [k for w in workers for k in w.hooked]
    assert sorted(hooked) == sorted(expected)
    assert all(w.hooked == sorted(w.hooked) for w in workers)
    # Some of each kind happened, so the test tested something.
    failed = sum(w.rolled_back_hooks for w in workers)
    assert 0 < failed < THREADS * TRANSACTIONS
    assert len(expected) > THREADS * TRANSACTIONS / 3
    assert db.open_connections == 0  # every worker thread exited, and closed its own
