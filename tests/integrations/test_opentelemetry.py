"""OpenTelemetry in one process, with the real SDK: trace fields, request IDs on spans, carriers.

Spans come from SDK providers of the tests' own (tests/support/otel.py)
exporting to memory; the tests check parent links and IDs, never only
that something is there. Other processes and other services have files
of their own (test_opentelemetry_processes.py, test_opentelemetry_http.py).
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import logging.config
import re
import sys
import threading
import wsgiref.util
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from loguru import logger as loguru_logger
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from contextual import (
    ContextExecutor,
    ContextFilter,
    ContextThread,
    capture,
    install_record_factory,
    request_context,
    to_thread,
)
from contextual._propagation.carriers import carrier_named, registered_carriers
from contextual.integrations import asgi, wsgi
from contextual.integrations import opentelemetry as contextual_otel
from contextual.integrations.loguru import patch_context
from contextual.integrations.opentelemetry import install, trace_fields, uninstall
from contextual.integrations.structlog import add_context
from support.http_servers import forget_reports
from support.middleware import WARNINGS_LOGGER
from support.otel import AsgiServerSpan, WsgiServerSpan, ended, hex_ids, link, make_tracer

DASHES = {"trace_id": "-", "span_id": "-"}


@pytest.fixture
def tracer_spans() -> tuple[trace.Tracer, Any]:
    return make_tracer()


@pytest.fixture
def tracer(tracer_spans: tuple[trace.Tracer, Any]) -> trace.Tracer:
    return tracer_spans[0]


@pytest.fixture
def spans(tracer_spans: tuple[trace.Tracer, Any]) -> Any:
    return tracer_spans[1]


@pytest.fixture
def installed() -> Iterator[None]:
    install()
    yield
    uninstall()


@pytest.fixture(autouse=True)
def _nothing_installed_after() -> Iterator[None]:
    yield
    uninstall()


def fields_of(span: trace.Span) -> dict[str, str]:
    trace_id, span_id = hex_ids(span.get_span_context())  # type: ignore[misc]
    return {"trace_id": trace_id, "span_id": span_id}


# -- trace_fields ------------------------------------------------------------------


def test_outside_any_span_both_fields_are_a_dash():
    assert trace_fields() == DASHES


def test_inside_a_span_the_fields_are_its_ids_in_lowercase_hex(tracer, spans):
    with tracer.start_as_current_span("work"):
        fields = trace_fields()
    [span] = ended(spans, "work")
    assert re.fullmatch(r"[0-9a-f]{32}", fields["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", fields["span_id"])
    assert (fields["trace_id"], fields["span_id"]) == hex_ids(span.context)


def test_nested_spans_give_the_innermost_then_the_outer_again(tracer):
    with tracer.start_as_current_span("outer") as outer:
        first = trace_fields()
        with tracer.start_as_current_span("inner") as inner:
            nested = trace_fields()
        again = trace_fields()
    assert first == again == fields_of(outer)
    assert nested == fields_of(inner)
    assert nested["trace_id"] == first["trace_id"]
    assert nested["span_id"] != first["span_id"]
    assert trace_fields() == DASHES


def test_ids_keep_their_leading_zeros():
    context = trace.SpanContext(trace_id=1, span_id=2, is_remote=True)
    with trace.use_span(trace.NonRecordingSpan(context)):
        assert trace_fields() == {"trace_id": "0" * 31 + "1", "span_id": "0" * 15 + "2"}


def test_a_remote_parent_that_is_not_recording_still_gives_its_ids():
    context = trace.SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True)
    with trace.use_span(trace.NonRecordingSpan(context)):
        assert trace_fields() == {"trace_id": f"{0xABC:032x}", "span_id": f"{0xDEF:016x}"}


def test_the_invalid_span_gives_dashes(tracer):
    with tracer.start_as_current_span("outer"), trace.use_span(trace.INVALID_SPAN):
        assert trace_fields() == DASHES


class _BrokenSpan(trace.NonRecordingSpan):
    def get_span_context(self) -> trace.SpanContext:
        msg = "broken"
        raise RuntimeError(msg)


def test_a_span_that_raises_gives_dashes_and_never_raises():
    with trace.use_span(_BrokenSpan(trace.INVALID_SPAN_CONTEXT)):
        assert trace_fields() == DASHES


def test_each_thread_gets_the_ids_of_its_own_span(tracer):
    barrier = threading.Barrier(4)
    seen: dict[int, tuple[dict[str, str], dict[str, str]]] = {}

    def work(n: int) -> None:
        with tracer.start_as_current_span(f"thread {n}") as span:
            barrier.wait()  # every thread is inside its span before any reads
            for _ in range(200):
                fields = trace_fields()
                if fields != fields_of(span):
                    break
            seen[n] = (fields, fields_of(span))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4
    for got, expected in seen.values():
        assert got == expected
    assert len({got["span_id"] for got, _ in seen.values()}) == 4


# -- in log lines ------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("tests.otel.lines")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, stream, handler
    log.removeHandler(handler)


def test_a_context_filter_line_carries_the_span_and_the_request(tracer, log_stream):
    log, stream, handler = log_stream
    handler.addFilter(ContextFilter(sources=[trace_fields]))
    handler.setFormatter(logging.Formatter("%(trace_id)s %(span_id)s %(request_id)s %(message)s"))
    log.info("before")
    with request_context(request_id="r-1"), tracer.start_as_current_span("handler") as span:
        log.info("inside")
    ids = fields_of(span)
    assert stream.getvalue().splitlines() == [
        "- - - before",
        f"{ids['trace_id']} {ids['span_id']} r-1 inside",
    ]


def test_a_value_passed_in_extra_keeps_its_place(tracer, log_stream):
    log, stream, handler = log_stream
    handler.addFilter(ContextFilter(sources=[trace_fields]))
    handler.setFormatter(logging.Formatter("%(trace_id)s %(span_id)s"))
    with tracer.start_as_current_span("handler") as span:
        log.info("x", extra={"trace_id": "given"})
    assert stream.getvalue() == f"given {fields_of(span)['span_id']}\n"


def test_the_dict_config_recipe_of_the_how_to(tracer):
    stream = io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "incremental": False,
            "disable_existing_loggers": False,
            "filters": {
                "context": {
                    "()": "contextual.ContextFilter",
                    "sources": ["ext://contextual.integrations.opentelemetry.trace_fields"],
                },
            },
            "formatters": {"plain": {"format": "%(trace_id)s %(span_id)s %(message)s"}},
            "handlers": {
                "lines": {
                    "class": "logging.StreamHandler",
                    "stream": stream,
                    "filters": ["context"],
                    "formatter": "plain",
                },
            },
            "loggers": {
                "tests.otel.dictconfig": {
                    "handlers": ["lines"],
                    "level": "INFO",
                    "propagate": False,
                },
            },
        }
    )
    log = logging.getLogger("tests.otel.dictconfig")
    try:
        with tracer.start_as_current_span("configured") as span:
            log.info("configured")
    finally:
        for handler in log.handlers:
            log.removeHandler(handler)
    ids = fields_of(span)
    assert stream.getvalue() == f"{ids['trace_id']} {ids['span_id']} configured\n"


def test_the_record_factory_takes_trace_fields_too(tracer):
    factory = install_record_factory(sources=[trace_fields])
    log = logging.getLogger("tests.otel.factory.child")
    try:
        outside = log.makeRecord(log.name, logging.INFO, "app.py", 1, "x", None, None)
        with tracer.start_as_current_span("handler") as span:
            inside = log.makeRecord(log.name, logging.INFO, "app.py", 1, "x", None, None)
    finally:
        factory.uninstall()
    assert (outside.trace_id, outside.span_id) == ("-", "-")
    assert {"trace_id": inside.trace_id, "span_id": inside.span_id} == fields_of(span)


def test_structlog_events_carry_the_span(tracer):
    events: list[dict[str, Any]] = []

    def keep(_logger: object, _method: str, event_dict: dict[str, Any]) -> str:
        events.append(dict(event_dict))
        return ""

    slog = structlog.wrap_logger(
        structlog.ReturnLogger(), processors=[add_context(sources=[trace_fields]), keep]
    )
    slog.info("outside")
    with tracer.start_as_current_span("handler") as span:
        slog.info("inside", span_id="given")
    assert events[0] == {"event": "outside", "request_id": "-", "user_id": "-", **DASHES}
    assert events[1] == {
        "event": "inside",
        "request_id": "-",
        "user_id": "-",
        "trace_id": fields_of(span)["trace_id"],
        "span_id": "given",
    }


def test_loguru_records_carry_the_span(tracer):
    lines: list[str] = []
    loguru_logger.remove()
    try:
        loguru_logger.configure(patcher=patch_context(sources=[trace_fields]))
        loguru_logger.add(
            lines.append, format="{extra[trace_id]} {extra[span_id]} {message}", colorize=False
        )
        loguru_logger.info("outside")
        with tracer.start_as_current_span("handler") as span:
            loguru_logger.info("inside")
    finally:
        loguru_logger.remove()
        loguru_logger.configure(patcher=None)  # type: ignore[arg-type]
    ids = fields_of(span)
    assert [line.rstrip("\n") for line in lines] == [
        "- - outside",
        f"{ids['trace_id']} {ids['span_id']} inside",
    ]


# -- within one process: the span context is a ContextVar --------------------------


def test_capture_carries_the_span_into_another_thread(tracer, spans, run_in_new_thread):
    with tracer.start_as_current_span("sender"):
        snapshot = capture()
    run_in_new_thread(lambda: snapshot.run(_child, tracer))
    [sender], [child] = ended(spans, "sender"), ended(spans, "child")
    assert link(child)["parent"] == link(sender)["ids"]


def _child(tracer: trace.Tracer) -> dict[str, str]:
    with tracer.start_as_current_span("child"):
        return trace_fields()


def test_a_context_executor_task_is_a_child_of_the_submitting_span(tracer, spans):
    with ContextExecutor(max_workers=1) as pool:
        with tracer.start_as_current_span("sender"):
            fields = pool.submit(_child, tracer).result(timeout=20)
        # The worker keeps nothing of the earlier submit.
        outside = pool.submit(trace_fields).result(timeout=20)
    [sender], [child] = ended(spans, "sender"), ended(spans, "child")
    assert link(child)["parent"] == link(sender)["ids"]
    assert (fields["trace_id"], fields["span_id"]) == link(child)["ids"]
    assert outside == DASHES


def test_a_context_thread_is_a_child_of_the_starting_span(tracer, spans):
    with tracer.start_as_current_span("sender"):
        thread = ContextThread(target=_child, args=(tracer,))
        thread.start()
    thread.join()
    [sender], [child] = ended(spans, "sender"), ended(spans, "child")
    assert link(child)["parent"] == link(sender)["ids"]


def test_to_thread_is_a_child_of_the_awaiting_span(tracer, spans):
    async def main() -> None:
        with tracer.start_as_current_span("sender"):
            await to_thread(_child, tracer)

    asyncio.run(main())
    [sender], [child] = ended(spans, "sender"), ended(spans, "child")
    assert link(child)["parent"] == link(sender)["ids"]


# -- install(): the request ID on the request's span -------------------------------


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def call_wsgi(app: Any, request_id: str | None = None) -> dict[str, str]:
    environ: dict[str, Any] = {"PATH_INFO": "/orders"}
    wsgiref.util.setup_testing_defaults(environ)
    if request_id is not None:
        environ["HTTP_X_REQUEST_ID"] = request_id
    response: dict[str, str] = {}

    def start_response(_status: str, headers: list[tuple[str, str]], _exc: Any = None) -> None:
        response.update(headers)

    body = app(environ, start_response)
    assert b"".join(body) == b"ok"
    return response


def test_the_request_id_is_an_attribute_of_the_server_span_under_wsgi(tracer, spans, installed):
    app = WsgiServerSpan(wsgi.RequestContextMiddleware(_wsgi_app), tracer)
    call_wsgi(app, "r-wsgi-1")
    response = call_wsgi(app)
    first, second = ended(spans, "server /orders")
    assert first.attributes == {"request_id": "r-wsgi-1"}
    # A fresh ID: the one the response echoes.
    assert second.attributes == {"request_id": response["X-Request-ID"]}


def test_the_request_id_is_an_attribute_of_the_server_span_under_asgi(tracer, spans, installed):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = AsgiServerSpan(asgi.RequestContextMiddleware(app), tracer)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "path": "/orders",
        "method": "GET",
        "headers": [(b"x-request-id", b"r-asgi-1")],
    }
    asyncio.run(wrapped(scope, receive, send))
    [span] = ended(spans, "server /orders")
    assert span.attributes == {"request_id": "r-asgi-1"}
    assert sent[0]["status"] == 200


def test_the_attribute_name_is_yours_and_a_second_install_replaces_the_first(tracer, spans):
    app = WsgiServerSpan(wsgi.RequestContextMiddleware(_wsgi_app), tracer)
    install(span_attribute="app.request_id")
    call_wsgi(app, "r-1")
    install(span_attribute="http.request.id")
    call_wsgi(app, "r-2")
    first, second = ended(spans, "server /orders")
    assert first.attributes == {"app.request_id": "r-1"}
    assert second.attributes == {"http.request.id": "r-2"}


def test_no_attribute_with_span_attribute_none_or_after_uninstall(tracer, spans):
    app = WsgiServerSpan(wsgi.RequestContextMiddleware(_wsgi_app), tracer)
    install(span_attribute=None)
    call_wsgi(app, "r-1")
    assert carrier_named("opentelemetry") is not None
    install()
    uninstall()
    call_wsgi(app, "r-2")
    assert [span.attributes for span in ended(spans, "server /orders")] == [{}, {}]
    assert registered_carriers() == ()
    uninstall()  # again: nothing to undo


def test_a_span_that_does_not_record_gets_nothing_and_the_request_goes_on(installed):
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("tests.otel.off")
    app = WsgiServerSpan(wsgi.RequestContextMiddleware(_wsgi_app), tracer)
    with tracer.start_as_current_span("unsampled") as span:
        assert not span.is_recording()
    assert call_wsgi(app, "r-off")["X-Request-ID"] == "r-off"


def test_a_request_without_any_span_goes_on(installed):
    assert call_wsgi(wsgi.RequestContextMiddleware(_wsgi_app), "r-bare")["X-Request-ID"] == "r-bare"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"span_attribute": 3}, TypeError, r"span_attribute must be the name of a span attribute"),
        ({"span_attribute": b"id"}, TypeError, r"or None, got bytes b'id'"),
        ({"span_attribute": ""}, ValueError, r"span_attribute must not be empty"),
        ({"carry": "yes"}, TypeError, r"carry must be True or False, got str 'yes'"),
        ({"carry": None}, TypeError, r"carry must be True or False"),
    ],
)
def test_install_refuses_options_of_the_wrong_kind(options, error, match):
    with pytest.raises(error, match=match):
        install(**options)
    assert registered_carriers() == ()


# -- install(): the carrier --------------------------------------------------------


def test_install_registers_the_carrier_and_carry_false_does_not():
    install(carry=False)
    assert registered_carriers() == ()
    install()
    assert [carrier.name for carrier in registered_carriers()] == ["opentelemetry"]
    install()
    assert len(registered_carriers()) == 1


def test_the_carrier_captures_the_current_span_as_traceparent(tracer, installed):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    assert carrier.capture() is None  # outside any span: nothing to carry
    with tracer.start_as_current_span("sender") as span:
        text_map = carrier.capture()
    ids, flags = fields_of(span), span.get_span_context().trace_flags
    assert text_map == {"traceparent": f"00-{ids['trace_id']}-{ids['span_id']}-{flags:02x}"}
    # The default propagator's fields, but its baggage.
    assert set(propagate.get_global_textmap().fields) == {"traceparent", "tracestate", "baggage"}
    assert set(carrier.fields) == {"traceparent", "tracestate"}


def test_the_carrier_never_captures_opentelemetry_baggage(tracer, installed):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        assert carrier.capture() is None  # baggage, but no span: nothing to carry
        with tracer.start_as_current_span("sender") as span:
            text_map = carrier.capture()
        assert baggage.get_all() == {"tenant": "acme"}  # still current here
    finally:
        otel_context.detach(token)
    ids, flags = fields_of(span), span.get_span_context().trace_flags
    assert text_map == {"traceparent": f"00-{ids['trace_id']}-{ids['span_id']}-{flags:02x}"}


def test_applied_makes_the_carried_span_the_parent_and_puts_the_context_back(
    tracer, spans, installed
):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    with tracer.start_as_current_span("sender"):
        text_map = carrier.capture()
    assert text_map is not None
    with tracer.start_as_current_span("local") as local:
        with carrier.applied(text_map), tracer.start_as_current_span("child"):
            pass
        after = trace.get_current_span()
    assert after is local
    [sender], [child] = ended(spans, "sender"), ended(spans, "child")
    assert link(child)["parent"] == link(sender)["ids"]


def test_applied_without_a_traceparent_keeps_the_current_span(tracer, spans, installed):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    with (
        tracer.start_as_current_span("local"),
        carrier.applied({"tracestate": "vendor=value"}),
        tracer.start_as_current_span("child"),
    ):
        pass
    [local], [child] = ended(spans, "local"), ended(spans, "child")
    assert link(child)["parent"] == link(local)["ids"]


def test_applied_takes_no_baggage_and_keeps_the_current_one(tracer, spans, installed):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    carried = {"traceparent": traceparent, "baggage": "tenant=evil,secret=x"}
    token = otel_context.attach(baggage.set_baggage("tenant", "mine"))
    try:
        with carrier.applied({"baggage": "tenant=evil"}):
            assert baggage.get_all() == {"tenant": "mine"}
        with carrier.applied(carried), tracer.start_as_current_span("child"):
            assert baggage.get_all() == {"tenant": "mine"}
        assert baggage.get_all() == {"tenant": "mine"}
    finally:
        otel_context.detach(token)
    [child] = ended(spans, "child")
    assert link(child)["parent"] == ("1" * 32, "2" * 16)
    with carrier.applied(carried):
        assert baggage.get_all() == {}


class _OwnHeadersPropagator(TextMapPropagator):
    """Like Jaeger's: the span in one header, each baggage entry in a header of its own."""

    def inject(self, carrier: Any, context: Any = None, setter: Any = default_setter) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            ids = f"{span_context.trace_id:032x}:{span_context.span_id:016x}"
            setter.set(carrier, "X-Span", ids)
        for key, value in baggage.get_all(context).items():
            setter.set(carrier, f"x-baggage-{key}", str(value))

    def extract(self, carrier: Any, context: Any = None, getter: Any = default_getter) -> Any:
        context = otel_context.Context() if context is None else context
        for key in getter.keys(carrier):
            if key.startswith("x-baggage-"):
                [value] = getter.get(carrier, key)
                context = baggage.set_baggage(key.removeprefix("x-baggage-"), value, context)
        [ids] = getter.get(carrier, "X-Span") or [""]
        if not ids:
            return context
        trace_id, span_id = (int(part, 16) for part in ids.split(":"))
        sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        span_context = trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=sampled)
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)

    @property
    def fields(self) -> set[str]:
        return {"X-Span"}  # as AWS X-Ray's X-Amzn-Trace-Id: not lowercase


class _FixedBaggagePropagator(TextMapPropagator):
    """Writes a baggage header of its own, whatever the context holds."""

    def inject(self, carrier: Any, context: Any = None, setter: Any = default_setter) -> None:
        del context
        setter.set(carrier, "Baggage", "vendor=1")

    def extract(self, carrier: Any, context: Any = None, getter: Any = default_getter) -> Any:
        [header] = getter.get(carrier, "Baggage") or [""]
        context = otel_context.Context() if context is None else context
        return baggage.set_baggage("vendor", header, context) if header else context

    @property
    def fields(self) -> set[str]:
        return {"Baggage"}


PROPAGATORS = {
    "default": (None, {"traceparent", "tracestate"}),
    "trace context only": (TraceContextTextMapPropagator(), {"traceparent", "tracestate"}),
    "baggage in headers of its own": (_OwnHeadersPropagator(), {"X-Span"}),
    "a baggage header always": (
        CompositePropagator([TraceContextTextMapPropagator(), _FixedBaggagePropagator()]),
        {"traceparent", "tracestate"},
    ),
}


@pytest.fixture(params=PROPAGATORS)
def propagator_fields(request: pytest.FixtureRequest) -> Iterator[set[str]]:
    propagator, fields = PROPAGATORS[request.param]
    configured = propagate.get_global_textmap()
    if propagator is not None:
        propagate.set_global_textmap(propagator)
    yield fields
    propagate.set_global_textmap(configured)


def test_whatever_the_propagator_the_span_travels_and_baggage_does_not(
    tracer, spans, installed, propagator_fields
):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    assert set(carrier.fields) == propagator_fields
    token = otel_context.attach(baggage.set_baggage("tenant", "mine"))
    try:
        with tracer.start_as_current_span("sender"):
            text_map = carrier.capture()
        assert text_map is not None
        assert set(text_map) <= propagator_fields
        assert len(text_map) == 1  # the span's one header: no tracestate, no baggage
        # What a caller adds, in the headers of every propagator here, is not taken.
        carried = {**text_map, "baggage": "tenant=evil", "x-baggage-tenant": "evil"}
        carried["Baggage"] = "vendor=evil"
        with carrier.applied(carried), tracer.start_as_current_span("child"):
            assert baggage.get_all() == {"tenant": "mine"}
    finally:
        otel_context.detach(token)
    [sender], [child] = ended(spans, "sender"), ended(spans, "child")
    assert link(child)["parent"] == link(sender)["ids"]


@pytest.mark.parametrize(
    "text_map",
    [
        {"traceparent": "not a traceparent"},
        {"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"},
        {"traceparent": "00-abc\n-def-01"},
        {"traceparent": 7},
    ],
    ids=["garbage", "zero trace ID", "line break", "not a str"],
)
def test_a_text_map_the_propagator_cannot_read_gives_no_parent(tracer, spans, installed, text_map):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    with carrier.applied(text_map), tracer.start_as_current_span("child"):
        pass
    [child] = ended(spans, "child")
    assert child.parent is None


class _RaisingPropagator(TextMapPropagator):
    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        del carrier, context, getter
        msg = "extract is broken"
        raise RuntimeError(msg)

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        del carrier, context, setter
        msg = "inject is broken"
        raise RuntimeError(msg)

    @property
    def fields(self) -> set[str]:
        return {"x-broken"}


@pytest.fixture
def raising_propagator() -> Iterator[None]:
    configured = propagate.get_global_textmap()
    propagate.set_global_textmap(_RaisingPropagator())
    forget_reports()
    contextual_otel._reported.clear()
    yield
    propagate.set_global_textmap(configured)
    contextual_otel._reported.clear()


def test_a_propagator_that_raises_is_reported_once_and_the_work_goes_on(
    tracer, spans, installed, raising_propagator, caplog
):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    caplog.set_level(logging.WARNING, WARNINGS_LOGGER)
    with tracer.start_as_current_span("sender"):
        assert carrier.capture() is None
        assert carrier.capture() is None
    with carrier.applied({"x-broken": "1"}) as context:
        assert context is None
        with tracer.start_as_current_span("child"):
            pass
    with carrier.applied({"x-broken": "1"}):
        pass
    [child] = ended(spans, "child")
    assert child.parent is None
    messages = [record.getMessage() for record in caplog.records]
    said = "{} a carried span context; the work goes on without it. Later failures of this "
    said += "kind are not reported."
    assert messages == [
        said.format("OpenTelemetry's propagator raised writing"),
        said.format("OpenTelemetry's propagator raised reading"),
    ]
    assert [str(record.exc_info[1]) for record in caplog.records] == [  # type: ignore[index]
        "inject is broken",
        "extract is broken",
    ]


def test_the_carrier_pickles_by_reference(installed):
    import pickle  # noqa: PLC0415 (this test alone)

    carrier = carrier_named("opentelemetry")
    assert pickle.loads(pickle.dumps(carrier)) is carrier  # noqa: S301 (our own)
    assert repr(carrier) == "<contextual.integrations.opentelemetry carrier>"


def test_the_request_hook_says_what_it_is():
    hook = contextual_otel._SpanAttribute("request_id")
    assert repr(hook) == (
        "<contextual.integrations.opentelemetry request hook: span attribute 'request_id'>"
    )


def test_the_carried_context_is_otel_s_own_context_object(tracer, installed):
    carrier = carrier_named("opentelemetry")
    assert carrier is not None
    with tracer.start_as_current_span("sender"):
        text_map = carrier.capture()
    assert text_map is not None
    with carrier.applied(text_map) as context:
        assert context is otel_context.get_current()


# -- the module --------------------------------------------------------------------


def test_import_without_the_opentelemetry_api_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "contextual.integrations.opentelemetry")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(
        ImportError,
        match=r"needs the OpenTelemetry API.*pip install 'contextual\[opentelemetry\]'",
    ) as raised:
        importlib.import_module("contextual.integrations.opentelemetry")
    assert raised.value.name == "opentelemetry"
    assert isinstance(raised.value.__cause__, ModuleNotFoundError)
