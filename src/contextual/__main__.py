"""``python -m contextual``: a short demonstration of what the library does."""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from . import (
    ContextExecutor,
    ContextFilter,
    ContextStore,
    __version__,
    get_request_id,
    request_context,
)
from .db import ThreadLocalDB
from .spinner import Spinner

if TYPE_CHECKING:
    from .db import Transaction

DESCRIPTION = """\
A tour of contextual in about a second, printed to stdout:

  1. a "thread" ContextStore: each OS thread keeps its own values;
  2. a "context" ContextStore: each asyncio task keeps its own values;
  3. store.scope() restores everything on exit, even when the block raises;
  4. concurrent simulated requests, opened with request_context(), on a
     ContextExecutor's threads and as asyncio tasks, each logging through a
     ContextFilter: every log line carries its own request's ID and user;
  5. ThreadLocalDB: a sqlite3 connection per thread, a transaction that
     commits and one that rolls back, and every connection closed at the end;

then a short summary. A Spinner on stderr shows progress (animated on a
terminal, two plain lines elsewhere), so stdout stays the same on every run.
Needs no set-up; the database lives in a temporary directory, so nothing is
left behind."""

# Each simulated request "waits on the network" this long: long enough for
# the requests to overlap, short enough for the whole demo to take a second.
_LATENCY = 0.25

log = logging.getLogger("contextual.demo")


def _threads(store: ContextStore) -> list[str]:
    lines: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(3)

    def handle(user: str) -> None:
        store["user"] = user
        barrier.wait()  # all three have written before any reads back
        with lock:
            lines.append(f"  thread for {user:<5} sees user={store['user']}")

    threads = [threading.Thread(target=handle, args=(u,)) for u in ("ada", "grace", "linus")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(lines)


async def _tasks(store: ContextStore) -> list[str]:
    async def handle(request_id: str) -> str:
        with store.scope(request_id=request_id):
            await asyncio.sleep(0)  # let the other tasks run in between
            return f"  task {request_id} sees request_id={store['request_id']}"

    return list(await asyncio.gather(*(handle(f"req-{i}") for i in range(1, 4))))


def _scope(store: ContextStore) -> list[str]:
    try:
        with store.scope(request_id="req-9"):
            store["note"] = "written inside the scope"
            msg = "simulated failure"
            raise RuntimeError(msg)  # noqa: TRY301
    except RuntimeError:
        pass
    return [f"  after the failed block: {dict(store)}"]


class _Records(logging.Handler):
    """Keep the formatted log lines, for printing once the spinner is done."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []
        self.addFilter(ContextFilter())  # on the handler: every record gets the fields
        self.setFormatter(logging.Formatter("  [%(request_id)s user=%(user_id)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((str(getattr(record, "request_id", "-")), self.format(record)))


def _lookup(item: str) -> str:
    """Work a request hands to a pool thread: it logs without being told the request."""
    time.sleep(_LATENCY)
    log.info("worker: looked up %s", item)
    return item.upper()


def _handle(pool: ContextExecutor, request_id: str, user: str | None, item: str) -> str:
    """One request on a server thread: log, hand work to another pool, log the result."""
    with request_context(request_id=request_id, user_id=user):
        log.info("GET /items/%s", item)
        found = pool.submit(_lookup, item).result()
        log.info("200 OK %s", found)
        return str(get_request_id())


async def _handle_async(request_id: str, user: str) -> str:
    """One request as an asyncio task: the same fields, with no thread of its own."""
    async with request_context(request_id=request_id, user_id=user):
        log.info("GET /profile")
        await asyncio.sleep(_LATENCY)  # the other tasks run meanwhile
        log.info("200 OK")
        return str(get_request_id())


def _requests() -> list[str]:
    records = _Records()
    log.addHandler(records)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info("server starting (outside any request)")
        requests = [("web-1", "ada", "book"), ("web-2", "grace", "lamp"), ("web-3", None, "pen")]
        with ContextExecutor(max_workers=3) as server, ContextExecutor(max_workers=3) as pool:
            futures = [server.submit(_handle, pool, *request) for request in requests]
            served = [future.result() for future in futures]

        async def serve() -> list[str]:
            users = ("linus", "barbara", "ken")
            return list(
                await asyncio.gather(
                    *(_handle_async(f"task-{i}", u) for i, u in enumerate(users, 1))
                )
            )

        served += asyncio.run(serve())
        log.info("server stopped: %d requests", len(served))
    finally:
        log.removeHandler(records)
    # The requests ran at the same time, so their lines interleave; grouped
    # by request (a stable sort keeps each request's own order), the output
    # is the same on every run. The first and last lines are outside them.
    first, *middle, last = records.lines
    middle.sort(key=lambda record: served.index(record[0]))
    lines = [line for _, line in (first, *middle, last)]
    return [
        "  (grouped by request; they ran interleaved)",
        *lines,
        f"  {len(served)} requests served, each logged under its own ID",
    ]


class _CardDeclinedError(Exception):
    """The simulated failure that rolls a transaction back."""


def _database() -> tuple[list[str], Counter[str], int]:
    """Return the lines to print, how the transactions ended, and the connections left open."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = ThreadLocalDB(Path(tmp) / "demo.sqlite3")
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
        both_started = threading.Barrier(2)  # two jobs at once: two threads, two connections
        committed = threading.Event()
        connections: list[object] = []
        transactions: list[Transaction] = []

        def commit() -> str:
            both_started.wait()
            connections.append(db.connection)
            with db.transaction() as transaction:
                transactions.append(transaction)
                db.execute("INSERT INTO orders (id, item) VALUES (1, 'book')")
            committed.set()
            return "  thread A: INSERT book, committed"

        def roll_back() -> str:
            both_started.wait()
            connections.append(db.connection)
            committed.wait()  # one writer at a time, so the output is stable
            try:
                with db.transaction() as transaction:
                    transactions.append(transaction)
                    db.execute("INSERT INTO orders (id, item) VALUES (2, 'chair')")
                    raise _CardDeclinedError  # noqa: TRY301 (the failure this part shows)
            except _CardDeclinedError:
                return "  thread B: INSERT chair, the card is declined: rolled back"

        with ContextExecutor(max_workers=2) as pool:
            futures = [pool.submit(commit), pool.submit(roll_back)]
            lines += [future.result() for future in futures]
            lines.append(
                f"  while the pool runs: open_connections={db.open_connections} "
                "(the main thread's and one per worker)"
            )
        lines.append(f"  after the workers exit: open_connections={db.open_connections}")
        rows = db.execute("SELECT id, item FROM orders ORDER BY id")
        lines.append(f"  rows in the table: {rows}")
        db.close_all()
        left_open = db.open_connections
        lines.append(f"  after close_all(): open_connections={left_open}")
    return lines, Counter(transaction.state for transaction in transactions), left_open


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m contextual",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"contextual {__version__}")
    parser.parse_args(argv)

    per_thread = ContextStore("contextual.demo.thread", backend="thread")
    per_task = ContextStore("contextual.demo.task", defaults={"request_id": None})

    # The work runs under the spinner (stderr); its lines are printed after,
    # so that nothing lands on the spinner's line and stdout stays plain.
    with Spinner("Running the contextual demonstration") as spinner:
        spinner.text = "1/5 threads"
        threads = _threads(per_thread)
        spinner.text = "2/5 asyncio tasks"
        tasks = asyncio.run(_tasks(per_task))
        spinner.text = "3/5 store.scope()"
        scope = _scope(per_task)
        spinner.text = "4/5 concurrent requests"
        requests = _requests()
        spinner.text = "5/5 a sqlite3 connection per thread"
        database, ended, left_open = _database()
        spinner.text = "Demonstration finished"

    print(f"contextual {__version__}: context that follows the work\n")
    print('1. backend="thread": each OS thread keeps its own values')
    print("\n".join(threads))
    print(f"  main thread sees user={per_thread.get('user')} (nothing leaked)\n")

    print('2. backend="context": each asyncio task keeps its own values')
    print("\n".join(tasks))
    print(f"  after the tasks: request_id={per_task.request_id}\n")

    print("3. store.scope() restores everything on exit, even on error")
    print("\n".join(scope), end="\n\n")

    print("4. request_context() + ContextFilter: concurrent requests, each log line its own")
    print("\n".join(requests), end="\n\n")

    print("5. ThreadLocalDB: a sqlite3 connection per thread, transactions")
    print("\n".join(database), end="\n\n")

    print("Summary")
    print("  - threads and tasks never saw each other's values, and nothing leaked out;")
    print("  - scope() restored the store after a failure;")
    print("  - every log line named its own request, on pool threads and in tasks;")
    print(
        f"  - transactions: {ended['committed']} committed, {ended['rolled back']} rolled back; "
        f"connections left open: {left_open}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
