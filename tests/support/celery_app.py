"""The Celery app of the Celery tests: the test process publishes with it, the worker runs it.

The worker subprocess imports this module (``celery -A support.celery_app worker``
with ``tests/`` on ``PYTHONPATH``), so it sees the same stores, tasks and
``install()`` call as the test process. Every task appends what it saw to a
JSON-lines file (``CONTEXTUAL_TEST_CELERY_SEEN``), and so does a
``task_postrun`` handler connected after install()'s: what the stores hold
once the task is over. The worker's log handlers get a ContextFilter with
task_fields() as a source, so the worker's log file shows each line's request
ID between brackets, then its task's ID and its parent's.

With ``CONTEXTUAL_TEST_CELERY_WORKER`` set (the worker fixture sets it),
the worker registers two carriers, the test carrier :data:`CARRIER_NAME` of
``support.carriers`` and OpenTelemetry's (through
``contextual.integrations.opentelemetry.install()``), and logs the
``contextual.integrations.celery`` logger's DEBUG records. The test process
does neither at import: the tests that need carriers register them, so
that no other test sees them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun
from celery.utils.log import get_task_logger
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from contextual import (
    ContextExecutor,
    ContextFilter,
    ContextStore,
    current_request,
    get_current_user,
)
from contextual import get_request_id as _get_request_id
from contextual._propagation.carriers import register_carrier
from contextual.integrations import opentelemetry as contextual_otel
from contextual.integrations.celery import install, task_fields
from support import carriers

REDIS_VARIABLE = "CONTEXTUAL_TEST_REDIS_URL"
SEEN_VARIABLE = "CONTEXTUAL_TEST_CELERY_SEEN"
QUEUE_VARIABLE = "CONTEXTUAL_TEST_CELERY_QUEUE"
WORKER_VARIABLE = "CONTEXTUAL_TEST_CELERY_WORKER"
LOG_FORMAT = (
    "%(levelname)s %(processName)s [%(request_id)s] task=%(task_id)s "
    "parent=%(parent_task_id)s %(name)s: %(message)s"
)
#: The name of the test carrier that the worker registers.
CARRIER_NAME = "tests-celery"

# Allowed to travel: every key of tenant, and the request's user.
tenant = ContextStore("tests.celery.tenant")
# Never allowed: set by publishers, must never reach a task.
secret = ContextStore("tests.celery.secret")
# A thread-backend store: tasks write to it, and the next task on the thread
# must not see it.
scratch = ContextStore("tests.celery.scratch", backend="thread")

# Without a server (the tests skip then) the app still imports.
_url = os.environ.get(REDIS_VARIABLE)
app = Celery("contextual_tests", broker=_url or "memory://", backend=_url or "cache+memory://")
app.conf.update(
    task_default_queue=os.environ.get(QUEUE_VARIABLE, "contextual-tests"),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    result_expires=600,
)
install(app, allow={"tests.celery.tenant": True, "contextual.request": ["user_id"]})

if os.environ.get(WORKER_VARIABLE):
    register_carrier(carriers.named(CARRIER_NAME))
    contextual_otel.install()
    # The worker logs at INFO; the record of a new request ID is a DEBUG one.
    logging.getLogger("contextual.integrations.celery").setLevel(logging.DEBUG)

logger = get_task_logger(__name__)


def _with_context_filter(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(ContextFilter(sources=[task_fields]))
        handler.setFormatter(logging.Formatter(LOG_FORMAT))


after_setup_logger.connect(_with_context_filter, weak=False)
after_setup_task_logger.connect(_with_context_filter, weak=False)


def _state(event: str, task_id: str | None, tag: str | None) -> dict[str, Any]:
    request = current_request()
    return {
        "event": event,
        "tag": tag,
        "task_id": task_id,
        "request_id": _get_request_id(),
        "current_request": None if request is None else request.request_id,
        "current_user": None if request is None else request.user_id,
        "user": get_current_user(),
        "tenant": dict(tenant),
        "secret": dict(secret),
        "scratch": dict(scratch),
        "task_fields": task_fields(),
        "carried": carriers.value.get(),
        "pid": os.getpid(),
        "thread": threading.get_ident(),
    }


def _record(state: dict[str, Any]) -> dict[str, Any]:
    path = os.environ.get(SEEN_VARIABLE)
    if path:
        with open(path, "a", encoding="utf-8") as file:  # noqa: PTH123 (one write per line)
            file.write(json.dumps(state) + "\n")
    return state


def _leave_values_behind(tag: str) -> None:
    tenant["left_by"] = tag
    secret["left_by"] = tag
    scratch["left_by"] = tag


@task_postrun.connect(weak=False)
def _after(task_id: str | None = None, args: Any = None, **_: object) -> None:
    # Connected after install()'s handler, so it runs after the restore.
    tag = args[0] if args and isinstance(args[0], str) else None
    _record(_state("after", task_id, tag))


@app.task(bind=True)
def look(self: Any, tag: str, *, leave: bool = False) -> dict[str, Any]:
    """Log a line, report what this task sees; with ``leave``, write values to every store."""
    logger.info("look %s", tag)
    seen = _record(_state("seen", self.request.id, tag))
    if leave:
        _leave_values_behind(tag)
    return seen


@app.task(bind=True)
def look_after(self: Any, previous: object, tag: str) -> dict[str, Any]:
    """A chain's later link: the same as look()."""
    del previous
    logger.info("look %s", tag)
    return _record(_state("seen", self.request.id, tag))


@app.task(bind=True)
def collect(self: Any, results: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    """A chord's body: report what it sees, with what the header tasks saw."""
    logger.info("look %s", tag)
    seen = _record(_state("seen", self.request.id, tag))
    seen["header_request_ids"] = sorted(r["request_id"] for r in results)
    return seen


@app.task(bind=True)
def fail(self: Any, tag: str) -> None:
    """Leave values behind, then raise."""
    _record(_state("seen", self.request.id, tag))
    _leave_values_behind(tag)
    msg = f"failing on purpose: {tag}"
    raise RuntimeError(msg)


@app.task(bind=True, max_retries=1)
def retry_once(self: Any, tag: str) -> dict[str, Any]:
    """Leave values behind (an allowed one too) and retry; the second attempt reports."""
    seen = _record({**_state("seen", self.request.id, tag), "retries": self.request.retries})
    if self.request.retries == 0:
        _leave_values_behind(tag)
        raise self.retry(countdown=0)
    return seen


@app.task(bind=True)
def wait_to_be_revoked(self: Any, tag: str) -> str:
    """Report, leave values behind, then wait for revoke(terminate=True, signal="SIGUSR1")."""
    _record(_state("seen", self.request.id, tag))
    _leave_values_behind(tag)
    # SIGUSR1 raises SoftTimeLimitExceeded here, in the pool process; the
    # test revokes as soon as it reads the record above.
    time.sleep(30)
    return "not revoked"


@app.task(bind=True)
def row_exists(self: Any, tag: str, path: str, key: int) -> dict[str, Any]:
    """Report whether the row ``key`` is committed in the sqlite3 file, with what the task sees."""
    seen = _record(_state("seen", self.request.id, tag))
    connection = sqlite3.connect(path)
    try:
        found = connection.execute("SELECT 1 FROM items WHERE k = ?", (key,)).fetchone()
    finally:
        connection.close()
    return {**seen, "row_exists": found is not None}


@app.task(bind=True)
def publish_child(self: Any, tag: str) -> str:
    """Change the tenant inside the task, then publish look(tag) to this task's queue."""
    _record(_state("seen", self.request.id, tag))
    with tenant.scope(changed_by="parent"):
        child = look.apply_async((f"{tag}-child",), queue=self.request.delivery_info["routing_key"])
    return str(child.id)


@app.task(bind=True)
def hand_off(self: Any, tag: str) -> dict[str, Any]:
    """Log a line in a ContextExecutor's thread, and report what it sees there."""

    def in_pool() -> dict[str, Any]:
        logger.info("handed off %s", tag)
        return _state("handed off", self.request.id, tag)

    with ContextExecutor(max_workers=1) as pool:
        return pool.submit(in_pool).result()


@functools.cache
def _tracer() -> Tracer:
    # A provider of its own, never the global one: the test process has
    # its own too, and OpenTelemetry lets a process set the global once.
    return TracerProvider().get_tracer(__name__)


@app.task(bind=True)
def traced(self: Any, tag: str, *, child: bool = False) -> dict[str, Any]:
    """Start a span; report its IDs and its parent's; with ``child``, publish traced() in it."""
    with _tracer().start_as_current_span(f"task {tag}") as span:
        context = span.get_span_context()
        parent = span.parent  # type: ignore[attr-defined] (the SDK's span has one)
        seen: dict[str, Any] = {
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "parent_span_id": None if parent is None else format(parent.span_id, "016x"),
            "parent_is_remote": None if parent is None else parent.is_remote,
            "request_id": _get_request_id(),
        }
        if child:
            queue = self.request.delivery_info["routing_key"]
            seen["child_id"] = traced.apply_async((f"{tag}-child",), queue=queue).id
    return seen
