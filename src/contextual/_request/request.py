"""Request context: the request ID and user that every log line should carry.

Built on one ``"context"`` store, so a request's values follow its asyncio
tasks and travel through everything in the propagation layer
(:class:`~contextual.ContextExecutor`, :func:`~contextual.capture`...).
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, NamedTuple, TypeVar, final

from contextual._core.decorate import AsyncToo, decorate
from contextual._core.errors import NoRequestError, ScopeError
from contextual._core.store import ContextStore, backend_of, enter_scope, exit_scope

__all__ = [
    "REQUEST_ID_KEY",
    "REQUEST_KEY",
    "REQUEST_STORE",
    "USER_KEY",
    "Deferred",
    "RequestContext",
    "current_request",
    "get_current_user",
    "get_request_id",
    "new_request_id",
    "open_request",
    "read_request",
    "request_context",
    "resolved",
    "resolved_safely",
    "update_request",
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

_PENDING: Final = object()


@final
class Deferred:
    """A request's user, looked up on its first read and then kept.

    The middleware of frameworks whose user is loaded lazily (Django's
    ``request.user``) opens the request with one, so that a request that
    never logs never queries for its user. Every reader of the user
    resolves it (:func:`resolved`): :func:`get_current_user`,
    :func:`current_request`, the log filter and its peers, and the ways out
    of the process (:meth:`~contextual.Snapshot.to_dict`, pickling).

    ``fn`` runs once, under a lock, in whichever thread reads first. A read
    from inside ``fn`` itself (a log line of the query it makes) gets
    ``None`` instead of waiting on itself. If ``fn`` raises, the reader gets
    the exception and the next read calls ``fn`` again: ``fn`` should catch
    and report its own errors and return ``None``.
    """

    __slots__ = ("_busy", "_fn", "_lock", "_value")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn: Callable[[], Any] | None = fn
        self._value: Any = _PENDING
        self._busy = False
        # Re-entrant: fn's own log lines read the user in the same thread.
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = "pending" if self._value is _PENDING else repr(self._value)
        return f"<Deferred user: {state}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Another process gets the user itself, never the lookup.
        return (_identity, (resolved_safely(self),))

    def get(self) -> Any:
        """Return the user, looking it up first if no read has yet."""
        value = self._value
        if value is not _PENDING:
            return value
        with self._lock:
            value = self._value
            if value is not _PENDING or self._busy:
                return None if value is _PENDING else value
            fn = self._fn
            assert fn is not None  # noqa: S101 (only cleared once the value is set)
            self._busy = True
            try:
                value = fn()
            finally:
                self._busy = False
            self._value = value
            self._fn = None  # the lookup may hold the whole request
        return value


def _identity(value: Any) -> Any:
    return value


def resolved(user: Any) -> Any:
    """Return ``user``, or the user a :class:`Deferred` stands for."""
    return user.get() if type(user) is Deferred else user


def resolved_safely(user: Any) -> Any:
    """Like :func:`resolved`, but ``None`` if the lookup raises: for log lines and senders.

    The lookup reports its own errors (see :class:`Deferred`); a log call or
    a message must not fail because of it.
    """
    if type(user) is not Deferred:
        return user
    try:
        return user.get()
    except Exception:  # noqa: BLE001 (the lookup's own error, reported by it)
        return None


@final
class RequestContext(NamedTuple):
    """What :func:`request_context` opens: one request's ID, user and extras.

    Frozen: one object never changes. :func:`update_request` replaces the
    request's object with one that has the new user or extras, for the rest
    of the request; a nested :func:`request_context` opens another request
    for a block. Picklable, so it travels to other processes with the
    request store. (A named tuple, for speed: one is made for every
    request.)

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
        return (_rebuild, (self.request_id, resolved_safely(self.user_id), dict(self.extra)))


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
    if request is not None and type(request.user_id) is Deferred:
        return request._replace(user_id=request.user_id.get())
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
    user = read_request().get(USER_KEY)
    return user.get() if type(user) is Deferred else user


_KEEP: Final = object()


def update_request(*, user_id: Any = _KEEP, **extra: Any) -> RequestContext:
    """Set the user, or extra values, for the rest of the request open here.

    For the user known only once the request has started: after login, in
    a framework's ``before_request`` hook, in a user loader. From then on
    :func:`get_current_user`, :func:`current_request` and every log line of
    the request agree on it. The change lasts until the request closes,
    when the request store is back as it was before the request, and it is
    made in the current context only: work already handed to a
    :class:`~contextual.ContextExecutor` or a task already created keeps
    the values it started with, and a change made in such work (a pooled
    task, a child task) stays there, as every write does.

    Inside a nested :func:`request_context`, the change is the nested
    request's, and ends with it.

    Args:
        user_id: The request's user from now on; the current one if not given.
        **extra: Values to add to (or replace in) the request's ``extra``.

    Returns:
        The request as it now is.

    Raises:
        NoRequestError: No request is open here. Open one with
            :func:`request_context`, or let the web framework's middleware
            open one for each request.
        TypeError: ``request_id=`` or ``extra=`` is given: a request keeps
            its ID (open a nested :func:`request_context` for another), and
            extra values are keywords of their own.

    Example:
        >>> from contextual import get_current_user, request_context, update_request
        >>> with request_context(request_id="r-42"):
        ...     request = update_request(user_id="ada", plan="pro")
        ...     get_current_user(), request.extra["plan"]
        ('ada', 'pro')

    .. versionadded:: 0.2.0
    """
    for refused in ("request_id", "extra"):
        if refused in extra:
            msg = (
                f"update_request() doesn't take {refused}=: a request keeps its ID, and extra "
                f"values are passed as keywords (update_request(plan='pro')). For a block with "
                f"another ID, open a nested request_context(request_id=...)."
            )
            raise TypeError(msg)
    values = read_request()
    request: RequestContext | None = values.get(REQUEST_KEY)
    if request is None:
        msg = (
            "update_request() needs an open request, and none is open here. Call it inside "
            "'with request_context(...):', or in code the middleware runs for a request "
            "(a view, a before_request hook, a user loader); work started outside a "
            "request, or a thread not started with the request's context, has none."
        )
        raise NoRequestError(msg)
    if user_id is _KEEP:
        user_id = request.user_id
    merged = MappingProxyType({**request.extra, **extra}) if extra else request.extra
    updated: RequestContext = _new_request(RequestContext, (request.request_id, user_id, merged))
    REQUEST_STORE.update({REQUEST_KEY: updated, USER_KEY: user_id})
    return updated
