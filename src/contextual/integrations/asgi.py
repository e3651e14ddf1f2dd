"""ASGI middleware: open a request context for every HTTP request and WebSocket.

Pure standard library: it works under any ASGI 3 server (uvicorn,
hypercorn, daphne, granian) and framework (Starlette, FastAPI, Django,
Quart...).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final, TypeAlias, final

from contextual import new_request_id

from ._carrier import AllowList
from ._headers import DEFAULT_HEADER, RequestOpener, replace_header

__all__ = ["RequestContextMiddleware"]

_logger = logging.getLogger(__name__)

# The shapes Starlette uses, so that its apps and middleware fit.
_Scope: TypeAlias = MutableMapping[str, Any]
_Message: TypeAlias = MutableMapping[str, Any]
_Receive: TypeAlias = Callable[[], Awaitable[_Message]]
_Send: TypeAlias = Callable[[_Message], Awaitable[None]]
_App: TypeAlias = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

_SCOPES: Final = frozenset({"http", "websocket"})
_BAGGAGE: Final = b"baggage"
_BAGGAGE_SIZE: Final = len(_BAGGAGE)
# The messages that start a response: where the ID goes back to the client.
_STARTS: Final = frozenset(
    {"http.response.start", "websocket.accept", "websocket.http.response.start"}
)


@final
class RequestContextMiddleware:
    """Run each HTTP request and WebSocket of an ASGI app in its own request context.

    For each ``http`` and ``websocket`` scope it reads the ID from the
    ``header`` request header, keeps it if ``validator`` accepts it and
    otherwise uses a new one from ``generator``, asks ``get_user`` for the
    user, and opens ``request_context(request_id=..., user_id=...)`` around
    the app. With ``echo`` the ID goes back in the same header of
    ``http.response.start``, ``websocket.accept`` and
    ``websocket.http.response.start``. Other scopes (``lifespan``...) go to
    the app untouched, outside any request.

    Incoming IDs are untrusted. The default check keeps 1 to 128 characters
    from ``A-Z a-z 0-9 . _ : -``. A refused value (CR or LF, other control
    characters, non-ASCII, too long, empty, or the header sent several
    times) is replaced by a new ID and reported in one warning per request
    on the ``contextual.integrations`` logger, escaped and cut to 64
    characters, so it can't forge a log line. The warning is logged inside
    the request: it carries the new ID, which ties it to the request's other
    lines.

    What sees the request:

    * the app, from its call until it returns, raises or is cancelled, for
      the whole of a WebSocket connection; the request closes then, also
      when the client has disconnected;
    * tasks the app creates (:func:`asyncio.create_task`,
      :class:`asyncio.TaskGroup`): each starts with a copy of the request
      and keeps it for its whole life, even after the response; their
      writes never reach the app;
    * work handed to a :class:`~contextual.ContextExecutor` (with
      ``loop.run_in_executor(executor, ...)`` too), :func:`~contextual.to_thread`,
      :func:`asyncio.to_thread`, or a loop whose default executor comes from
      :func:`~contextual.set_default_executor`: it sees the request as the
      app saw it when handing it over, and its writes never flow back;
    * a plain :class:`~concurrent.futures.ThreadPoolExecutor` passed to
      ``run_in_executor``, or a plain :class:`threading.Thread`, does not see
      it (on interpreters where new threads inherit the context, a thread
      started by the app does);
    * nothing else: other requests, and the server's own code, never see it.

    ``"thread"`` stores belong to the event loop's thread: every request it
    serves at once shares them, so one request's writes show in the
    others while both are open. Use ``"context"`` stores for request data
    in async apps. Once no request is open in the thread any more, every
    ``propagate=True`` ``"thread"`` store is put back as it was before the
    first of them began: when the app's call of the last open request ends
    (returns, raises or is cancelled), whatever order the requests ended
    in, so a value an app left in one doesn't reach a later request. While
    others are open, a request that ends puts nothing back: that would
    undo what one still open wrote, or, ending last, bring back what one
    that ended before it wrote. A WebSocket is open for its whole
    connection: while one is, nothing is put back. A store defined while
    requests are open is put back as the first request that began after
    its definition found it. ``propagate=False`` ones keep what the app
    wrote, by design: they hold the thread's own resources (a database
    connection, say), meant to outlive one request.

    Args:
        app: The ASGI 3 application.
        header: The request and response header that carries the ID, by
            its own name (``X-Request-ID``); the WSGI environ's spelling
            (``HTTP_X_REQUEST_ID``) is refused.
        get_user: Called with the ASGI scope before the request opens;
            returns the user ID, or ``None``. If it raises, the error is
            logged with its traceback on the ``contextual.integrations.asgi``
            logger, inside the request, and the request goes on with the user
            ``None``: a failing user lookup never fails a request.
        validator: Decides which incoming IDs to keep, instead of the default
            check. Keep to a character set without spaces and ``=``: an
            accepted ID goes into every log line as it is. Values a header
            can't carry back as they are (anything
            outside printable ASCII, or empty) are refused whatever it says,
            and so is a header sent several times. If it raises, the value
            is refused, and the warning has the traceback.
        generator: Makes a new request ID (a non-empty str of printable
            ASCII; anything else, or an error, is logged and replaced by
            :func:`~contextual.new_request_id`).
        echo: Whether to set the ID in the response header. An app's own
            header of that name is replaced; every other header is kept,
            repeated ones (several ``set-cookie``) included.
        baggage: The stores and keys to take from the request's ``baggage``
            headers (W3C Baggage, as :mod:`contextual.integrations.http`
            writes it): store names, or ``{store name: True | [key, ...]}``.
            ``None``, the default, takes nothing. Allowed values are set as
            str in the stores of the same names, for the request, and the
            stores are back as they were when it closes. The request
            store's ``user_id`` is the request's user when there is no
            ``get_user`` or it returns ``None``; the request ID comes from
            ``header`` alone. Members that are malformed, past the
            header's limits, or that decode to a control or format
            character (a line break would forge log lines, U+202E would
            make them read backwards) are skipped, each kind of problem
            reported once per process as a warning on the
            ``contextual.integrations`` logger; members of keys not allowed
            are ignored. The header is the caller's word: turn this on only
            in services that trusted peers alone can reach, or strip
            ``baggage`` at the edge.

    Raises:
        ValueError: ``header`` is not an HTTP field name, or is spelled
            as a WSGI environ key (``HTTP_...``).
        TypeError: ``get_user``, ``validator`` or ``generator`` is not
            callable, or ``baggage`` is not an allow-list.

    Example:
        >>> from contextual import get_request_id
        >>> from contextual.integrations.asgi import RequestContextMiddleware
        >>> async def app(scope, receive, send):
        ...     await send({"type": "http.response.start", "status": 200, "headers": []})
        ...     await send({"type": "http.response.body", "body": get_request_id().encode()})
        >>> app = RequestContextMiddleware(app)
        >>> import asyncio
        >>> async def receive():
        ...     return {"type": "http.request", "body": b""}
        >>> async def send(message):
        ...     print(message)
        >>> scope = {"type": "http", "headers": [(b"x-request-id", b"r-42")]}
        >>> asyncio.run(app(scope, receive, send))
        {'type': 'http.response.start', 'status': 200, 'headers': [(b'x-request-id', b'r-42')]}
        {'type': 'http.response.body', 'body': b'r-42'}

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_app", "_baggage", "_echo", "_key", "_opener")

    def __init__(  # noqa: PLR0913 (keyword-only options, one per setting)
        self,
        app: _App,
        *,
        header: str = DEFAULT_HEADER,
        get_user: Callable[[_Scope], Any] | None = None,
        validator: Callable[[str], bool] | None = None,
        generator: Callable[[], str] = new_request_id,
        echo: bool = True,
        baggage: Mapping[str, bool | Iterable[str]] | Iterable[str] | None = None,
    ) -> None:
        allow = None if baggage is None else AllowList(baggage)
        # Requests overlap on the event loop's thread: they share its thread stores.
        self._opener = RequestOpener(
            header, get_user, validator, generator, _logger, baggage=allow, overlapping=True
        )
        self._app = app
        self._echo = echo
        # ASGI header names are lowercase bytes, both ways.
        self._key = header.lower().encode("ascii")
        self._baggage = allow is not None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Serve one connection; inside its request context for HTTP and WebSocket."""
        if scope["type"] not in _SCOPES:
            await self._app(scope, receive, send)
            return
        key = self._key
        size = len(key)
        # A plain loop, and lower() only for names of the right length: this
        # runs for every request. Servers should send names lowercased, but
        # not all apps' test clients do.
        values = []
        if self._baggage:
            baggage = []
            for name, value in scope.get("headers", ()):
                if len(name) == size and name.lower() == key:
                    values.append(value.decode("latin-1"))
                elif len(name) == _BAGGAGE_SIZE and name.lower() == _BAGGAGE:
                    baggage.append(value.decode("latin-1"))
            request, request_id = self._opener.open(values, scope, baggage)
        else:
            for name, value in scope.get("headers", ()):
                if len(name) == size and name.lower() == key:
                    values.append(value.decode("latin-1"))
            request, request_id = self._opener.open(values, scope)
        try:
            if self._echo:
                send = _echoing(send, key, request_id.encode("latin-1"))
            await self._app(scope, receive, send)
        finally:
            request.__exit__(None, None, None)


def _echoing(send: _Send, key: bytes, request_id: bytes) -> _Send:
    async def send_with_id(message: _Message) -> None:
        if message["type"] in _STARTS:
            message = {
                **message,
                "headers": replace_header(message.get("headers", ()), key, request_id),
            }
        await send(message)

    return send_with_id
