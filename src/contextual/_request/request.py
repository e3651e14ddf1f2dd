"""Request context: the request ID and user that every log line should carry.

Built on one ``"context"`` store, so a request's values follow its asyncio
tasks and travel through everything in the propagation layer
(:class:`~contextual.ContextExecutor`, :func:`~contextual.capture`...).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, NamedTuple, TypeVar, final

from contextual._core.decorate import AsyncToo, decorate
from contextual._core.errors import ScopeError
from contextual._core.store import ContextStore, backend_of, enter_scope, exit_scope

__all__ = [
    "REQUEST_ID_KEY",
    "REQUEST_KEY",
    "REQUEST_STORE",
    "USER_KEY",
    "RequestContext",
    "current_request",
    "get_current_user",
    "get_request_id",
    "new_request_id",
    "open_request",
    "read_request",
    "request_context",
]

_F = TypeVar("_F", bound=Callable[..., Any])

#: The request store's keys: the :class:`RequestContext`, and the request ID
#: and the user on their own (for log records, and to travel: the
#: RequestContext never leaves the process, it is rebuilt on arrival).
REQUEST_KEY: Final = "request"
REQUEST_ID_KEY: Final = "request_id"
USER_KEY: Final = "user_id"

#: The store behind :func:`request_context`, with the keys above.
REQUEST_STORE = ContextStore(
    "contextual.request", defaults={REQUEST_KEY: None, REQUEST_ID_KEY: None, USER_KEY: None}
)
_REQUESTS: Final = backend_of(REQUEST_STORE)
# The current request store values: one C-level call.
read_request: Final = _REQUESTS.get


def new_request_id() -> str:
    """Return a fresh request ID: 32 lowercase hex digits (a random UUID).

    .. versionadded:: 0.1.0
    """
    return uuid.uuid4().hex


_NO_EXTRA: Final[Mapping[str, Any]] = MappingProxyType({})


@final
class RequestContext(NamedTuple):
    """What :func:`request_context` opens: one request's ID, user and extras.

    Frozen: a request's context never changes once opened; open a nested
    :func:`request_context` to change it for a block. Picklable, so it
    travels to other processes with the request store. (A named tuple, for
    speed: one is made for every request.)

    Attributes:
        request_id: The request's ID.
        user_id: Who makes the request, or ``None``.
        extra: Any further values, read-only.

    .. versionadded:: 0.1.0
    """

    request_id: str
    user_id: Any = None
    extra: Mapping[str, Any] = _NO_EXTRA

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType can't be pickled; rebuild it from a dict.
        return (_rebuild, (self.request_id, self.user_id, dict(self.extra)))


def _rebuild(request_id: str, user_id: Any, extra: dict[str, Any]) -> RequestContext:
    return RequestContext(request_id, user_id, MappingProxyType(extra) if extra else _NO_EXTRA)


# RequestContext(request_id, user_id, extra) without NamedTuple's Python-level
# __new__: half the cost, and one is made for every request.
_new_request: Final = tuple.__new__


def _refused_request_id(request_id: object) -> TypeError:
    msg = (
        f"request_id must be a non-empty str, or None for a new one; got "
        f"{type(request_id).__name__} {request_id!r}."
    )
    return TypeError(msg)


class request_context(AsyncToo[RequestContext]):  # noqa: N801 (used like a function: with request_context(): ...)
    """Open a request: set its ID, user and extras for a block or a call.

    A context manager (``with``, ``async with``) whose target is the frozen
    :class:`RequestContext`, and a decorator for functions and coroutine
    functions, where every call opens its own request (with its own fresh
    ID when none was given). On exit the previous request, if any, is back,
    also when the block raises.

    Inside, :func:`current_request`, :func:`get_request_id` and
    :func:`get_current_user` return this request's values, in the same task,
    in tasks it creates, and in work propagated from it (a
    :class:`~contextual.ContextExecutor`, :func:`~contextual.to_thread`...).
    Other requests, concurrent tasks and the next request on a pooled thread
    never see them.

    One object serves one ``with`` block at a time.

    Args:
        request_id: The ID; a new one (:func:`new_request_id`) when ``None``.
        user_id: Who makes the request, if known.
        **extra: Any further values to carry with the request.

    Raises:
        TypeError: ``request_id`` is given and is not a non-empty str.

    Example:
        >>> from contextual import get_request_id, request_context
        >>> with request_context(request_id="r-42", user_id="ada") as request:
        ...     get_request_id(), request.user_id
        ('r-42', 'ada')
        >>> print(get_request_id())
        None

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_active", "_extra", "_request_id", "_user_id")

    def __init__(self, request_id: str | None = None, user_id: Any = None, **extra: Any) -> None:
        given: object = request_id  # checked at run time, whatever the annotation says
        if given is not None and not (isinstance(given, str) and given):
            raise _refused_request_id(given)
        self._request_id = request_id
        self._user_id = user_id
        self._extra = extra
        # While open: the values this entry set, by which the request
        # store's record knows the entry.
        self._active: dict[str, Any] | None = None

    def __enter__(self) -> RequestContext:
        if self._active is not None:
            msg = (
                "this request_context() is already open; it serves one 'with' block at "
                "a time. Call request_context(...) once for each block."
            )
            raise ScopeError(msg)
        request_id = self._request_id
        if request_id is None:
            request_id = new_request_id()
        extra = MappingProxyType(dict(self._extra)) if self._extra else _NO_EXTRA
        user_id = self._user_id
        request: RequestContext = _new_request(RequestContext, (request_id, user_id, extra))
        sets = {REQUEST_KEY: request, REQUEST_ID_KEY: request_id, USER_KEY: user_id}
        enter_scope(_REQUESTS, sets)
        self._active = sets
        return request

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sets, self._active = self._active, None
        if sets is None:
            msg = (
                "request_context() was exited without being entered. Use it as "
                "'with request_context(...):' so entry and exit pair up."
            )
            raise ScopeError(msg)
        exit_scope(_REQUESTS, sets)

    def __call__(self, fn: _F) -> _F:
        """Decorate ``fn``: every call opens its own request."""
        opener = functools.partial(request_context, self._request_id, self._user_id, **self._extra)
        return decorate(fn, opener, what="request_context()")


@final
class OpenRequest:
    """A request opened by :func:`open_request`: exiting it closes the request."""

    __slots__ = ("_sets",)

    def __init__(self, request_id: str, user_id: Any) -> None:
        request: RequestContext = _new_request(RequestContext, (request_id, user_id, _NO_EXTRA))
        self._sets = {REQUEST_KEY: request, REQUEST_ID_KEY: request_id, USER_KEY: user_id}
        enter_scope(_REQUESTS, self._sets)

    def __enter__(self) -> OpenRequest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        exit_scope(_REQUESTS, self._sets)


def open_request(request_id: str, user_id: Any = None) -> OpenRequest:
    """Open a request from trusted arguments; the middleware's fast path.

    The same as entering ``request_context(request_id, user_id)``, without
    the checks: ``request_id`` must be a non-empty str. Exit the result
    (``opened.__exit__(None, None, None)``) to close it.
    """
    return OpenRequest(request_id, user_id)


def current_request() -> RequestContext | None:
    """Return the request open here, or ``None`` outside any request.

    .. versionadded:: 0.1.0
    """
    # get(), not []: a test helper such as empty_stores() may have emptied
    # the store, defaults included.
    request: RequestContext | None = read_request().get(REQUEST_KEY)
    return request


def get_request_id() -> str | None:
    """Return the ID of the request open here, or ``None`` outside any request.

    .. versionadded:: 0.1.0
    """
    request_id: str | None = read_request().get(REQUEST_ID_KEY)
    return request_id


def get_current_user() -> Any:
    """Return the user of the request open here, or ``None``.

    ``None`` outside any request, and inside a request opened without a user.

    .. versionadded:: 0.1.0
    """
    return read_request().get(USER_KEY)
