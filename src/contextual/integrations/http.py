"""Carry the request ID and allowed context over HTTP, to other services.

An outgoing request carries the current request's ID in the request-ID
header (``X-Request-ID`` by default) and the values an allow-list lets out
in the W3C Baggage header (``baggage``). The receiving service's
:class:`~contextual.integrations.asgi.RequestContextMiddleware` or
:class:`~contextual.integrations.wsgi.RequestContextMiddleware`, given the
same kind of allow-list as ``baggage=``, opens the request with that ID and
sets the values in its stores of the same names, so that its log lines
carry them. Pure standard library: :func:`install_httpx` and
:func:`install_requests` hook into clients you made, :func:`inject` and
:func:`extract` work with the headers of any other client or server.

Nothing leaves the process by default but the request ID. An allow-list
names what may travel: store names (every key of those stores), or
``{store name: True | [key, ...]}``. The receiving side has its own
allow-list and ignores whatever it doesn't allow, so a caller can never set
a key the service didn't ask for.

On the wire, ``user_id`` of the store ``"myapp.request"`` is the Baggage
member ``myapp.request|user_id=...``: the store's name and the key's name,
each percent-encoded (UTF-8) so that it holds only HTTP token characters
other than ``%`` and ``|``, joined by ``|``. Values are percent-encoded
UTF-8. A str travels as it is, an int, float or bool as its ``str()``;
``None`` (unset) stays behind, and so does anything else. Values arrive as
str. Members of other libraries' baggage are kept on the way out and
ignored on the way in.

The header has limits (8192 bytes, 180 members, 4096 bytes per member).
Members that don't fit, values that can't travel and malformed members of
a header are left out, never sent nor applied; when the members a header
already had and the allowed values don't fit together, the allowed values
are kept and the others dropped. Incoming values that decode to a control
character (a line break would forge log lines) are never applied. Each
kind of problem is reported once per process, as a warning on the
``contextual.integrations`` logger.

With :func:`contextual.integrations.opentelemetry.install`, the span context
travels too: :func:`inject` adds the headers of OpenTelemetry's configured
propagator (``traceparent`` and ``tracestate``), and
:meth:`CarriedContext.applied` makes the span context that :func:`extract`
found current, so that a span started there is a child of the caller's.
The ``baggage`` header stays contextual's alone, whatever carriers are
registered: no carrier writes it or reads it, so OpenTelemetry's baggage is
neither sent nor taken, and what goes out in it is what the allow-list lets
out, nothing a caller sent.

Incoming baggage is the caller's word: whoever reaches the service can set
any key the receiving side allows, ``user_id`` included. Let baggage in
only on services that trusted peers alone can reach, or strip the
``baggage`` header at the edge. The hooks inject into every request of a
client, redirects to other hosts included: install them only on clients
that call your own services.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Final, NamedTuple, Protocol, final

from contextual import RequestContext, request_context
from contextual._propagation.carriers import (
    Carrier,
    applied_all,
    capture_all,
    carrier_named,
    check_text_map,
    registered_carriers,
)
from contextual._propagation.wire import (
    REQUEST_ID_KEY,
    REQUEST_STORE_NAME,
    Problem,
    is_printable_ascii,
    rebuild_request,
    shown,
)

from ._baggage import HEADER, read, write
from ._carrier import AllowList
from ._carrier import applied as _applied
from ._headers import DEFAULT_HEADER, check_callable, check_header_name, report_once

__all__ = ["CarriedContext", "extract", "inject", "install_httpx", "install_requests"]

_NO_CARRIERS: Final[Mapping[str, Mapping[str, str]]] = types.MappingProxyType({})


class _Request(Protocol):
    # httpx.Request and requests.PreparedRequest.
    @property
    def headers(self) -> MutableMapping[str, str]: ...


class _HttpxClient(Protocol):
    # httpx.Client and httpx.AsyncClient.
    @property
    def event_hooks(self) -> dict[str, list[Callable[..., Any]]]: ...
    @event_hooks.setter
    def event_hooks(self, event_hooks: dict[str, list[Callable[..., Any]]]) -> None: ...


class _RequestsSession(Protocol):
    # requests.Session: its transport adapters, by URL prefix.
    @property
    def adapters(self) -> MutableMapping[str, Any]: ...


@final
class CarriedContext(NamedTuple):
    """What :func:`extract` found in a request's headers.

    Attributes:
        request_id: The request ID, or ``None`` when the header is missing or
            its value is not a valid request ID.
        stores: The allowed values, as str, by store name and key.
        carriers: What the carriers registered here (the span context,
            with :func:`contextual.integrations.opentelemetry.install`)
            found in the headers: their headers, by carrier name. Empty
            when none is registered or the headers hold none of theirs.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The ``carriers`` field.
    """

    request_id: str | None
    stores: dict[str, dict[str, str]]
    carriers: Mapping[str, Mapping[str, str]] = _NO_CARRIERS

    @contextlib.contextmanager
    def applied(self) -> Iterator[RequestContext]:
        """Open the carried request and set the carried values, for a block.

        Opens a :class:`~contextual.request_context` with the carried ID (a
        new one if there is none) and the carried ``user_id`` of the request
        store, and sets every other carried value in the store of the same
        name, ignoring names no store has here, and makes what the
        ``carriers`` hold current (with OpenTelemetry installed, the
        caller's span context: a span started in the block is a child of
        the caller's span), ignoring carriers not registered here. The
        block, tasks it creates and work it hands on (a
        :class:`~contextual.ContextExecutor`...) see them, as they see the
        request; on exit every store, and the span context, is back as it
        was. The target of ``with`` is the :class:`~contextual.RequestContext`.

        .. versionadded:: 0.1.0
        .. versionchanged:: 0.2.0
           Applies the ``carriers``.
        """
        stores: dict[str, dict[str, Any]] = {
            name: dict(values) for name, values in self.stores.items()
        }
        user = rebuild_request(None, stores).user
        carried: list[tuple[Carrier, Mapping[str, str]]] = []
        for name, text_map in self.carriers.items():
            carrier = carrier_named(name)
            if carrier is not None:
                carried.append((carrier, text_map))
        with (
            request_context(self.request_id, user_id=user) as request,
            _applied(stores),
            applied_all(carried),
        ):
            yield request


def inject(
    headers: MutableMapping[str, str],
    *,
    allow: Mapping[str, bool | Iterable[str]] | Iterable[str] | None = None,
    header: str = DEFAULT_HEADER,
) -> None:
    """Add the current request ID and allowed context to an outgoing request's headers.

    Sets ``header`` to the ID of the request open here, replacing any value
    it had (outside a request, the header is left as it is). Merges the
    allowed values of the current context into the ``baggage`` header: a
    member it already has for one of those keys is replaced, its other
    members are kept, ahead of ours, and members that are malformed or past
    the header's limits are left out. ``headers`` is any mutable mapping of
    header names to values, whether its names compare case-insensitively or
    not: a dict, ``httpx.Headers``, the ``headers`` of a ``requests``
    request.

    With :func:`contextual.integrations.opentelemetry.install`, it also sets
    the headers that OpenTelemetry's configured propagator writes for the
    current span context (``traceparent``, ``tracestate``), replacing those
    the request had; OpenTelemetry's baggage is not sent. Headers that no
    HTTP request can carry as they are (not printable ASCII, or over 8192
    bytes in all), and a ``baggage`` header a carrier writes, are left out,
    with a warning the first time.

    Args:
        headers: The outgoing request's headers, changed in place.
        allow: What may travel besides the request ID: store names, or
            ``{store name: True | [key, ...]}``. ``None``: nothing else.
        header: The request-ID header's name.

    Raises:
        TypeError: ``allow`` is not an allow-list.
        ValueError: ``header`` is not an HTTP field name.

    Example:
        >>> from contextual import request_context
        >>> from contextual.integrations.http import inject
        >>> headers = {"baggage": "tenant=acme"}
        >>> with request_context(request_id="r-42", user_id="ada"):
        ...     inject(headers, allow={"contextual.request": ["user_id"]})
        >>> headers
        {'baggage': 'tenant=acme,contextual.request|user_id=ada', 'X-Request-ID': 'r-42'}

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       Adds the headers of the registered carriers: OpenTelemetry's span
       context, once it is installed.
    """
    _inject(headers, AllowList(allow), check_header_name(header))


def extract(
    headers: Mapping[str, str],
    *,
    allow: Mapping[str, bool | Iterable[str]] | Iterable[str] | None = None,
    header: str = DEFAULT_HEADER,
    validator: Callable[[str], bool] | None = None,
) -> CarriedContext:
    """Return the request ID and the allowed context an incoming request's headers carry.

    The request ID is kept when the header holds one value that the check
    accepts: the middleware's default (1 to 128 characters from
    ``A-Z a-z 0-9 . _ : -``), or ``validator``, as for
    :class:`~contextual.integrations.wsgi.RequestContextMiddleware`.
    Baggage members of stores and keys that ``allow`` refuses are ignored,
    and so are malformed ones, those past the header's limits, and those
    whose value decodes to a control or format character (a line break
    would forge log lines, U+202E make them read backwards);
    :meth:`CarriedContext.applied` opens the request with what is left.
    The middleware does all of this for you: use ``extract`` where there is
    none.

    With :func:`contextual.integrations.opentelemetry.install`, it also
    takes the headers that OpenTelemetry's configured propagator reads
    for the span context (``traceparent``, ``tracestate``), for
    :meth:`CarriedContext.applied` to make the caller's span context
    current. OpenTelemetry's propagator checks them there: a malformed
    ``traceparent`` gives no parent. The ``baggage`` header goes to no
    carrier: OpenTelemetry's baggage is not taken from it.

    The Baggage header is the caller's word: whoever can reach the service
    can set any allowed key, ``user_id`` included. Allow keys only on
    services that trusted peers alone can reach.

    Args:
        headers: The incoming request's headers: any mapping of header
            names to values, names compared case-insensitively.
        allow: What to take besides the request ID: store names, or
            ``{store name: True | [key, ...]}``. ``None``: nothing else.
        header: The request-ID header's name.
        validator: Replaces the default check of the request ID: takes the
            header's value, returns whether to keep it. Whatever it says,
            only printable ASCII is kept; when it raises, the ID is refused.

    Raises:
        TypeError: ``allow`` is not an allow-list, or ``validator`` is not
            a plain callable.
        ValueError: ``header`` is not an HTTP field name.

    Example:
        >>> from contextual import get_current_user, get_request_id
        >>> from contextual.integrations.http import extract
        >>> headers = {"x-request-id": "r-42", "baggage": "contextual.request|user_id=ada"}
        >>> carried = extract(headers, allow={"contextual.request": ["user_id"]})
        >>> carried.request_id, carried.stores
        ('r-42', {'contextual.request': {'user_id': 'ada'}})
        >>> with carried.applied():
        ...     get_request_id(), get_current_user()
        ('r-42', 'ada')

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       Takes the headers of the registered carriers: OpenTelemetry's span
       context, once it is installed.
    """
    allow_list = AllowList(allow)
    check_header_name(header)
    check_callable("validator", validator)
    problems: list[Problem] = []
    ids = _values(headers, header)
    arrival = rebuild_request(ids[0] if len(ids) == 1 else None, None, validator)
    if arrival.error is not None:
        problems.append(
            Problem(
                "incoming request ID validator",
                f"Ignored the {shown(header)} header, {shown(ids[0])}: the validator raised "
                f"{shown(repr(arrival.error))}.",
            )
        )
    elif ids and arrival.request_id is None:
        problems.append(
            Problem(
                "incoming request ID",
                f"Ignored the {shown(header)} header, {shown(', '.join(ids))}: it is not one "
                "valid request ID (by default 1 to 128 characters from A-Z a-z 0-9 . _ : -).",
            )
        )
    stores: dict[str, dict[str, str]] = {}
    baggage = _values(headers, HEADER)
    if baggage:
        stores, more = read(",".join(baggage), allow_list)
        problems += more
    report_once(problems)
    return CarriedContext(arrival.request_id, stores, _carried(headers))


def _carried(headers: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Return the headers of each registered carrier that ``headers`` hold, by carrier name."""
    carriers = registered_carriers()
    if not carriers:
        return {}
    by_name: dict[str, list[str]] = {}
    for key, value in headers.items():
        by_name.setdefault(key.lower(), []).append(value)
    carried: dict[str, dict[str, str]] = {}
    for carrier in carriers:
        # The baggage header is read under the allow-list alone.
        text_map = {
            field: ",".join(by_name[field.lower()])
            for field in carrier.fields
            if field.lower() in by_name and field.lower() != HEADER
        }
        if text_map:
            carried[carrier.name] = text_map
    return carried


def install_httpx(
    client: _HttpxClient,
    *,
    allow: Mapping[str, bool | Iterable[str]] | Iterable[str] | None = None,
    header: str = DEFAULT_HEADER,
) -> None:
    """Make every request an httpx client sends carry the request ID and allowed context.

    Adds a request event hook to ``client`` (an ``httpx.Client`` or
    ``httpx.AsyncClient``; the hook matches the client's kind), after the
    hooks it has. The hook runs in the code that sends the request, for
    each request and each redirect (to another host too), and does what
    :func:`inject` does there. Installing again on the same client replaces the hook.

    Args:
        client: The client, changed in place.
        allow: What may travel besides the request ID: store names, or
            ``{store name: True | [key, ...]}``. ``None``: nothing else.
        header: The request-ID header's name.

    Raises:
        TypeError: ``client`` has no ``event_hooks``, or ``allow`` is not an
            allow-list.
        ValueError: ``header`` is not an HTTP field name.

    Example:
        Once, where the client is made::

            client = httpx.AsyncClient(base_url="http://billing.internal")
            install_httpx(client, allow={"contextual.request": ["user_id"]})

    .. versionadded:: 0.1.0
    """
    allow_list = AllowList(allow)
    check_header_name(header)
    hooks = getattr(client, "event_hooks", None)
    if not isinstance(hooks, Mapping):
        msg = (
            f"install_httpx takes an httpx.Client or httpx.AsyncClient, got "
            f"{type(client).__name__} {client!r}, which has no event_hooks. For requests, "
            "use install_requests; for any other client, call inject() on its headers."
        )
        raise TypeError(msg)
    send = getattr(client, "send", None)
    kind = _AsyncHttpxHook if inspect.iscoroutinefunction(send) else _HttpxHook
    kept = [hook for hook in hooks.get("request", ()) if not isinstance(hook, _Hook)]
    client.event_hooks = {**hooks, "request": [*kept, kind(allow_list, header)]}


def install_requests(
    session: _RequestsSession,
    *,
    allow: Mapping[str, bool | Iterable[str]] | Iterable[str] | None = None,
    header: str = DEFAULT_HEADER,
) -> None:
    """Make every request a requests session sends carry the request ID and allowed context.

    Wraps the ``send`` method of each transport adapter mounted on
    ``session`` (the default ones for ``http://`` and ``https://``, and
    yours), on the adapter object itself, so that it does what
    :func:`inject` does, in the code that sends the request, for each
    request and each redirect, then sends as before. The adapters stay
    what they were (an ``HTTPAdapter`` keeps its ``max_retries``, its pools
    and its other methods). Mount your own adapters first: one mounted
    later is not wrapped. Installing again replaces the wrappers.

    Args:
        session: The ``requests.Session``, changed in place.
        allow: What may travel besides the request ID: store names, or
            ``{store name: True | [key, ...]}``. ``None``: nothing else.
        header: The request-ID header's name.

    Raises:
        TypeError: ``session`` has no ``adapters``, an adapter's ``send``
            can't be replaced, or ``allow`` is not an allow-list.
        ValueError: ``header`` is not an HTTP field name.

    Example:
        Once, where the session is made::

            session = requests.Session()
            install_requests(session, allow={"contextual.request": ["user_id"]})

    .. versionadded:: 0.1.0
    """
    allow_list = AllowList(allow)
    check_header_name(header)
    adapters = getattr(session, "adapters", None)
    if not isinstance(adapters, MutableMapping):
        msg = (
            f"install_requests takes a requests.Session, got {type(session).__name__} "
            f"{session!r}, which has no adapters. For httpx, use install_httpx; for any "
            "other client, call inject() on its headers."
        )
        raise TypeError(msg)
    for adapter in adapters.values():
        send = getattr(adapter, "send", None)
        inner = send.send if isinstance(send, _ContextSend) else send
        if not callable(inner):
            msg = (
                f"install_requests wraps the send() of each adapter mounted on the session, "
                f"but {type(adapter).__name__} {adapter!r} has none. Mount requests "
                "transport adapters only."
            )
            raise TypeError(msg)
        try:
            adapter.send = _ContextSend(inner, allow_list, header)
        except AttributeError:  # __slots__ without a "send" slot
            msg = (
                f"install_requests can't wrap the send() of the adapter "
                f"{type(adapter).__name__} {adapter!r}: its instances take no new "
                "attributes. Call inject() on the request's headers in its send() instead."
            )
            raise TypeError(msg) from None


def _inject(headers: MutableMapping[str, str], allow: AllowList, header: str) -> None:
    problems: list[Problem] = []
    for carrier, text_map in capture_all():
        try:
            check_text_map(carrier.name, text_map)
        except (TypeError, ValueError) as exc:
            problems.append(
                Problem(
                    f"outgoing carrier {carrier.name}",
                    f"Left a carrier's headers out of the outgoing request: {exc}",
                )
            )
            continue
        for key, value in text_map.items():
            if key.lower() == HEADER:
                # What goes out in it is what the allow-list lets out.
                problems.append(
                    Problem(
                        f"outgoing carrier {carrier.name} baggage",
                        f"Left the {shown(key)} header that the carrier {carrier.name!r} "
                        "captured out of the outgoing request: the baggage header carries "
                        "only the values that the allow-list lets out.",
                    )
                )
            else:
                _replace(headers, key, value)
    stores = allow.outgoing()
    request_id = stores.get(REQUEST_STORE_NAME, {}).get(REQUEST_ID_KEY)
    if request_id is not None:
        if isinstance(request_id, str) and is_printable_ascii(request_id):
            _replace(headers, header, request_id)
        else:
            problems.append(
                Problem(
                    "outgoing request ID",
                    f"Sent no {shown(header)} header: the request ID {shown(repr(request_id))} "
                    "is not a str of printable ASCII, so no header can carry it. Open requests "
                    "with IDs such as new_request_id() makes.",
                )
            )
    existing = _values(headers, HEADER)
    baggage, more = write(stores, ",".join(existing) if existing else None)
    if baggage is not None or existing:
        _replace(headers, HEADER, baggage)
    report_once(problems + more)


def _values(headers: Mapping[str, str], name: str) -> list[str]:
    """Return the values of every header named ``name``, whatever the case."""
    wanted = name.lower()
    return [value for key, value in headers.items() if key.lower() == wanted]


def _replace(headers: MutableMapping[str, str], name: str, value: str | None) -> None:
    """Set the header ``name`` to ``value``, or remove it for None, whatever the case."""
    wanted = name.lower()
    # A key spelled exactly as name keeps its place in a dict.
    for key in [key for key in headers if key != name and key.lower() == wanted]:
        del headers[key]
    if value is None:
        headers.pop(name, None)
    else:
        headers[name] = value


class _Hook:
    """What an httpx request hook injects, and where."""

    __slots__ = ("_allow", "_header")

    def __init__(self, allow: AllowList, header: str) -> None:
        self._allow = allow
        self._header = header

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._allow!r} header={self._header!r}>"


@final
class _HttpxHook(_Hook):
    __slots__ = ()

    def __call__(self, request: _Request) -> None:
        _inject(request.headers, self._allow, self._header)


@final
class _AsyncHttpxHook(_Hook):
    __slots__ = ()

    async def __call__(self, request: _Request) -> None:
        _inject(request.headers, self._allow, self._header)


@final
class _ContextSend:
    """A requests adapter's ``send``, wrapped: injects, then sends as the adapter did."""

    __slots__ = ("_allow", "_header", "send")

    def __init__(self, send: Callable[..., Any], allow: AllowList, header: str) -> None:
        self.send = send
        self._allow = allow
        self._header = header

    def __repr__(self) -> str:
        return f"<_ContextSend {self._allow!r} header={self._header!r} for {self.send!r}>"

    def __call__(self, request: _Request, *args: Any, **kwargs: Any) -> Any:
        _inject(request.headers, self._allow, self._header)
        return self.send(request, *args, **kwargs)
