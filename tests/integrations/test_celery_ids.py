"""contextual.integrations.celery, in this process: task IDs as log fields, new request IDs.

Tasks run through Celery's own tracer (``task.apply()``, ``task_prerun``
and ``task_postrun`` included) on apps with the in-memory broker; the
real-worker tests of the same behaviour are in test_celery.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from celery import Celery
from celery.signals import after_task_publish
from loguru import logger as loguru_logger

from contextual import (
    ContextExecutor,
    ContextFilter,
    ContextProcessPoolExecutor,
    current_request,
    get_current_user,
    get_request_id,
    get_store,
    request_context,
    to_thread,
)
from contextual.integrations import celery as integration
from contextual.integrations.celery import HEADER, install, task_fields
from contextual.integrations.loguru import patch_context
from contextual.integrations.structlog import add_context

NO_TASK = {"task_id": "-", "parent_task_id": "-"}
NEW_ID = re.compile(r"[0-9a-f]{32}")
ALLOW = {"contextual.request": ["user_id"]}

app = Celery("contextual_ids", broker="memory://", backend="cache+memory://", set_as_current=False)
install(app, allow=ALLOW)
logger = logging.getLogger("tests.celery.ids")


def payload(stores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"format": 1, "stores": stores}


def seen_here() -> dict[str, Any]:
    request = current_request()
    return {
        "fields": task_fields(),
        "request_id": get_request_id(),
        "current_request": None if request is None else request.request_id,
        "user": get_current_user(),
    }


@app.task(bind=True)
def report(self: Any) -> dict[str, Any]:
    return {**seen_here(), "id": self.request.id}


@app.task(bind=True)
def parent(self: Any) -> dict[str, Any]:
    """Apply report() eagerly, as a child; report what each saw, and what this one sees after."""
    before = seen_here()
    child = report.apply().get()
    return {"id": self.request.id, "before": before, "child": child, "after": seen_here()}


@app.task
def publish_report() -> str | None:
    """Publish report(); return the request ID it was published in."""
    report.delay()
    return get_request_id()


@app.task(bind=True)
def log_line(self: Any, text: str) -> str:
    logger.info("line %s", text)
    return str(self.request.id)


@pytest.fixture(autouse=True)
def _reports_again() -> Iterator[None]:
    integration._incoming_reported.clear()
    yield
    install(app, allow=ALLOW)  # the options a test changed


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """The headers of every message published during the test, in order."""
    messages: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        messages.append(dict(headers or {}))

    after_task_publish.connect(record, weak=False)
    yield messages
    after_task_publish.disconnect(record)


@pytest.fixture
def lines() -> Iterator[list[logging.LogRecord]]:
    """Records of ``tests.celery.ids`` that went through a ContextFilter with task_fields."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(ContextFilter(sources=[task_fields]))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


# -- task IDs ------------------------------------------------------------------------


def test_outside_a_task_the_task_fields_are_placeholders():
    assert task_fields() == NO_TASK


def test_a_task_sees_its_own_id_and_no_parent():
    seen = report.apply(task_id="t-root").get()
    assert seen["fields"] == {"task_id": "t-root", "parent_task_id": "-"}
    assert task_fields() == NO_TASK


def test_a_child_task_sees_its_parents_id_and_the_parent_gets_its_own_back():
    seen = parent.apply(task_id="t-parent").get()
    assert seen["before"]["fields"] == {"task_id": "t-parent", "parent_task_id": "-"}
    assert seen["child"]["fields"] == {"task_id": seen["child"]["id"], "parent_task_id": "t-parent"}
    assert seen["after"]["fields"] == seen["before"]["fields"]
    assert task_fields() == NO_TASK


def test_log_lines_of_a_task_carry_its_ids(lines):
    log_line.apply(("in the task",), task_id="t-logged").get()
    logger.info("outside")
    assert [(r.getMessage(), r.task_id, r.parent_task_id) for r in lines] == [  # type: ignore[attr-defined]
        ("line in the task", "t-logged", "-"),
        ("outside", "-", "-"),
    ]


def test_the_structlog_processor_and_the_loguru_patcher_take_task_fields_as_a_source():
    structlog_logger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[add_context(sources=[task_fields]), structlog.processors.JSONRenderer()],
    )
    loguru_lines: list[str] = []
    handler_id = loguru_logger.add(
        loguru_lines.append, format="{extra[task_id]} {extra[parent_task_id]} {message}"
    )
    patched = loguru_logger.patch(patch_context(sources=[task_fields]))

    @app.task
    def both() -> str:
        patched.info("loguru line")
        return str(structlog_logger.info("structlog line"))

    try:
        rendered = both.apply(task_id="t-both").get()
    finally:
        loguru_logger.remove(handler_id)
    event = json.loads(rendered)
    assert (event["task_id"], event["parent_task_id"]) == ("t-both", "-")
    assert loguru_lines == ["t-both - loguru line\n"]


def test_work_handed_to_a_context_executor_or_to_thread_sees_the_task_ids():
    @app.task
    def hand_off() -> tuple[dict[str, str], dict[str, str]]:
        with ContextExecutor(max_workers=1) as pool:
            in_pool = pool.submit(task_fields).result()
        return in_pool, asyncio.run(to_thread(task_fields))

    in_pool, in_thread = hand_off.apply(task_id="t-hand-off").get()
    assert in_pool == in_thread == {"task_id": "t-hand-off", "parent_task_id": "-"}


def test_a_task_id_that_could_forge_a_log_line_is_shown_escaped():
    seen = report.apply(task_id="evil\nINFO forged").get()
    assert seen["fields"]["task_id"] == "'evil\\nINFO forged'"


def test_task_ids_never_travel_with_a_message(published):
    publish_report.apply(task_id="t-publisher").get()
    (message,) = published
    assert "contextual.celery" not in message[HEADER]["stores"]
    assert message["parent_id"] == "t-publisher"  # Celery's own word for the child


def test_task_ids_that_a_header_carries_are_never_applied():
    install(app, allow={"contextual.celery": ["custom"], **ALLOW})
    header = payload({"contextual.celery": {"task_id": "forged", "custom": "forged"}})
    seen = report.apply(task_id="t-real", headers={HEADER: header}).get()
    assert seen["fields"] == {"task_id": "t-real", "parent_task_id": "-"}


def test_other_keys_of_the_task_store_stay_behind_whatever_allow_says(published):
    install(app, allow={"contextual.celery": ["custom"], **ALLOW})
    with request_context(request_id="r-custom"), get_store("contextual.celery").scope(custom="x"):
        report.delay()
    assert published[-1][HEADER] == payload({"contextual.request": {"request_id": "r-custom"}})


@pytest.mark.parametrize(
    "allow",
    [
        ["contextual.celery"],
        {"contextual.celery": True},
        {"contextual.celery": ["task_id"]},
        {"contextual.celery": ["parent_task_id"]},
    ],
)
def test_install_refuses_an_allow_list_that_lets_task_ids_travel(allow):
    bad = Celery("contextual_ids_bad", broker="memory://", set_as_current=False)
    with pytest.raises(ValueError, match=r"'contextual\.celery' travel.*never travel.*Remove it"):
        install(bad, allow=allow)
    assert "send_task" not in vars(bad)  # nothing installed


def test_tasks_of_an_app_without_install_have_no_task_fields():
    bare = Celery("contextual_ids_bare", broker="memory://", set_as_current=False)

    @bare.task
    def bare_fields() -> dict[str, str]:
        return task_fields()

    assert bare_fields.apply().get() == NO_TASK


# -- a new request ID for a task that came without one --------------------------------


def test_a_task_without_a_request_id_runs_under_a_new_one_logged_at_debug(caplog):
    caplog.set_level(logging.DEBUG, "contextual.integrations.celery")
    ids: list[str | None] = []
    handler = logging.Handler()
    handler.emit = lambda _record: ids.append(get_request_id())  # type: ignore[method-assign]
    logging.getLogger("contextual.integrations.celery").addHandler(handler)
    try:
        seen = report.apply(task_id="t-new").get()
    finally:
        logging.getLogger("contextual.integrations.celery").removeHandler(handler)
    assert NEW_ID.fullmatch(seen["request_id"])
    assert seen["current_request"] == seen["request_id"]
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.name == "contextual.integrations.celery"
    assert record.getMessage() == (
        f"Task {report.name}[t-new] arrived without a request ID; it runs under the new "
        f"request ID {seen['request_id']}."
    )
    assert ids == [seen["request_id"]], "logged inside the task's new request"
    assert get_request_id() is None


def test_each_task_without_a_request_id_gets_its_own():
    first, second = report.apply().get(), report.apply().get()
    assert first["request_id"] != second["request_id"]


def test_a_refused_request_id_is_replaced_by_a_new_one_and_said_so(caplog):
    caplog.set_level(logging.DEBUG, "contextual.integrations")
    header = payload({"contextual.request": {"request_id": "bad id", "user_id": "ada"}})
    seen = report.apply(task_id="t-refused", headers={HEADER: header}).get()
    assert NEW_ID.fullmatch(seen["request_id"])
    assert seen["user"] == "ada"  # the user that came stays
    warning, debug = caplog.records
    assert "the request ID 'bad id' is not valid" in warning.getMessage()
    assert debug.getMessage() == (
        f"Task {report.name}[t-refused] arrived with a request ID that was refused; it runs "
        f"under the new request ID {seen['request_id']}."
    )


def test_a_task_that_came_with_a_request_id_keeps_it_and_nothing_is_logged(caplog):
    caplog.set_level(logging.DEBUG, "contextual.integrations")
    header = payload({"contextual.request": {"request_id": "r-came"}})
    assert report.apply(headers={HEADER: header}).get()["request_id"] == "r-came"
    assert not caplog.records


def test_a_task_applied_inside_a_request_runs_in_it_without_a_new_one(caplog):
    caplog.set_level(logging.DEBUG, "contextual.integrations")
    with request_context(request_id="r-outer", user_id="ada"):
        seen = report.apply().get()
    assert (seen["request_id"], seen["user"]) == ("r-outer", "ada")
    assert not caplog.records


def test_the_child_of_a_task_without_a_request_id_runs_in_its_parents_new_one():
    seen = parent.apply().get()
    assert NEW_ID.fullmatch(seen["before"]["request_id"])
    assert seen["child"]["request_id"] == seen["before"]["request_id"]


def test_subtasks_carry_the_new_request_id(published):
    new_id = publish_report.apply().get()
    assert published[-1][HEADER] == payload({"contextual.request": {"request_id": new_id}})


def test_a_generator_makes_the_new_request_ids():
    install(app, allow=ALLOW, generator=lambda: "job-42")
    assert report.apply().get()["request_id"] == "job-42"


def test_the_generator_runs_where_celery_knows_the_task():
    from celery import current_task  # noqa: PLC0415 (Celery's proxy, read where the generator runs)

    install(app, allow=ALLOW, generator=lambda: f"task-{current_task.request.id}")
    assert report.apply(task_id="t-gen").get()["request_id"] == "task-t-gen"


def test_without_a_generator_a_task_without_a_request_id_runs_without_one(caplog):
    caplog.set_level(logging.DEBUG, "contextual.integrations")
    install(app, allow=ALLOW, generator=None)
    seen = report.apply().get()
    assert (seen["request_id"], seen["current_request"]) == (None, None)
    assert not caplog.records


@pytest.mark.parametrize(
    ("generator", "said"),
    [
        (lambda: "two\nlines", "returned 'two\\nlines'"),
        (lambda: "", "returned ''"),
        (lambda: 42, "returned 42"),
        (lambda: "caf\u00e9", "returned 'caf\\xe9'"),
    ],
)
def test_a_generator_that_returns_no_request_id_is_replaced_with_an_error(caplog, generator, said):
    caplog.set_level(logging.DEBUG, "contextual.integrations")
    install(app, allow=ALLOW, generator=generator)
    seen = report.apply(task_id="t-bad").get()
    assert NEW_ID.fullmatch(seen["request_id"])
    error, debug = caplog.records
    assert error.levelno == logging.ERROR
    assert error.name == "contextual.integrations.celery"
    assert error.getMessage() == (
        f"The request ID generator given to install() {said} for task {report.name}[t-bad], "
        "not a non-empty str of printable ASCII; the task runs under a random request ID "
        "instead."
    )
    assert "arrived without a request ID" in debug.getMessage()


def test_a_generator_that_raises_is_replaced_with_an_error_and_its_traceback(caplog):
    caplog.set_level(logging.DEBUG, "contextual.integrations")

    def broken() -> str:
        msg = "no IDs today"
        raise RuntimeError(msg)

    install(app, allow=ALLOW, generator=broken)
    seen = report.apply(task_id="t-raise").get()
    assert NEW_ID.fullmatch(seen["request_id"])
    error, _ = caplog.records
    assert error.getMessage() == (
        f"The request ID generator given to install() raised for task {report.name}[t-raise]; "
        "the task runs under a random request ID instead."
    )
    assert error.exc_info is not None
    assert str(error.exc_info[1]) == "no IDs today"


@pytest.mark.parametrize(
    ("generator", "message"),
    [
        (False, r"generator must be a function .*or None .*got bool False\."),
        (True, r"generator must be a function .*got bool True\."),
        ("uuid4", r"generator must be a function that returns a new request ID .*got str 'uuid4'"),
    ],
)
def test_install_refuses_a_generator_that_is_not_a_function(generator, message):
    with pytest.raises(TypeError, match=message):
        install(app, generator=generator)


def test_install_refuses_a_coroutine_function_as_generator():
    async def generate() -> str:
        return "r-async"

    with pytest.raises(TypeError, match="generator must be a plain function"):
        install(app, generator=generate)  # type: ignore[arg-type]


def test_a_process_pool_task_of_a_task_sees_the_task_ids():
    @app.task
    def hand_to_a_process() -> dict[str, str]:
        with ContextProcessPoolExecutor(max_workers=1) as pool:
            return pool.submit(task_fields).result(timeout=30)

    assert hand_to_a_process.apply(task_id="t-process").get() == {
        "task_id": "t-process",
        "parent_task_id": "-",
    }
