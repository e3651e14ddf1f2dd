"""The real OpenTelemetry SDK for the tests: tracers that export to memory, and server spans.

No test sets OpenTelemetry's global tracer provider (it can be set once per
process): each makes a provider of its own and starts spans with its
tracer. Spans started anywhere take their parent from OpenTelemetry's
current context, whichever provider made them, so that is what the tests
check: the parent links.

The task functions run in child processes (they are imported there by
name): they start a span with a provider of the child's own and return
what the test needs to check its parent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contextual import get_request_id
from contextual.integrations.opentelemetry import trace_fields


class Spans(InMemorySpanExporter):
    """The in-memory exporter, which also lets a test wait for a span that ends in a server."""

    def __init__(self) -> None:
        super().__init__()
        self._exported = threading.Condition()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        with self._exported:
            self._exported.notify_all()
        return result

    def wait_for(self, name: str, count: int = 1, timeout: float = 20.0) -> list[ReadableSpan]:
        """Return the ended spans of this name once there are ``count`` of them."""
        with self._exported:
            done = self._exported.wait_for(lambda: len(ended(self, name)) >= count, timeout)
        assert done, f"{count} span(s) named {name!r} did not end within {timeout} s"
        return ended(self, name)


def make_tracer(name: str = "tests.otel") -> tuple[trace.Tracer, Spans]:
    """Return a tracer of a new SDK provider, and the exporter that receives its ended spans."""
    exporter = Spans()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer(name), exporter


def hex_ids(span_context: trace.SpanContext | None) -> tuple[str, str] | None:
    """Return a span context's trace and span IDs as trace_fields() writes them."""
    if span_context is None:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def link(span: ReadableSpan) -> dict[str, Any]:
    """What the tests check of an ended span: its IDs and its parent's."""
    return {"ids": hex_ids(span.context), "parent": hex_ids(span.parent)}


def ended(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The ended spans of this name, oldest first."""
    return [span for span in exporter.get_finished_spans() if span.name == name]


# -- in child processes ------------------------------------------------------------


def child_span(tag: str) -> dict[str, Any]:
    """Start a span here, in the context the task runs in; report its link and fields."""
    tracer = TracerProvider().get_tracer("tests.otel.child")
    with tracer.start_as_current_span(f"child {tag}") as span:
        fields = trace_fields()
        context = span.get_span_context()
        parent = span.parent  # type: ignore[attr-defined]
        return {
            "ids": hex_ids(context),
            "parent": hex_ids(parent),
            "fields": fields,
            "request_id": get_request_id(),
        }


# -- servers -----------------------------------------------------------------------


class WsgiServerSpan:
    """What OpenTelemetry's WSGI instrumentation does: a server span around the app.

    The caller's span context comes from the headers, through the
    configured propagator; the span is current while the app runs and
    its body is read.
    """

    def __init__(self, app: Any, tracer: trace.Tracer) -> None:
        self.app = app
        self.tracer = tracer

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        parent = propagate.extract(headers)
        name = f"server {environ['PATH_INFO']}"
        with self.tracer.start_as_current_span(name, parent, kind=trace.SpanKind.SERVER):
            body = self.app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


class AsgiServerSpan:
    """What OpenTelemetry's ASGI instrumentation does: a server span around the app."""

    def __init__(self, app: Any, tracer: trace.Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope["headers"]
        }
        parent = propagate.extract(headers)
        name = f"server {scope['path']}"
        with self.tracer.start_as_current_span(name, parent, kind=trace.SpanKind.SERVER):
            await self.app(scope, receive, send)
