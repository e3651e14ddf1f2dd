"""contextual.integrations.celery, in this process: carriers' text maps from publisher to task.

Messages are published on an app with the in-memory broker and read back
from ``after_task_publish``; tasks run through Celery's own tracer
(``task.apply(headers=...)``), as a worker would run the message. The
test carriers of ``support.carriers`` carry a ContextVar of their own; the
OpenTelemetry tests use the real SDK with the in-memory span exporter.
The real-worker tests are in test_celery.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import after_task_publish
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contextual import ContextFilter, request_context
from contextual._propagation.carriers import register_carrier, unregister_carrier
from contextual._propagation.wire import MAX_BYTES
from contextual.integrations import celery as integration
from contextual.integrations import opentelemetry as contextual_otel
from contextual.integrations.celery import CARRIERS_HEADER, HEADER, install
from contextual.integrations.opentelemetry import trace_fields
from support import carriers
from support.carriers import FIELD, TestCarrier

app = Celery(
    "contextual_carriers", broker="memory://", backend="cache+memory://", set_as_current=False
)
install(app)
# A provider of this module's own, never the global one.
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer(__name__)


@app.task
def look() -> dict[str, Any]:
    return {"value": carriers.value.get()}


@app.task
def in_span() -> dict[str, Any]:
    """Start a span; report its context and its parent's."""
    with tracer.start_as_current_span("task") as span:
        parent = span.parent  # type: ignore[attr-defined] (the SDK's span has one)
        return {
            "trace_id": span.get_span_context().trace_id,
            "parent_span_id": None if parent is None else parent.span_id,
            "parent_is_remote": None if parent is None else parent.is_remote,
        }


@pytest.fixture(autouse=True)
def _reports_again() -> None:
    integration._incoming_reported.clear()
    integration._uncarried_reported.clear()


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """The headers of every message published during the test, in order."""
    messages: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        messages.append(dict(headers or {}))

    after_task_publish.connect(record, weak=False)
    yield messages
    after_task_publish.disconnect(record)


@contextlib.contextmanager
def registered(name: str, text_map: dict[str, Any] | None = None) -> Iterator[TestCarrier]:
    """Register the test carrier ``name`` for a block; with ``text_map``, it captures that."""
    carrier = carriers.named(name)
    carrier.text_map = text_map
    carrier.events.clear()
    register_carrier(carrier)
    try:
        yield carrier
    finally:
        unregister_carrier(name)
        carrier.text_map = None


@pytest.fixture
def carrier() -> Iterator[TestCarrier]:
    with registered("tests-celery-local") as registered_carrier:
        yield registered_carrier


@pytest.fixture
def second() -> Iterator[TestCarrier]:
    with registered("tests-celery-second") as registered_carrier:
        yield registered_carrier


@pytest.fixture
def otel() -> Iterator[None]:
    contextual_otel.install()
    exporter.clear()
    yield
    contextual_otel.uninstall()


@contextlib.contextmanager
def carried_value(value: str) -> Iterator[None]:
    """Make ``value`` the test carriers' current value, for a block."""
    token = carriers.value.set(value)
    try:
        yield
    finally:
        carriers.value.reset(token)


# -- publishing ----------------------------------------------------------------------


def test_a_message_carries_the_text_map_of_each_registered_carrier(published, carrier, second):
    with carried_value("v-1"):
        look.delay()
    assert published[-1][CARRIERS_HEADER] == {
        "tests-celery-local": {FIELD: "v-1"},
        "tests-celery-second": {FIELD: "v-1"},
    }


def test_without_carriers_or_with_nothing_to_carry_there_is_no_carriers_header(published, carrier):
    look.delay()  # registered, but nothing current to carry
    unregister_carrier(carrier.name)
    with carried_value("v-unregistered"):
        look.delay()
    assert [CARRIERS_HEADER in message for message in published] == [False, False]


@pytest.mark.parametrize(
    ("text_map", "why"),
    [
        ({"bad key": "v"}, "captured the key 'bad key', which is not an HTTP field name"),
        ({FIELD: "line\nbreak"}, f"captured a value for '{FIELD}' that is not printable ASCII"),
        ({FIELD: "x" * MAX_BYTES}, f"over the limit of {MAX_BYTES} bytes"),
        ({FIELD: 1}, "captured dict, not a text map"),
    ],
)
def test_a_text_map_no_transport_can_carry_stays_behind_with_one_warning(
    published, caplog, second, text_map, why
):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    with carried_value("v-kept"), registered("tests-celery-bad", text_map):
        look.delay()
        look.delay()
    assert [message[CARRIERS_HEADER] for message in published] == [
        {"tests-celery-second": {FIELD: "v-kept"}}
    ] * 2
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith(
        f"Did not send the text map of the carrier 'tests-celery-bad' with task {look.name}: "
    )
    assert why in message
    assert message.endswith("Later problems with this carrier are not reported.")


def test_only_bad_text_maps_means_no_carriers_header(published, caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    with registered("tests-celery-bad", {"bad key": "v"}):
        look.delay()
    assert CARRIERS_HEADER not in published[-1]
    assert len(caplog.records) == 1


def test_headers_given_are_kept_and_each_of_ours_is_added_unless_given(published, carrier):
    given = {"tests-celery-local": {FIELD: "given"}}
    with carried_value("v-own"), request_context(request_id="r-own"):
        look.apply_async(headers={CARRIERS_HEADER: given})
        look.apply_async(headers={HEADER: "as given", "x-other": "kept"})
    first, second = published
    assert (first[CARRIERS_HEADER], first[HEADER]["stores"]) == (
        given,
        {"contextual.request": {"request_id": "r-own"}},
    )
    assert (second[HEADER], second["x-other"], second[CARRIERS_HEADER]) == (
        "as given",
        "kept",
        {"tests-celery-local": {FIELD: "v-own"}},
    )


# -- in the worker ---------------------------------------------------------------------


def test_a_task_runs_with_what_its_carriers_carried_and_puts_it_back(carrier):
    headers = {CARRIERS_HEADER: {"tests-celery-local": {FIELD: "v-arrived"}}}
    with carried_value("v-worker"):
        assert look.apply(headers=headers).get() == {"value": "v-arrived"}
        assert carriers.value.get() == "v-worker"
    assert carrier.events == ["enter tests-celery-local", "exit tests-celery-local"]


def test_the_carriers_context_is_current_when_problems_are_reported(carrier, caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    values: list[str | None] = []
    handler = logging.Handler()
    handler.emit = lambda _record: values.append(carriers.value.get())  # type: ignore[method-assign]
    logging.getLogger("contextual.integrations").addHandler(handler)
    try:
        headers = {
            HEADER: "garbage",
            CARRIERS_HEADER: {"tests-celery-local": {FIELD: "v-report"}},
        }
        look.apply(headers=headers).get()
    finally:
        logging.getLogger("contextual.integrations").removeHandler(handler)
    assert values == ["v-report"]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("garbage", "the header is a str, not a mapping"),
        (
            {"tests-celery-local": {"bad key": "v"}},
            (
                "the text map of the carrier 'tests-celery-local' is not a dict of HTTP field "
                f"names to printable ASCII of at most {MAX_BYTES} bytes"
            ),
        ),
        ({"tests-celery-local": ["not", "a", "map"]}, "the text map of the carrier"),
        ({"tests-celery-local": {FIELD: "x" * MAX_BYTES}}, "the text map of the carrier"),
        (
            {"tests-nowhere": {FIELD: "v"}, 3: {FIELD: "v"}},
            (
                "no carrier is registered here as 'tests-nowhere', 3, so what it carries is not "
                "applied (register the same carriers in the worker as in the publishers: for "
                "OpenTelemetry, call contextual.integrations.opentelemetry.install() in the "
                "worker too)"
            ),
        ),
    ],
)
def test_a_malformed_carriers_header_is_ignored_with_one_warning_and_the_task_runs(
    carrier, caplog, header, problem
):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    for _ in range(2):
        assert look.apply(headers={CARRIERS_HEADER: header}).get() == {"value": None}
    (record,) = caplog.records
    message = record.getMessage()
    assert f"Ignored part of the {CARRIERS_HEADER!r} header of task {look.name}[" in message
    assert problem in message
    assert carrier.events == []


def test_many_unknown_carriers_are_named_five_and_counted(caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    header = {f"tests-unknown-{i}": {FIELD: "v"} for i in range(8)}
    look.apply(headers={CARRIERS_HEADER: header}).get()
    (record,) = caplog.records
    assert "'tests-unknown-4' (and 3 more), so" in record.getMessage()
    assert "'tests-unknown-5'" not in record.getMessage()


def test_known_carriers_apply_beside_unknown_ones(carrier, caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    header = {"tests-nowhere": {FIELD: "v"}, "tests-celery-local": {FIELD: "v-known"}}
    assert look.apply(headers={CARRIERS_HEADER: header}).get() == {"value": "v-known"}


def test_tasks_of_an_app_without_install_apply_no_carrier(carrier):
    bare = Celery("contextual_carriers_bare", broker="memory://", set_as_current=False)

    @bare.task
    def bare_look() -> str | None:
        return carriers.value.get()

    headers = {CARRIERS_HEADER: {"tests-celery-local": {FIELD: "v"}}}
    assert bare_look.apply(headers=headers).get() is None


# -- OpenTelemetry, with the real SDK ---------------------------------------------------


def finished(name: str) -> ReadableSpan:
    (span,) = [span for span in exporter.get_finished_spans() if span.name == name]
    return span


def test_a_task_span_is_a_child_of_the_span_that_published_the_task(published, otel):
    with tracer.start_as_current_span("publish"):
        look.delay()
    header = published[-1][CARRIERS_HEADER]
    sender = finished("publish").context
    assert header == {
        "opentelemetry": {
            "traceparent": f"00-{sender.trace_id:032x}-{sender.span_id:016x}-"
            f"{sender.trace_flags:02x}"
        }
    }
    # Run as the worker runs the message: in a context with no span.
    assert trace.get_current_span().get_span_context().is_valid is False
    seen = in_span.apply(headers={CARRIERS_HEADER: header}).get()
    assert seen == {
        "trace_id": sender.trace_id,
        "parent_span_id": sender.span_id,
        "parent_is_remote": True,
    }
    parent = finished("task").parent
    assert parent is not None
    assert (parent.trace_id, parent.span_id) == (sender.trace_id, sender.span_id)
    assert trace.get_current_span().get_span_context().is_valid is False


def test_a_task_applied_eagerly_inside_a_span_is_its_child_without_any_header(otel):
    with tracer.start_as_current_span("eager") as span:
        seen = in_span.apply().get()
    assert (seen["trace_id"], seen["parent_span_id"], seen["parent_is_remote"]) == (
        span.get_span_context().trace_id,
        span.get_span_context().span_id,
        False,
    )


def test_log_lines_of_a_task_carry_the_trace_of_the_span_that_published_it(published, otel):
    with tracer.start_as_current_span("publish"):
        look.delay()
    sender = finished("publish").context
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(ContextFilter(sources=[trace_fields]))
    logger = logging.getLogger("tests.celery.carriers")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    @app.task
    def log_in_task() -> None:
        logger.info("in the task")

    try:
        log_in_task.apply(headers={CARRIERS_HEADER: published[-1][CARRIERS_HEADER]}).get()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    (record,) = records
    assert record.trace_id == f"{sender.trace_id:032x}"  # type: ignore[attr-defined]
