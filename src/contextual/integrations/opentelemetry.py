"""OpenTelemetry: trace IDs in log lines, the request ID on spans, spans across processes.

Needs ``opentelemetry-api`` (the ``opentelemetry`` extra: ``pip install
"contextual[opentelemetry]"``); the SDK, exporters and instrumentations are
yours to choose. Two independent parts:

* :func:`trace_fields` is a *source* of log fields: give it to a
  :class:`~contextual.ContextFilter`, the structlog processor or the loguru
  patcher, and every line gets the ``trace_id`` and ``span_id`` of the span
  current where it is logged::

      from contextual import ContextFilter
      from contextual.integrations.opentelemetry import trace_fields

      handler.addFilter(ContextFilter(sources=[trace_fields]))
      handler.setFormatter(logging.Formatter("%(trace_id)s %(span_id)s %(message)s"))

* :func:`install`, once at startup, puts the request ID of every request
  the WSGI, ASGI, Django and Flask middleware open on the span that is
  current there (the server span of OpenTelemetry's instrumentation), and
  makes the span context travel wherever contextual carries context out of
  the process: a :class:`~contextual.ContextProcessPoolExecutor` task,
  :func:`~contextual.integrations.http.inject` and
  :func:`~contextual.integrations.http.extract` (so the httpx and requests
  hooks too), and Celery tasks. Spans made there are children of the span
  that sent the work. The span context alone travels: OpenTelemetry's
  baggage is neither sent nor taken from what arrives, so the ``baggage``
  header carries only what an allow-list of
  :mod:`~contextual.integrations.http` lets through, and a caller's
  baggage never goes on to the services called from there. Baggage stays
  OpenTelemetry's business: its own instrumentations propagate it, if you
  use them.

Within one process nothing is needed: OpenTelemetry keeps the current span
in a ContextVar, which :func:`~contextual.capture` copies like any other, so
a :class:`~contextual.ContextExecutor` task, a
:class:`~contextual.ContextThread` and :func:`~contextual.to_thread` already
see the span of the code that handed them the work.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Final, final

from contextual._core.fork import renew_locks_after_fork
from contextual._propagation.carriers import register_carrier, unregister_carrier
from contextual._propagation.wire import Reported

from ._extra import missing_library
from ._headers import logger, on_request_opened

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from opentelemetry.propagators.textmap import TextMapPropagator

__all__ = ["install", "trace_fields", "uninstall"]

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError as exc:
    raise missing_library(__name__, "the OpenTelemetry API", "opentelemetry", exc) from exc

# What trace_fields() gives outside a valid span.
_NO_TRACE: Final = "-"

# One attribute lookup fewer on every log line.
_get_current_span: Final = trace.get_current_span

# The span context trace_fields() formatted last, and its two IDs: the lines
# of one span reuse them, which halves the cost of each (a SpanContext is
# immutable, one object per span). Replaced whole, so a thread reads a
# consistent triple without a lock; threads that race only miss the cache.
_last: tuple[object, str, str] = (None, _NO_TRACE, _NO_TRACE)


def trace_fields() -> dict[str, str]:
    """Return the ``trace_id`` and ``span_id`` of the current span, as log fields.

    The IDs are lowercase hex, 32 and 16 digits, as OpenTelemetry's
    exporters and the W3C ``traceparent`` header write them; both are
    ``"-"`` where no valid span is current (outside any span, or in a
    non-recording invalid one). A source for the ``sources=`` option of
    :class:`~contextual.ContextFilter`,
    :class:`~contextual.integrations.structlog.add_context` and
    :class:`~contextual.integrations.loguru.patch_context`: it runs for every
    record, in the code that logs, so each line gets the span of its own
    thread or task. It never raises, and needs no :func:`install`.

    Example:
        A span with the IDs of the W3C ``traceparent`` example (your
        tracer's spans have IDs of their own):

        >>> from opentelemetry import trace
        >>> from contextual.integrations.opentelemetry import trace_fields
        >>> trace_fields()
        {'trace_id': '-', 'span_id': '-'}
        >>> ids = trace.SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, False)
        >>> with trace.use_span(trace.NonRecordingSpan(ids)):
        ...     trace_fields()
        {'trace_id': '4bf92f3577b34da6a3ce929d0e0e4736', 'span_id': '00f067aa0ba902b7'}

    .. versionadded:: 0.2.0
    """
    global _last  # noqa: PLW0603 (replaced whole: see above)
    try:
        context = _get_current_span().get_span_context()
        last = _last
        if context is not last[0]:
            if not context.is_valid:
                return {"trace_id": _NO_TRACE, "span_id": _NO_TRACE}
            trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
            last = _last = (context, trace_id, span_id)
    except Exception:  # noqa: BLE001 (a broken span must not cost the log line)
        return {"trace_id": _NO_TRACE, "span_id": _NO_TRACE}
    return {"trace_id": last[1], "span_id": last[2]}


# -- install -----------------------------------------------------------------------


def install(*, span_attribute: str | None = "request_id", carry: bool = True) -> None:
    """Put the request ID on request spans, and carry the span context out of the process.

    Call it once at startup, in every process that serves requests or runs
    carried work: the web app, and the Celery worker (which applies only
    the carriers installed there). Calling it again replaces the options of
    the call before; :func:`uninstall` undoes it.

    **The request ID on the span.** Every request that the WSGI, ASGI,
    Django or Flask middleware of contextual opens sets the attribute
    ``span_attribute`` to its request ID on the span current as it opens,
    when that span is recording: the server span of OpenTelemetry's
    instrumentation, when its span starts first. OpenTelemetry's WSGI and
    ASGI middleware wrapped around contextual's, and its Django
    instrumentation (its middleware goes first), start it first; its Flask
    instrumentation starts it in a ``before_request`` hook, too late: the
    how-to :doc:`/howto/opentelemetry` shows what to do there. Without a
    recording span, nothing is set.

    **The span context across processes.** With ``carry``, the span
    context current where work is handed over travels with it, written and
    read by OpenTelemetry's configured propagator (the one
    ``opentelemetry.propagate.inject()`` and ``extract()`` use: W3C
    ``traceparent`` and ``tracestate``, unless you configured another, such
    as B3):

    * a :class:`~contextual.ContextProcessPoolExecutor` task runs with it
      current, under every start method (the worker imports this module,
      and uses the propagator configured there: configure the same one,
      with ``OTEL_PROPAGATORS`` or in the pool's ``initializer``, if it is
      not the default);
    * :func:`~contextual.integrations.http.inject` (and so the hooks of
      :func:`~contextual.integrations.http.install_httpx` and
      :func:`~contextual.integrations.http.install_requests`) adds its
      headers, and :meth:`CarriedContext.applied()
      <contextual.integrations.http.CarriedContext.applied>` makes what
      :func:`~contextual.integrations.http.extract` found current;
    * a task published through a Celery app that
      :func:`contextual.integrations.celery.install` set up runs with it
      current, when the worker called this function too.

    A span started there is a child of the span that sent the work.
    OpenTelemetry's baggage does not travel, whichever propagator writes
    it (the default one's ``baggage`` header, Jaeger's ``uberctx-``
    headers): contextual writes the current span alone, reads the span
    alone, and leaves the baggage current there as it was. Over HTTP, the
    ``baggage`` header is contextual's, bounded by the allow-lists of
    :func:`~contextual.integrations.http.inject` and
    :func:`~contextual.integrations.http.extract`: what a caller sends
    in it goes on only where both allow it (``extract()``'s into a store,
    ``inject()``'s out of it again). To share a value with the work, put
    it in a store (and allow it, for HTTP); baggage you put in
    OpenTelemetry's context stays OpenTelemetry's, for its own
    instrumentations to propagate.

    What can't be written or read (a propagator that raises, a malformed
    ``traceparent``) is skipped: the work runs without a parent, and a
    propagator that raises is reported once on the
    ``contextual.integrations`` logger.

    Args:
        span_attribute: The name of the span attribute that holds the
            request ID, or ``None`` to set none.
        carry: Whether the span context travels with carried work.

    Raises:
        TypeError: ``span_attribute`` is not a str or ``None``, or
            ``carry`` is not a bool.
        ValueError: ``span_attribute`` is empty.

    Example:
        At startup, before the app serves its first request::

            from contextual.integrations import opentelemetry as contextual_otel

            contextual_otel.install()

    .. versionadded:: 0.2.0
    """
    _check_options(span_attribute, carry)
    global _remove_hook  # noqa: PLW0603 (the one installation of the process)
    with _install_lock:
        _uninstall()
        if span_attribute is not None:
            _remove_hook = on_request_opened(_SpanAttribute(span_attribute))
        if carry:
            register_carrier(_CARRIER)


def uninstall() -> None:
    """Undo :func:`install`: no attribute on spans, no span context carried.

    Without an installation, it does nothing.

    .. versionadded:: 0.2.0
    """
    with _install_lock:
        _uninstall()


def _check_options(span_attribute: object, carry: object) -> None:
    if span_attribute is not None and not isinstance(span_attribute, str):
        msg = (
            f"span_attribute must be the name of a span attribute (a str such as "
            f"'request_id') or None, got {type(span_attribute).__name__} {span_attribute!r}."
        )
        raise TypeError(msg)
    if span_attribute == "":
        msg = "span_attribute must not be empty: name the attribute, or pass None to set none."
        raise ValueError(msg)
    if not isinstance(carry, bool):
        msg = f"carry must be True or False, got {type(carry).__name__} {carry!r}."
        raise TypeError(msg)


_install_lock = threading.Lock()
renew_locks_after_fork(globals(), "_install_lock")
# Removes the request hook of the installation in place, if it has one.
_remove_hook: Callable[[], None] | None = None


def _uninstall() -> None:
    global _remove_hook  # noqa: PLW0603 (the one installation of the process)
    if _remove_hook is not None:
        _remove_hook()
        _remove_hook = None
    unregister_carrier(_CARRIER.name)


@final
class _SpanAttribute:
    """The request hook: sets the request ID on the current span, when it records."""

    __slots__ = ("_attribute",)

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def __repr__(self) -> str:
        return f"<{__name__} request hook: span attribute {self._attribute!r}>"

    def __call__(self, request_id: str) -> None:
        span = _get_current_span()
        if span.is_recording():
            span.set_attribute(self._attribute, request_id)


# -- the carrier -------------------------------------------------------------------

# Each kind of propagator failure, reported once per process.
_reported: Final = Reported()

# OpenTelemetry's baggage header: never carried (see _Carrier).
_BAGGAGE: Final = "baggage"


@final
class _Carrier:
    """OpenTelemetry's current span context, through its configured propagator.

    The span context alone: never OpenTelemetry's baggage, which the
    propagator would otherwise write and read beside it (the W3C
    ``baggage`` header of the default propagator, the ``uberctx-`` headers
    of Jaeger's). Baggage that came in with a request would go out with
    every request sent from there, past the allow-lists that bound what
    contextual carries between services.

    A module-level singleton that pickles by reference: a process-pool
    payload names it, and the worker imports this module to read it.
    """

    __slots__ = ()

    @property
    def name(self) -> str:
        """``"opentelemetry"``."""
        return "opentelemetry"

    @property
    def fields(self) -> frozenset[str]:
        """The header names of the configured propagator, but ``baggage``."""
        return _span_fields(propagate.get_global_textmap())

    def __repr__(self) -> str:
        return f"<{__name__} carrier>"

    def __reduce__(self) -> str:
        return "_CARRIER"

    def capture(self) -> dict[str, str] | None:
        """Return what the configured propagator writes for the current span, and only that."""
        text_map: dict[str, str] = {}
        try:
            propagator = propagate.get_global_textmap()
            # The current span in a context of its own: no propagator finds
            # any baggage to write there, whatever headers it writes it in.
            span_only = trace.set_span_in_context(_get_current_span(), otel_context.Context())
            propagator.inject(text_map, context=span_only)
            text_map = _picked(text_map, _span_fields(propagator))
        except Exception:  # noqa: BLE001 (reported; the work goes on without it)
            _report("inject", "writing")
            return None
        return text_map or None

    @contextlib.contextmanager
    def applied(self, carried: Mapping[str, str], /) -> Iterator[object]:
        """Make the span context the propagator reads from ``carried`` current, for the block.

        Only the span context: the current baggage stays as it is, whatever
        ``carried`` holds.
        """
        try:
            propagator = propagate.get_global_textmap()
            text_map = _picked(carried, _span_fields(propagator))
            current = otel_context.get_current()
            # Over the current context: without a (valid) traceparent, the
            # current span stays.
            span = trace.get_current_span(propagator.extract(text_map, context=current))
            context = trace.set_span_in_context(span, current)
        except Exception:  # noqa: BLE001 (reported; the work goes on without it)
            _report("extract", "reading")
            context = None
        if context is None:
            yield None
            return
        token = otel_context.attach(context)
        try:
            yield context
        finally:
            otel_context.detach(token)


def _span_fields(propagator: TextMapPropagator) -> frozenset[str]:
    """Return the header names ``propagator`` writes and reads, but ``baggage``, as it spells them.

    Its own spelling: its ``extract()`` looks them up so (AWS X-Ray's
    ``X-Amzn-Trace-Id``, say).
    """
    return frozenset(field for field in propagator.fields if field.lower() != _BAGGAGE)


def _picked(text_map: Mapping[str, str], fields: frozenset[str]) -> dict[str, str]:
    """Return the entries of ``text_map`` that ``fields`` name, whatever the case."""
    wanted = {field.lower() for field in fields}
    return {key: value for key, value in text_map.items() if key.lower() in wanted}


def _report(kind: str, doing: str) -> None:
    if _reported.first(kind):
        logger.warning(
            "OpenTelemetry's propagator raised %s a carried span context; the work goes "
            "on without it. Later failures of this kind are not reported.",
            doing,
            exc_info=True,
        )


# The carrier that install() registers (carry=True).
_CARRIER: Final = _Carrier()
