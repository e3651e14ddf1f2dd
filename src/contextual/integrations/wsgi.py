"""WSGI middleware: open a request context for every request.

Pure standard library: it works under any WSGI server (waitress, gunicorn,
uWSGI, mod_wsgi, :mod:`wsgiref`) and framework (Flask, Django, Pyramid...).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, final

from contextual import new_request_id

from ._carrier import AllowList
from ._headers import DEFAULT_HEADER, RequestOpener, replace_header

if TYPE_CHECKING:
    from types import TracebackType

    from ._headers import Opened

__all__ = ["RequestContextMiddleware"]

_logger = logging.getLogger(__name__)

_ExcInfo: TypeAlias = (
    "tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]"
)
_Environ: TypeAlias = dict[str, Any]


class _StartResponse(Protocol):
    # The same shape as typeshed's wsgiref.types.StartResponse.
    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | None = ...,
        /,
    ) -> Callable[[bytes], object]: ...


_App: TypeAlias = Callable[[_Environ, _StartResponse], Iterable[bytes]]


@final
class RequestContextMiddleware:
    """Run each request of a WSGI app in its own :func:`~contextual.request_context`.

    For each request it reads the ID from the ``header`` request header,
    keeps it if ``validator`` accepts it and otherwise uses a new one from
    ``generator``, asks ``get_user`` for the user, and opens
    ``request_context(request_id=..., user_id=...)``. With ``echo`` the ID
    goes back in the same response header.

    Incoming IDs are untrusted. The default check keeps 1 to 128 characters
    from ``A-Z a-z 0-9 . _ : -``. A refused value (CR or LF, other control
    characters, non-ASCII, too long, empty; several headers, which the
    server joins with commas) is replaced by a new ID and reported in one
    warning per request on the ``contextual.integrations`` logger, escaped
    and cut to 64 characters, so it can't forge a log line. The warning is
    logged inside the request: it carries the new ID, which ties it to the
    request's other lines.

    Each request runs in a context of its own (a copy of the server
    thread's), entered for the call of the app, for each step of a streamed
    body and for the ``close()`` of the response; the server's thread never
    holds the request. What sees it:

    * the app, in the server's thread, and code it calls in that thread;
    * asyncio tasks the app runs (:func:`asyncio.run` inside a request):
      each starts with a copy of the request; their writes stay theirs;
    * work it hands to a :class:`~contextual.ContextExecutor`,
      :class:`~contextual.ContextThread`, :func:`~contextual.to_thread`, or
      runs with :func:`~contextual.capture`: it sees the request as the app
      saw it when handing it over, and its writes never flow back;
    * a plain :class:`threading.Thread` or
      :class:`~concurrent.futures.ThreadPoolExecutor` does not see it (on
      interpreters where new threads inherit the context, a thread started
      by the app does);
    * nothing else: the server's next request on the same thread starts
      without it, and so does every other request.

    The request closes when the server calls ``close()`` on the response,
    as :pep:`3333` requires, and at once when the app raises instead of
    returning. The body's steps share the request's context, so a nested
    :func:`~contextual.request_context` that a streamed body holds across
    its ``yield`` keeps its values. A caller that never calls ``close()``
    (some test clients, some buffering middleware) leaks nothing of the
    request's context, which is dropped with the response; only the
    ``"thread"`` stores below stay as the app left them.

    ``"thread"`` stores belong to the server's thread, which serves request
    after request. When the request closes, every ``propagate=True`` one
    is put back as it was when the request began (as
    :meth:`Snapshot.run <contextual.Snapshot.run>` does), also when the
    app raises: a value the app left in one doesn't reach the thread's
    next request. ``propagate=False`` ones keep what the app wrote, by
    design: they hold the thread's own resources (a database connection,
    say), meant to outlive one request. A store created during a request
    is the thread's own too, from then on.

    The response body is wrapped, to know when it closes: ``len()`` still
    works when the body has one (servers use it to set ``Content-Length``),
    but a ``wsgi.file_wrapper`` body is sent by plain iteration, without the
    server's file fast path.

    Args:
        app: The WSGI application.
        header: The request and response header that carries the ID, by
            its own name (``X-Request-ID``), not the environ's spelling
            (``HTTP_X_REQUEST_ID``), which is refused.
        get_user: Called with the WSGI environ before the request opens;
            returns the user ID, or ``None``. If it raises, the error is
            logged with its traceback on the ``contextual.integrations.wsgi``
            logger, inside the request, and the request goes on with the user
            ``None``: a failing user lookup never fails a request.
        validator: Decides which incoming IDs to keep, instead of the default
            check. Keep to a character set without spaces and ``=``: an
            accepted ID goes into every log line as it is. Values a header
            can't carry back as they are (anything
            outside printable ASCII, or empty) are refused whatever it says.
            If it raises, the value is refused, and the warning has the
            traceback.
        generator: Makes a new request ID (a non-empty str of printable
            ASCII; anything else, or an error, is logged and replaced by
            :func:`~contextual.new_request_id`).
        echo: Whether to set the ID in the response header. An app's own
            header of that name is replaced; every other header is kept,
            repeated ones (several ``Set-Cookie``) included.
        baggage: The stores and keys to take from the request's ``baggage``
            header (W3C Baggage, as :mod:`contextual.integrations.http`
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
        >>> from contextual.integrations.wsgi import RequestContextMiddleware
        >>> def app(environ, start_response):
        ...     start_response("200 OK", [("Content-Type", "text/plain")])
        ...     return [get_request_id().encode()]
        >>> app = RequestContextMiddleware(app)
        >>> def start_response(status, headers, exc_info=None):
        ...     print(status, headers)
        >>> body = app({"HTTP_X_REQUEST_ID": "r-42"}, start_response)
        200 OK [('Content-Type', 'text/plain'), ('X-Request-ID', 'r-42')]
        >>> list(body)
        [b'r-42']
        >>> body.close()
        >>> print(get_request_id())
        None

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_app", "_baggage", "_echo", "_environ_key", "_opener")

    def __init__(  # noqa: PLR0913 (keyword-only options, one per setting)
        self,
        app: _App,
        *,
        header: str = DEFAULT_HEADER,
        get_user: Callable[[_Environ], Any] | None = None,
        validator: Callable[[str], bool] | None = None,
        generator: Callable[[], str] = new_request_id,
        echo: bool = True,
        baggage: Mapping[str, bool | Iterable[str]] | Iterable[str] | None = None,
    ) -> None:
        allow = None if baggage is None else AllowList(baggage)
        self._opener = RequestOpener(header, get_user, validator, generator, _logger, baggage=allow)
        self._app = app
        self._echo = echo
        self._environ_key = "HTTP_" + header.upper().replace("-", "_")
        self._baggage = allow is not None

    def __call__(self, environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        """Serve one request inside its request context."""
        context = contextvars.copy_context()
        return context.run(self._serve, context, environ, start_response)

    def _serve(
        self, context: contextvars.Context, environ: _Environ, start_response: _StartResponse
    ) -> Iterable[bytes]:
        raw = environ.get(self._environ_key)
        values = () if raw is None else (raw,)
        if self._baggage:
            # The server joins several Baggage headers with commas, as the
            # specification allows.
            baggage = environ.get("HTTP_BAGGAGE")
            request, request_id = self._opener.open(
                values, environ, () if baggage is None else (baggage,)
            )
        else:
            request, request_id = self._opener.open(values, environ)
        try:
            if self._echo:
                start_response = _echoing(start_response, self._opener.header, request_id)
            body = self._app(environ, start_response)
        except BaseException:
            request.__exit__(*sys.exc_info())
            raise
        if hasattr(body, "__len__"):
            return _SizedBody(body, request, context)
        return _Body(body, request, context)


def _echoing(start_response: _StartResponse, header: str, request_id: str) -> _StartResponse:
    def start_with_id(
        status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        return start_response(status, replace_header(headers, header, request_id), exc_info)

    return start_with_id


class _Body:
    """The app's response body, run in the request's context, closing it on close()."""

    __slots__ = ("_body", "_context", "_iterator", "_request")

    def __init__(
        self, body: Iterable[bytes], request: Opened, context: contextvars.Context
    ) -> None:
        self._body = body
        self._request: Opened | None = request
        self._context = context
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, iterator)

    def close(self) -> None:
        self._context.run(self._close)

    def _close(self) -> None:
        request, self._request = self._request, None
        if request is None:
            return
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            request.__exit__(None, None, None)


@final
class _SizedBody(_Body):
    __slots__ = ()

    def __len__(self) -> int:
        return len(self._body)  # type: ignore[arg-type]
