"""Celery: a task's log lines carry the request ID of the request that published it.

A Celery task runs in another process, after the request that published it
has ended: its log lines have no request ID, and nothing ties them to the
request. install(app, allow=...) sends the publisher's request ID, and the
values you allow, in a header of each message; the worker runs the task
with them, and puts its stores back when the task ends. Anything not
allowed stays behind. A task published outside any request (as celery beat
does) runs under a new request ID, which the tasks it publishes carry on.
task_fields() puts the task's ID and its parent's in the log lines.
enqueue_on_commit() publishes a task only once the transaction commits, and
never if it rolls back.

This module is both the Celery app (the worker imports it: celery -A
celery_tasks worker) and a script that starts a real worker for it, on a
queue of its own, publishes tasks from two requests, then from two
transactions, then from outside any request, printing each message as it
leaves, then what each task saw; it stops the worker and prints the tasks'
own lines from the worker's log. Task IDs and new request IDs differ on
every run: the script prints them as names between angle brackets.

Needs Celery with Redis, and a Redis server: pip install "celery[redis]"

Run: python examples/celery_tasks.py [BROKER_URL]
(default: $CONTEXTUAL_EXAMPLE_REDIS_URL, or redis://127.0.0.1:6379/0)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeoutError
from celery.signals import after_setup_logger, after_setup_task_logger, after_task_publish
from celery.utils.log import get_task_logger
from kombu.exceptions import OperationalError

import contextual
from contextual import (
    ContextFilter,
    ContextStore,
    get_current_user,
    get_request_id,
    request_context,
)
from contextual.db import TransactionManager
from contextual.integrations.celery import enqueue_on_commit, install, task_fields

URL_VARIABLE = "CONTEXTUAL_EXAMPLE_REDIS_URL"
QUEUE_VARIABLE = "CONTEXTUAL_EXAMPLE_QUEUE"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
LOG_FORMAT = (
    "[%(request_id)s user=%(user_id)s task=%(task_id)s parent=%(parent_task_id)s] "
    "%(name)s: %(message)s"
)
# A worker that never got the tasks fails the example rather than hanging it.
TIMEOUT = 20.0
# How often, while waiting for a result, to check that the worker still runs.
POLL = 0.5
HERE = Path(__file__).resolve().parent

# The shop's own store: what the checkout knows. Not allowed below, so it
# never leaves the publishing process.
checkout = ContextStore("celery_tasks.checkout", defaults={"card": None})

_url = os.environ.get(URL_VARIABLE, DEFAULT_URL)
app = Celery("celery_tasks", broker=_url, backend=_url)
app.conf.update(
    task_default_queue=os.environ.get(QUEUE_VARIABLE, "celery_tasks"),
    broker_connection_retry_on_startup=True,
    result_expires=600,
)
# The request ID always travels; of the rest, only the request's user.
install(app, allow={"contextual.request": ["user_id"]})

logger = get_task_logger(__name__)


def add_context_filter(logger: logging.Logger, **_: object) -> None:
    """Put the request fields and the task IDs in every line of the worker's log."""
    for handler in logger.handlers:
        handler.addFilter(ContextFilter(sources=[task_fields]))
        handler.setFormatter(logging.Formatter(LOG_FORMAT))


after_setup_logger.connect(add_context_filter)
after_setup_task_logger.connect(add_context_filter)


@app.task
def send_receipt(order: int) -> dict[str, Any]:
    """Log a line, and report what this task sees of its publisher's context."""
    logger.info("sending the receipt for order %d", order)
    return {"request_id": get_request_id(), "user": get_current_user(), "card": checkout.card}


@app.task
def resend_failed_receipts() -> dict[str, Any]:
    """A scheduled job: resend the receipt of order 5, and report the request it ran in."""
    logger.info("resending the receipts that failed")
    receipt = send_receipt.delay(5)
    return {"request_id": get_request_id(), "receipt": receipt.id}


# -- the script: publish to a worker of its own ------------------------------------------


class CardDeclinedError(Exception):
    """The payment failed: the order's transaction rolls back."""


class WorkerExitedError(Exception):
    """The worker exited while the script waited for a task's result."""


def announce(sender: str | None = None, headers: dict[str, Any] | None = None, **_: object) -> None:
    """Print each task as this process publishes it: Celery's after_task_publish."""
    print(f"  published {sender}{(headers or {}).get('argsrepr', '')}")


# IDs that differ on every run, and the names the script prints instead.
NAMES: dict[str, str] = {}


def named(text: str) -> str:
    """Return ``text`` with every ID of :data:`NAMES` replaced by its name."""
    if not NAMES:
        return text
    pattern = "|".join(map(re.escape, sorted(NAMES, key=len, reverse=True)))
    return re.sub(pattern, lambda match: NAMES[match.group()], text)


def seen(result: Any, worker: subprocess.Popen[bytes]) -> str:
    """Wait for a task's result, while the worker runs; say what the task saw."""
    found = wait_for(result, worker)
    return named(
        f"the task saw request_id={found['request_id']} user={found['user']} card={found['card']}"
    )


def wait_for(result: Any, worker: subprocess.Popen[bytes]) -> Any:
    """Wait for a task's result, while the worker runs; return it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            found = result.get(timeout=POLL)
            break
        except ResultTimeoutError:
            # A worker that died (one that can't import contextual, say) never
            # answers: say so now rather than after the whole TIMEOUT.
            if worker.poll() is not None:
                raise WorkerExitedError from None
            if time.monotonic() >= deadline:
                raise
    return found


def publish(tm: TransactionManager, worker: subprocess.Popen[bytes]) -> None:
    """Publish from two requests, then from a transaction that commits and one that rolls back."""
    print("1. two requests publish a task each; the checkout's card is not allowed to travel")
    results = []
    for order, user in ((1, "ada"), (2, "grace")):
        with request_context(request_id=f"req-{order}", user_id=user), checkout.scope(card="visa"):
            results.append(send_receipt.delay(order))
        NAMES[results[-1].id] = f"<receipt {order}>"
    for order, result in enumerate(results, start=1):
        print(f"  order {order}: {seen(result, worker)}")

    print("2. enqueue_on_commit in a transaction that commits")
    with request_context(request_id="req-3", user_id="ada"):
        with tm.transaction():
            receipt = enqueue_on_commit(send_receipt, 3, manager=tm)
            NAMES[receipt.id] = "<receipt 3>"
            print("  enqueued order 3: nothing is published before the commit")
        print("  committed")
    print(f"  order 3: {seen(receipt, worker)}")

    print("3. enqueue_on_commit in a transaction that rolls back")
    with request_context(request_id="req-4", user_id="grace"):
        try:
            with tm.transaction():
                enqueue_on_commit(send_receipt, 4, manager=tm)
                print("  enqueued order 4")
                raise CardDeclinedError  # noqa: TRY301 (the failure this example shows)
        except CardDeclinedError:
            print("  rolled back: order 4 is never published")

    print("4. outside any request, as a scheduler publishes: a new request ID, carried on")
    job = resend_failed_receipts.delay()
    NAMES[job.id] = "<resend>"
    found = wait_for(job, worker)
    NAMES[found["request_id"]] = "<new request ID>"
    NAMES[found["receipt"]] = "<receipt 5>"
    print(named(f"  the job ran in request {found['request_id']} and sent {found['receipt']}"))
    print(f"  order 5: {seen(send_receipt.AsyncResult(found['receipt']), worker)}")


def worker_pythonpath() -> str:
    """Return the worker's PYTHONPATH: contextual's directory, this one, then the caller's.

    The worker runs in this directory, where a relative entry of the
    caller's PYTHONPATH (``PYTHONPATH=src`` in a checkout) would point
    elsewhere: each one is made absolute. The directory that holds the
    contextual package this script imported comes first, so the worker
    imports the same one.
    """
    entries = [Path(contextual.__file__).resolve().parents[1], HERE]
    inherited = os.environ.get("PYTHONPATH")
    if inherited:
        entries += [Path(entry).resolve() for entry in inherited.split(os.pathsep)]
    return os.pathsep.join(map(str, entries))


def failed(problem: str, *files: Path, lines: int = 20) -> int:
    """Say why the example stopped, with the end of each of the worker's files; return 1."""
    print(f"{problem}.", file=sys.stderr)
    for path in files:
        text = path.read_text(errors="replace") if path.exists() else ""
        print(f"--- the end of {path.name}:", file=sys.stderr)
        print("\n".join(text.splitlines()[-lines:]) or "(empty)", file=sys.stderr)
    return 1


def stop(worker: subprocess.Popen[bytes]) -> None:
    """Stop the worker: a warm shutdown of its whole process group."""
    if worker.poll() is not None:
        return  # exited and reaped already: its pid may be another process's by now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def main(argv: list[str]) -> int:
    """Start a worker, publish to it, show what its tasks saw, stop it; return the exit code."""
    url = argv[0] if argv else os.environ.get(URL_VARIABLE, DEFAULT_URL)
    # A queue of its own, so that parallel runs never take each other's tasks.
    queue = f"contextual-example-{uuid.uuid4().hex[:12]}"
    app.conf.update(broker_url=url, result_backend=url, task_default_queue=queue)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0)
    except OperationalError as error:
        print(
            f"Can't reach the broker at {url}: {error}\n"
            "Start a Redis server, or pass the URL of one: "
            "python examples/celery_tasks.py redis://HOST:PORT/0",
            file=sys.stderr,
        )
        return 2

    after_task_publish.connect(announce)
    with tempfile.TemporaryDirectory() as tmp:
        log_file, output = Path(tmp) / "worker.log", Path(tmp) / "worker.out"
        command = [
            sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
            "--pool=solo", f"--queues={queue}", f"--hostname={queue}@%h",
            "--loglevel=INFO", f"--logfile={log_file}",
            "--without-heartbeat", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        env = {
            **os.environ,
            "PYTHONPATH": worker_pythonpath(),
            URL_VARIABLE: url,
            QUEUE_VARIABLE: queue,
        }
        with output.open("wb") as out:
            # A session of its own: stop() signals the worker's whole process group.
            worker = subprocess.Popen(  # noqa: S603 (this interpreter, a fixed command)
                command, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        print("worker: started, on a queue of its own")
        try:
            publish(TransactionManager(), worker)
        except WorkerExitedError:
            return failed(f"The worker exited with code {worker.returncode}", output, log_file)
        except ResultTimeoutError:
            return failed(f"No result from the worker within {TIMEOUT} s", output, log_file)
        finally:
            stop(worker)
        print(f"worker: stopped, exit code {worker.returncode}; its log lines from the tasks:")
        for line in log_file.read_text().splitlines():
            if "] celery_tasks: " in line:
                print(f"  {named(line)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
