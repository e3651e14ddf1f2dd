"""OpenTelemetry: the trace and span IDs in every log line, and spans that follow the work.

With OpenTelemetry tracing, a log line is most useful when it names the
span it was written in: then the trace viewer shows the line with its
span, and a grep for the trace ID finds every line of the request, in
every process. Give trace_fields to the ContextFilter and each record gets
the trace_id and span_id of the span current where it is logged ("-"
outside any span), in a ContextExecutor thread too. After install(), a
ContextProcessPoolExecutor task carries the span context to the worker
process, where a span it starts is a child of the request's span, and an
outgoing HTTP request carries it in its traceparent header.

The tracer makes IDs in order here so that the output is the same on
every run; leave id_generator out and the SDK makes random ones.

Run: python examples/opentelemetry_logs.py (needs opentelemetry-sdk)
"""

from __future__ import annotations

import io
import itertools
import logging
import multiprocessing
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator

from contextual import ContextExecutor, ContextFilter, ContextProcessPoolExecutor, request_context
from contextual.integrations.http import inject
from contextual.integrations.opentelemetry import install, trace_fields

log = logging.getLogger("examples.shop")
FORMAT = "[%(trace_id)s %(span_id)s %(request_id)s] %(message)s"


class InOrder(IdGenerator):
    """The trace ID and span IDs of the W3C traceparent example, then the next span IDs."""

    def __init__(self, first_span_id: int) -> None:
        self._span_ids = itertools.count(first_span_id)

    def generate_trace_id(self) -> int:
        """Return the trace ID of the W3C example."""
        return 0x4BF92F3577B34DA6A3CE929D0E0E4736

    def generate_span_id(self) -> int:
        """Return the next span ID."""
        return next(self._span_ids)


def log_to(stream: io.TextIOBase | None) -> None:
    """Send the shop's records to ``stream`` (stdout by default), with the trace fields."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.addFilter(ContextFilter(sources=[trace_fields]))
    handler.setFormatter(logging.Formatter(FORMAT))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def load_orders() -> int:
    """Work on a pool thread: it logs in the request's span without being told it."""
    log.info("thread: loading orders")
    return 3


def render_invoice(order: int) -> tuple[str, str | None, str]:
    """Work in another process: start a span there, log in it, report its parent."""
    lines = io.StringIO()
    log_to(lines)
    tracer = TracerProvider(id_generator=InOrder(0xA1)).get_tracer("examples.invoices")
    with tracer.start_as_current_span("render invoice") as span:
        log.info("process: rendering the invoice for order %d", order)
        parent = span.parent  # type: ignore[attr-defined]
    span_id = format(span.get_span_context().span_id, "016x")
    return lines.getvalue(), None if parent is None else format(parent.span_id, "016x"), span_id


def main() -> None:
    """Serve one request in a span; hand work to a thread, a process and another service."""
    log_to(None)
    install()  # the span context travels with process-pool tasks and HTTP requests
    tracer = TracerProvider(id_generator=InOrder(0x00F067AA0BA902B7)).get_tracer("examples.shop")
    spawn = multiprocessing.get_context("spawn")  # the worker shares nothing with this process
    log.info("shop starting")
    with (
        ContextExecutor(max_workers=1) as threads,
        ContextProcessPoolExecutor(max_workers=1, mp_context=spawn) as processes,
        request_context(request_id="req-1"),
        tracer.start_as_current_span("GET /orders"),
    ):
        log.info("GET /orders")
        threads.submit(load_orders).result()
        lines, parent, span_id = processes.submit(render_invoice, 1).result()
        sys.stdout.write(lines)
        is_child = parent == trace_fields()["span_id"]
        print(f"  the process's span {span_id} is a child of {parent}: {is_child}")
        headers: dict[str, str] = {}
        inject(headers)
        print(f"  an outgoing request carries traceparent: {headers['traceparent']}")
    log.info("shop stopped")


if __name__ == "__main__":
    main()
