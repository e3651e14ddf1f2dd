"""OpenTelemetry across processes: a span made in a pool worker is a child of the sender's.

The worker starts its span with an SDK provider of its own and returns
the IDs of the span and of its parent (tests/support/otel.py); the test
checks them against the span it ended here. Every start method: under
spawn and forkserver the worker imports the integration to read the
carried span context, and never calls install().
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

from contextual import ContextProcessPoolExecutor, request_context
from contextual.integrations.opentelemetry import install, uninstall
from support.otel import child_span, ended, link, make_tracer

START_METHODS = [
    m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()
]


@pytest.fixture
def tracer_spans() -> tuple[trace.Tracer, Any]:
    return make_tracer()


@pytest.fixture
def installed() -> Iterator[None]:
    install()
    yield
    uninstall()


def pool(method: str, workers: int = 1) -> ContextProcessPoolExecutor:
    return ContextProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context(method)
    )


@pytest.mark.parametrize("method", START_METHODS)
def test_a_span_in_a_pool_task_is_a_child_of_the_submitting_span(method, tracer_spans, installed):
    tracer, spans = tracer_spans
    with pool(method) as executor:
        with request_context(request_id="r-pool"), tracer.start_as_current_span("sender"):
            seen = executor.submit(child_span, "one").result(timeout=30)
        # The next task on the same worker, sent outside any span, has no parent.
        after = executor.submit(child_span, "two").result(timeout=30)
    [sender] = ended(spans, "sender")
    assert seen["parent"] == link(sender)["ids"]
    assert seen["ids"][0] == link(sender)["ids"][0]
    assert seen["ids"][1] != link(sender)["ids"][1]
    assert seen["fields"] == {"trace_id": seen["ids"][0], "span_id": seen["ids"][1]}
    assert seen["request_id"] == "r-pool"
    assert after["parent"] is None
    assert after["request_id"] is None


def test_without_install_the_span_context_stays_behind(tracer_spans):
    tracer, _ = tracer_spans
    with pool(START_METHODS[0]) as executor, tracer.start_as_current_span("sender"):
        seen = executor.submit(child_span, "alone").result(timeout=30)
    assert seen["parent"] is None


def test_every_task_of_map_is_a_child_of_the_sender(tracer_spans, installed):
    tracer, spans = tracer_spans
    with pool(START_METHODS[0], workers=2) as executor, tracer.start_as_current_span("sender"):
        seen = list(executor.map(child_span, ["a", "b", "c"], timeout=30))
    [sender] = ended(spans, "sender")
    assert [task["parent"] for task in seen] == [link(sender)["ids"]] * 3


def test_opentelemetry_baggage_stays_behind_and_the_span_context_travels(tracer_spans, installed):
    tracer, _ = tracer_spans
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with pool(START_METHODS[0]) as executor, tracer.start_as_current_span("sender"):
            seen = executor.submit(_baggage_and_parent).result(timeout=30)
    finally:
        otel_context.detach(token)
    assert seen == {"baggage": {}, "has_parent": True}


def _baggage_and_parent() -> dict[str, Any]:
    return {
        "baggage": dict(baggage.get_all()),
        "has_parent": trace.get_current_span().get_span_context().is_valid,
    }


def test_a_span_context_too_large_to_carry_is_refused_at_submit(installed):
    # 32 entries of 500 bytes: a tracestate the W3C format allows, but no
    # HTTP header of 8192 bytes could carry.
    state = trace.TraceState([(f"k{n}-" + "k" * 240, "v" * 256) for n in range(32)])
    sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    parent = trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=sampled, trace_state=state)
    with (
        pool(START_METHODS[0]) as executor,
        trace.use_span(trace.NonRecordingSpan(parent)),
        pytest.raises(ValueError, match=r"'opentelemetry' captured \d+ bytes, over the limit"),
    ):
        executor.submit(child_span, "too large")
