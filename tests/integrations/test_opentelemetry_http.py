"""OpenTelemetry over HTTP: inject() and extract() carry the span context to a second service.

First in-process, on header dicts: what inject() writes and extract()
reads. Then real services on loopback, a WSGI app under waitress and an
ASGI app under uvicorn, each with two routes: ``/b/`` behind contextual's
middleware inside a server span that the service starts from the
incoming headers (what OpenTelemetry's WSGI and ASGI instrumentation do),
and ``/c/`` with no middleware, which applies ``extract()`` itself. The
tests send from inside a span of their own with each client contextual
hooks into (httpx, sync and async; requests; urllib with inject()) and
check the links of the spans the service ended: the server span is a
child of the sender's span and holds the request ID, the work span a
child of the server span, and the service's log line carries the work
span's IDs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from contextual import ContextFilter, get_request_id, request_context
from contextual._propagation.carriers import register_carrier, unregister_carrier
from contextual.integrations import asgi, wsgi
from contextual.integrations.http import (
    CarriedContext,
    extract,
    inject,
    install_httpx,
    install_requests,
)
from contextual.integrations.opentelemetry import install, trace_fields, uninstall
from support.carriers import FIELD, TestCarrier, named
from support.http_servers import TIMEOUT, forget_reports, running_asgi, running_wsgi, serve_lifespan
from support.middleware import WARNINGS_LOGGER
from support.otel import AsgiServerSpan, Spans, WsgiServerSpan, ended, hex_ids, link, make_tracer

RECEIVER_LOGGER = "tests.otel.http.receiver"
receiver_log = logging.getLogger(RECEIVER_LOGGER)


@pytest.fixture(scope="module")
def tracer_spans() -> tuple[trace.Tracer, Spans]:
    return make_tracer()


@pytest.fixture
def tracer(tracer_spans: tuple[trace.Tracer, Spans]) -> trace.Tracer:
    return tracer_spans[0]


@pytest.fixture
def spans(tracer_spans: tuple[trace.Tracer, Spans]) -> Spans:
    # One exporter for the module, as for the services: each test sees its own spans.
    tracer_spans[1].clear()
    return tracer_spans[1]


@pytest.fixture
def installed() -> Iterator[None]:
    install()
    yield
    uninstall()


@pytest.fixture(autouse=True)
def _fresh_reports() -> Iterator[None]:
    forget_reports()
    yield
    forget_reports()


def ids(span: trace.Span) -> tuple[str, str] | None:
    return hex_ids(span.get_span_context())


# -- inject() and extract(), in-process --------------------------------------------


def test_inject_adds_the_traceparent_of_the_current_span(tracer, installed):
    headers: dict[str, str] = {}
    inject(headers)
    assert headers == {}  # outside any span and request: nothing to send
    with request_context(request_id="r-1"), tracer.start_as_current_span("sender") as span:
        inject(headers)
    trace_id, span_id = ids(span)  # type: ignore[misc]
    flags = span.get_span_context().trace_flags
    assert headers == {
        "traceparent": f"00-{trace_id}-{span_id}-{flags:02x}",
        "X-Request-ID": "r-1",
    }


def test_inject_replaces_a_traceparent_of_any_case(tracer, installed):
    headers = {"TraceParent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    with tracer.start_as_current_span("sender") as span:
        inject(headers)
    assert list(headers) == ["traceparent"]
    assert headers["traceparent"].split("-")[1:3] == list(ids(span))  # type: ignore[arg-type]


def test_opentelemetry_baggage_is_not_sent_and_the_header_keeps_its_members(tracer, installed):
    headers = {"Baggage": "mine=1"}
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with request_context(request_id="r-2", user_id="ada"), tracer.start_as_current_span("s"):
            inject(headers, allow={"contextual.request": ["user_id"]})
    finally:
        otel_context.detach(token)
    assert set(headers) == {"traceparent", "X-Request-ID", "baggage"}
    assert headers["baggage"] == "mine=1,contextual.request|user_id=ada"


INCOMING_BAGGAGE = "contextual.request|user_id=mallory,tenant=evil,secret=x"
CALLER_TRACEPARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


def test_a_caller_s_baggage_goes_no_further_when_nothing_is_allowed(tracer, spans, installed):
    incoming = {
        "traceparent": CALLER_TRACEPARENT,
        "X-Request-ID": "r-7",
        "baggage": INCOMING_BAGGAGE,
    }
    carried = extract(incoming)
    assert carried == CarriedContext(
        "r-7", {}, {"opentelemetry": {"traceparent": CALLER_TRACEPARENT}}
    )
    outgoing: dict[str, str] = {}
    forwarded: dict[str, str] = {}
    with carried.applied():
        assert baggage.get_all() == {}
        inject(outgoing)
        with tracer.start_as_current_span("work"):
            inject(forwarded)
    # The caller's span context travels on; its baggage, nothing of it.
    assert outgoing == {"traceparent": CALLER_TRACEPARENT, "X-Request-ID": "r-7"}
    [work] = ended(spans, "work")
    assert link(work)["parent"] == ("1" * 32, "2" * 16)
    trace_id, span_id = link(work)["ids"]
    assert forwarded == {"traceparent": f"00-{trace_id}-{span_id}-01", "X-Request-ID": "r-7"}


def test_a_caller_s_baggage_goes_on_as_far_as_both_allow_lists_let_it(installed):
    allow = {"contextual.request": ["user_id"]}
    incoming = {"traceparent": CALLER_TRACEPARENT, "baggage": INCOMING_BAGGAGE}
    outgoing: dict[str, str] = {}
    with extract(incoming, allow=allow).applied():
        inject(outgoing, allow=allow)
        inject(outgoing, allow=allow)  # a retry: the same headers, once each
    assert outgoing["baggage"] == "contextual.request|user_id=mallory"
    assert outgoing["traceparent"] == CALLER_TRACEPARENT


@pytest.fixture
def trace_context_only() -> Iterator[None]:
    configured = propagate.get_global_textmap()
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    yield
    propagate.set_global_textmap(configured)


def test_with_a_propagator_of_trace_context_alone_the_span_still_travels(
    tracer, spans, installed, trace_context_only
):
    incoming = {
        "traceparent": CALLER_TRACEPARENT,
        "baggage": INCOMING_BAGGAGE,
        "X-Request-ID": "r-9",
    }
    carried = extract(incoming)
    assert carried.carriers == {"opentelemetry": {"traceparent": CALLER_TRACEPARENT}}
    outgoing: dict[str, str] = {}
    with carried.applied(), tracer.start_as_current_span("work"):
        inject(outgoing)
    [work] = ended(spans, "work")
    assert link(work)["parent"] == ("1" * 32, "2" * 16)
    assert outgoing == {
        "traceparent": "00-{}-{}-01".format(*link(work)["ids"]),
        "X-Request-ID": "r-9",
    }


@pytest.fixture
def baggage_carrier() -> Iterator[TestCarrier]:
    """A carrier that writes and reads a baggage header, as no carrier should."""
    carrier = named("with-baggage")
    carrier.fields = (FIELD, "Baggage")  # type: ignore[assignment]
    carrier.text_map = {FIELD: "v", "Baggage": "tenant=evil"}
    register_carrier(carrier)
    yield carrier
    unregister_carrier(carrier.name)
    carrier.fields, carrier.text_map = (FIELD,), None


def test_no_carrier_writes_or_reads_the_baggage_header(baggage_carrier, caplog):
    caplog.set_level(logging.WARNING, WARNINGS_LOGGER)
    headers = {"baggage": "mine=1"}
    with request_context(request_id="r-8", user_id="ada"):
        inject(headers, allow={"contextual.request": ["user_id"]})
        inject(headers, allow={"contextual.request": ["user_id"]})
    assert headers == {
        "baggage": "mine=1,contextual.request|user_id=ada",
        FIELD: "v",
        "X-Request-ID": "r-8",
    }
    said = (
        "Left the 'Baggage' header that the carrier 'with-baggage' captured out of the "
        "outgoing request: the baggage header carries only the values that the allow-list "
        "lets out. Later problems of this kind are not reported."
    )
    assert [record.getMessage() for record in caplog.records] == [said]
    assert extract(headers).carriers == {"with-baggage": {FIELD: "v"}}


def test_without_install_inject_sends_no_span_context(tracer):
    headers: dict[str, str] = {}
    with tracer.start_as_current_span("sender"):
        inject(headers)
    assert headers == {}


def test_extract_takes_the_propagator_s_headers_whatever_their_case(tracer, spans, installed):
    with tracer.start_as_current_span("sender") as sender:
        sent: dict[str, str] = {}
        inject(sent)
    headers = {"TRACEPARENT": sent["traceparent"], "X-Request-ID": "r-3", "Other": "x"}
    carried = extract(headers)
    assert carried == CarriedContext(
        "r-3", {}, {"opentelemetry": {"traceparent": sent["traceparent"]}}
    )
    with carried.applied() as request, tracer.start_as_current_span("child"):
        assert request.request_id == "r-3"
    [child] = ended(spans, "child")
    assert link(child)["parent"] == ids(sender)


def test_headers_without_the_propagator_s_carry_nothing_for_it(installed):
    assert extract({"X-Request-ID": "r-6"}) == CarriedContext("r-6", {})
    assert extract({"X-Request-ID": "r-6"}).carriers == {}


def test_repeated_headers_are_joined_as_http_joins_them(installed):
    headers = {"tracestate": "a=1", "TraceState": "b=2"}
    assert extract(headers).carriers == {"opentelemetry": {"tracestate": "a=1,b=2"}}


def test_tracestate_travels_with_the_traceparent(tracer, spans, installed):
    state = trace.TraceState([("vendor", "value")])
    sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    parent = trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=sampled, trace_state=state)
    headers: dict[str, str] = {}
    with trace.use_span(trace.NonRecordingSpan(parent)):
        inject(headers)
    assert headers["tracestate"] == "vendor=value"
    with extract(headers).applied(), tracer.start_as_current_span("child"):
        pass
    [child] = ended(spans, "child")
    assert child.parent is not None
    assert child.parent.trace_state == state
    assert child.context.trace_state == state


def test_without_carriers_extract_carries_none_of_their_headers():
    headers = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert extract(headers) == CarriedContext(None, {})
    assert extract(headers).carriers == {}


def test_applied_ignores_a_carrier_not_registered_here(tracer, spans):
    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    carried = CarriedContext("r-4", {}, {"opentelemetry": {"traceparent": traceparent}})
    with carried.applied(), tracer.start_as_current_span("child"):
        assert get_request_id() == "r-4"
    [child] = ended(spans, "child")
    assert child.parent is None


def test_a_malformed_traceparent_gives_no_parent_and_no_error(tracer, spans, installed):
    headers = {"traceparent": "00-not-a-span-01", "tracestate": "=,="}
    with extract(headers).applied(), tracer.start_as_current_span("child"):
        pass
    [child] = ended(spans, "child")
    assert child.parent is None


class _BadHeaderPropagator(TextMapPropagator):
    """Writes what no HTTP header can carry, and then the usual traceparent."""

    def __init__(self, bad: dict[str, str]) -> None:
        self.bad = bad

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        del getter  # the default one reads dicts
        return TraceContextTextMapPropagator().extract(carrier, context)

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        del setter  # the default one writes dicts
        carrier.update(self.bad)
        TraceContextTextMapPropagator().inject(carrier, context)

    @property
    def fields(self) -> set[str]:
        return {"traceparent", *self.bad}


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"x-state": "line\nbreak"}, "a value for 'x-state' that is not printable ASCII"),
        ({"two words": "v"}, "the key 'two words', which is not an HTTP field name"),
        ({"x-state": "v" * 9000}, "over the limit of 8192 bytes for one carrier's text map"),
    ],
    ids=["line break", "not a header name", "too large"],
)
def test_a_propagator_s_headers_that_http_cannot_carry_are_left_out_once(
    tracer, installed, caplog, bad, match
):
    configured = propagate.get_global_textmap()
    propagate.set_global_textmap(_BadHeaderPropagator(bad))
    caplog.set_level(logging.WARNING, WARNINGS_LOGGER)
    try:
        first: dict[str, str] = {}
        second: dict[str, str] = {}
        with request_context(request_id="r-5"), tracer.start_as_current_span("sender"):
            inject(first)
            inject(second)
    finally:
        propagate.set_global_textmap(configured)
    assert first == second == {"X-Request-ID": "r-5"}
    [record] = caplog.records
    assert record.getMessage().startswith(
        "Left a carrier's headers out of the outgoing request: the carrier 'opentelemetry' "
    )
    assert match in record.getMessage()


# -- a second service, on loopback -------------------------------------------------


class LogLines(logging.Handler):
    """Keep each line of the receiver's logger with its request ID and trace fields."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(ContextFilter(sources=[trace_fields]))
        self.lines: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.__dict__
        self.lines.append(
            {
                "message": record.getMessage(),
                "request_id": fields["request_id"],
                "trace_id": fields["trace_id"],
                "span_id": fields["span_id"],
            }
        )


@pytest.fixture(scope="module")
def log_lines() -> Iterator[LogLines]:
    handler = LogLines()
    receiver_log.addHandler(handler)
    receiver_log.setLevel(logging.INFO)
    yield handler
    receiver_log.removeHandler(handler)


def _token(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _do_work(tracer: trace.Tracer, route: str, path: str) -> None:
    token = _token(path)
    with tracer.start_as_current_span(f"{route} work {token}"):
        receiver_log.info("%s work %s", route, token)


def _forwarded() -> bytes:
    """What a service would send on to a third one, and OpenTelemetry's baggage there, as JSON."""
    headers: dict[str, str] = {}
    inject(headers)
    return json.dumps({"headers": headers, "otel_baggage": dict(baggage.get_all())}).encode()


class WsgiService:
    """/b/<token>: server span, middleware, work span. /c/<token>: extract(), work span.

    /d/<token>: the context OpenTelemetry's instrumentation attaches (the
    caller's span context and baggage), middleware, and the headers that
    inject() would send on from there.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.b = WsgiServerSpan(wsgi.RequestContextMiddleware(self.work), tracer)
        self.d = wsgi.RequestContextMiddleware(self.forward)

    def forward(self, _environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [_forwarded()]

    def work(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        _do_work(self.tracer, "b", environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path.startswith("/b/"):
            return self.b(environ, start_response)
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if path.startswith("/d/"):
            token = otel_context.attach(propagate.extract(headers))
            try:
                body = self.d(environ, start_response)
                return [b"".join(body)]
            finally:
                otel_context.detach(token)
        if path.startswith("/c/"):
            with extract(headers).applied():
                _do_work(self.tracer, "c", path)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


class AsgiService:
    """The same three routes, on ASGI."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.b = AsgiServerSpan(asgi.RequestContextMiddleware(self.work), tracer)
        self.d = asgi.RequestContextMiddleware(self.forward)

    async def forward(self, _scope: Any, _receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": _forwarded()})

    async def work(self, scope: Any, _receive: Any, send: Any) -> None:
        _do_work(self.tracer, "b", scope["path"])
        await _ok(send)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        path = scope["path"]
        if path.startswith("/b/"):
            await self.b(scope, receive, send)
            return
        headers = {key.decode(): value.decode() for key, value in scope["headers"]}
        if path.startswith("/d/"):
            token = otel_context.attach(propagate.extract(headers))
            try:
                await self.d(scope, receive, send)
            finally:
                otel_context.detach(token)
            return
        with extract(headers).applied():
            _do_work(self.tracer, "c", path)
        await _ok(send)


async def _ok(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def wsgi_url(tracer_spans: tuple[trace.Tracer, Spans], log_lines: LogLines) -> Iterator[str]:
    with running_wsgi(WsgiService(tracer_spans[0]), threads=4) as url:
        yield url


@pytest.fixture(scope="module")
def asgi_url(tracer_spans: tuple[trace.Tracer, Spans], log_lines: LogLines) -> Iterator[str]:
    with running_asgi(AsgiService(tracer_spans[0])) as url:
        yield url


@pytest.fixture(params=["wsgi", "asgi"])
def service_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def _send_httpx(url: str) -> int:
    with httpx.Client(timeout=TIMEOUT) as client:
        install_httpx(client)
        return client.get(url).status_code


def _send_httpx_async(url: str) -> int:
    async def main() -> int:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            install_httpx(client)
            return (await client.get(url)).status_code

    # asyncio.run copies this context: the sender's span and request go along.
    return asyncio.run(main())


def _send_requests(url: str) -> int:
    with requests.Session() as session:
        install_requests(session)
        return session.get(url, timeout=TIMEOUT).status_code


def _send_urllib(url: str) -> int:
    headers: dict[str, str] = {}
    inject(headers)
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (loopback, ours)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (ours)
        return int(response.status)


SENDERS: dict[str, Callable[[str], int]] = {
    "httpx": _send_httpx,
    "httpx async": _send_httpx_async,
    "requests": _send_requests,
    "urllib + inject()": _send_urllib,
}


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("sender", SENDERS)
def test_the_service_s_server_span_is_a_child_of_the_sender_s_span_and_holds_the_request_id(
    tracer, spans, log_lines, service_url, sender
):
    token = uuid.uuid4().hex[:12]
    with request_context(request_id=f"r-{token}"), tracer.start_as_current_span("send") as span:
        assert SENDERS[sender](f"{service_url}/b/{token}") == 200
    [server] = spans.wait_for(f"server /b/{token}")
    [work] = spans.wait_for(f"b work {token}")
    assert link(server)["parent"] == ids(span)
    assert server.kind == trace.SpanKind.SERVER
    assert server.attributes == {"request_id": f"r-{token}"}
    assert link(work)["parent"] == link(server)["ids"]
    trace_id, span_id = link(work)["ids"]
    assert [line for line in log_lines.lines if line["message"] == f"b work {token}"] == [
        {
            "message": f"b work {token}",
            "request_id": f"r-{token}",
            "trace_id": trace_id,
            "span_id": span_id,
        }
    ]


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("sender", SENDERS)
def test_work_under_extract_applied_is_a_child_of_the_sender_s_span(
    tracer, spans, log_lines, service_url, sender
):
    token = uuid.uuid4().hex[:12]
    with request_context(request_id=f"r-{token}"), tracer.start_as_current_span("send") as span:
        assert SENDERS[sender](f"{service_url}/c/{token}") == 200
    [work] = spans.wait_for(f"c work {token}")
    assert link(work)["parent"] == ids(span)
    trace_id, span_id = link(work)["ids"]
    assert [line for line in log_lines.lines if line["message"] == f"c work {token}"] == [
        {
            "message": f"c work {token}",
            "request_id": f"r-{token}",
            "trace_id": trace_id,
            "span_id": span_id,
        }
    ]


def test_a_request_sent_outside_any_span_starts_a_new_trace(
    spans, log_lines, installed, service_url
):
    token = uuid.uuid4().hex[:12]
    assert _send_httpx(f"{service_url}/b/{token}") == 200
    [server] = spans.wait_for(f"server /b/{token}")
    assert server.parent is None
    # A fresh request ID, which the middleware made and put on the span.
    assert len(server.attributes["request_id"]) == 32  # type: ignore[arg-type, index]


def test_without_install_the_service_s_spans_have_no_parent_and_no_request_id(
    tracer, spans, log_lines, service_url
):
    token = uuid.uuid4().hex[:12]
    with request_context(request_id=f"r-{token}"), tracer.start_as_current_span("send"):
        assert _send_httpx(f"{service_url}/b/{token}") == 200
    [server] = spans.wait_for(f"server /b/{token}")
    assert server.parent is None
    assert server.attributes == {}


@pytest.mark.usefixtures("installed")
def test_a_service_sends_on_the_caller_s_span_context_and_none_of_its_baggage(tracer, service_url):
    token = uuid.uuid4().hex[:12]
    with (
        request_context(request_id=f"r-{token}"),
        tracer.start_as_current_span("send") as span,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        install_httpx(client)
        response = client.get(f"{service_url}/d/{token}", headers={"baggage": INCOMING_BAGGAGE})
    seen = response.json()
    # OpenTelemetry's instrumentation took the caller's baggage in...
    assert seen["otel_baggage"] == {
        "contextual.request|user_id": "mallory",
        "tenant": "evil",
        "secret": "x",
    }
    # ...and contextual sends none of it on: the span context, and the request ID.
    trace_id, span_id = ids(span)  # type: ignore[misc]
    flags = span.get_span_context().trace_flags
    assert seen["headers"] == {
        "traceparent": f"00-{trace_id}-{span_id}-{flags:02x}",
        "X-Request-ID": f"r-{token}",
    }
