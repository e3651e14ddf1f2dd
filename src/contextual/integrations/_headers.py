"""The request-ID header, shared by the WSGI and ASGI middleware.

An incoming request ID is untrusted input: it ends up in every log line and
in a response header. This module decides which IDs to keep, opens the
request with the kept (or a fresh) ID, logs what it refused in a form that
can't forge a log line, and writes the ID into response headers without
touching the other headers. With a Baggage allow-list, it also restores
the allowed values an incoming Baggage header carries, for the request.
Every request it opens puts the ``propagate=True`` ``"thread"`` stores back
as they were when it began, once it closes (for requests that overlap on
one thread, an event loop's: once the last of them closes, as they were
when the first began), and runs the hooks registered with
:func:`on_request_opened` (OpenTelemetry's, to put the request ID on the
request's span).
The rule for request IDs, the escaping of log lines, and the request rebuilt
from what arrived are ``contextual._propagation.wire``'s.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import threading
from typing import TYPE_CHECKING, Any, AnyStr, Final, Generic, TypeAlias, TypeVar, final

from contextual._core.backends import Saved
from contextual._core.fork import after_fork_in_child, renew_locks_after_fork
from contextual._core.store import REGISTRY, carried_thread_backends
from contextual._propagation.wire import (
    Reported,
    escape_for_log,
    generate_request_id,
    rebuild_request,
)
from contextual._request.request import open_request

from ._baggage import read
from ._carrier import applied

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from types import TracebackType

    from typing_extensions import Self

    from contextual._propagation.wire import Arrival, Problem

    from ._carrier import AllowList

__all__ = [
    "DEFAULT_HEADER",
    "Opened",
    "RequestOpener",
    "check_callable",
    "check_header_name",
    "logger",
    "on_request_opened",
    "replace_header",
    "report_once",
]

#: Where refused request IDs are reported, as warnings, and failing hooks, as errors.
logger: Final = logging.getLogger("contextual.integrations")

DEFAULT_HEADER: Final = "X-Request-ID"

# An HTTP field name (RFC 9110, section 5.1).
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# How a WSGI environ (and Django's request.META) spells a request header.
_ENVIRON_PREFIX: Final = "HTTP_"

_C = TypeVar("_C")

#: What :meth:`RequestOpener.open` returns: exit it to close the request.
Opened: TypeAlias = contextlib.AbstractContextManager[Any]

# The kinds of problems reported so far, so that a client sending the same
# bad header on every request can't flood the log.
_reported: Final = Reported()


def check_callable(option: str, value: object) -> None:
    """Raise :class:`TypeError` unless ``value`` is None or a plain (not async) callable."""
    if value is not None and not callable(value):
        msg = f"{option} must be callable or None, got {type(value).__name__} {value!r}."
        raise TypeError(msg)
    if inspect.iscoroutinefunction(value):
        msg = (
            f"{option} must be a plain function: it runs before the request or task "
            f"starts, where nothing can await it; got the coroutine function {value!r}."
        )
        if option == "get_user":
            msg += (
                " Look the user up in the app instead, and set it for the rest of the "
                "request with update_request(user_id=...)."
            )
        raise TypeError(msg)


def check_header_name(header: object) -> str:
    """Return ``header`` if it is an HTTP field name; raise :class:`ValueError` if not.

    A name spelled the way a WSGI environ (and Django's ``request.META``)
    keys a header, ``HTTP_X_REQUEST_ID``, is refused too: no header is named
    that, so it would never match. The message gives the header's own name.
    """
    if not isinstance(header, str) or _TOKEN.fullmatch(header) is None:
        msg = (
            f"header must be an HTTP field name such as 'X-Request-ID' (letters, "
            f"digits and !#$%&'*+.^_`|~-), got {header!r}."
        )
        raise ValueError(msg)
    if header[: len(_ENVIRON_PREFIX)].upper() == _ENVIRON_PREFIX:
        msg = (
            f"header={header!r} is the WSGI environ (Django request.META) spelling; "
            f"pass the header's own name: header={_header_form(header)!r}."
        )
        raise ValueError(msg)
    return header


def _header_form(environ_key: str) -> str:
    """Return the header an environ key such as ``HTTP_X_REQUEST_ID`` stands for."""
    words = environ_key[len(_ENVIRON_PREFIX) :].replace("_", "-").split("-")
    # "ID" as the default header spells it, rather than "Id".
    name = "-".join("ID" if word.upper() == "ID" else word.capitalize() for word in words)
    return name.strip("-") or DEFAULT_HEADER


def report_once(problems: Iterable[Problem]) -> None:
    """Log each kind of problem the first time this process meets it, as a warning.

    Problems show what came from a header or from stores escaped already,
    so they can't forge a log line.
    """
    for kind, text in problems:
        if _reported.first(kind):
            logger.warning("%s Later problems of this kind are not reported.", text)


def replace_header(
    headers: Iterable[Sequence[AnyStr]], name: AnyStr, value: AnyStr
) -> list[tuple[AnyStr, AnyStr]]:
    """Return ``headers`` with ``name`` set to ``value``, every other pair kept.

    Names compare case-insensitively. Pairs of other names stay, in order,
    repeated ones (several ``Set-Cookie``) included. The first pair named
    ``name`` is replaced in place and any further ones are dropped; without
    one, the pair is appended. ``headers`` itself is never modified.
    """
    wanted = name.lower()
    result: list[tuple[AnyStr, AnyStr]] = []
    placed = False
    for pair_name, pair_value in headers:
        if pair_name.lower() != wanted:
            result.append((pair_name, pair_value))
        elif not placed:
            result.append((name, value))
            placed = True
    if not placed:
        result.append((name, value))
    return result


@final
class _Hooks:
    """The hooks :func:`on_request_opened` registered, in order.

    ``called`` is rebuilt under ``_hooks_lock`` and read without it, on
    every request: rebinding one attribute is atomic on every build, so a
    request calls the old hooks or the new ones, never a mix.
    """

    __slots__ = ("called",)

    def __init__(self) -> None:
        self.called: tuple[Callable[[str], object], ...] = ()


_hooks: Final = _Hooks()
_hooks_lock = threading.Lock()


def on_request_opened(hook: Callable[[str], object]) -> Callable[[], None]:
    """Call ``hook(request_id)`` in every request a :class:`RequestOpener` opens from now on.

    The hook runs inside the request, once it is open (its ID, user and
    baggage are set), in the thread or task that serves it, before the app
    runs: what it reads and logs belongs to the request. Hooks run in the
    order they were registered; one registered twice runs twice. If one
    raises, the error is logged with its traceback on the
    ``contextual.integrations`` logger, inside the request, each time (like
    a failing ``get_user``: the line carries the request's ID, and a hook
    that fails for some requests only would hide after a first report), and
    the request goes on: a hook never fails a request. Keep hooks fast;
    they run on every request.

    Returns:
        A function that removes this registration; calling it again does
        nothing.

    Raises:
        TypeError: ``hook`` is not callable, or is a coroutine function
            (nothing can await it where it runs).
    """
    _check_hook(hook)
    with _hooks_lock:
        _hooks.called = (*_hooks.called, hook)
    registered = [hook]

    def remove() -> None:
        with _hooks_lock:
            if not registered:
                return
            registered.clear()
            called = list(_hooks.called)
            # By identity: equal but distinct objects are other registrations.
            del called[next(i for i, h in enumerate(called) if h is hook)]
            _hooks.called = tuple(called)

    return remove


def _check_hook(hook: object) -> None:
    if not callable(hook):
        msg = f"hook must be callable, got {type(hook).__name__} {hook!r}."
        raise TypeError(msg)
    if inspect.iscoroutinefunction(hook):
        msg = (
            "hook must be a plain function: it runs as the request opens, where "
            f"nothing can await it; got the coroutine function {hook!r}."
        )
        raise TypeError(msg)


def _call_hooks(hooks: tuple[Callable[[str], object], ...], request_id: str) -> None:
    for hook in hooks:
        try:
            hook(request_id)
        except Exception:  # noqa: PERF203 (documented: a failing hook never fails the request)
            logger.exception("The request hook %r raised; the request goes on.", hook)


# What closes a request before it is open: nothing.
_NOT_OPEN: Final = contextlib.nullcontext()


class _PuttingBack:
    """An opened request that, when it closes, has thread stores put back.

    Made as the request begins, before it is open: closed then (the
    request failed to open), it only has the stores put back.
    """

    __slots__ = ("_opened",)

    _opened: Opened

    def around(self, opened: Opened) -> Self:
        """Close ``opened`` too, first; return this."""
        self._opened = opened
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._opened.__exit__(exc_type, exc, tb)
        finally:
            self._put_back()

    def _put_back(self) -> None:
        raise NotImplementedError


@final
class _Once(_PuttingBack):
    """Puts the thread stores back as the request found them, when it closes.

    Only in the thread that opened it: a ``close()`` from another thread
    (rare, and against :pep:`3333`'s spirit) must not give that thread the
    opening thread's values.
    """

    __slots__ = ("_saved", "_thread")

    def __init__(self) -> None:
        self._opened = _NOT_OPEN
        self._saved = Saved(carried_thread_backends())
        self._thread = threading.get_ident()

    def _put_back(self) -> None:
        if threading.get_ident() == self._thread:
            self._saved.restore()


@final
class _Overlapping:
    """The requests an overlapping opener has open in one thread, and what the first found.

    One per thread. Requests that overlap there (on an event loop) share
    its thread stores, so none of them can put back what it found alone:
    the last to close would put back what another one wrote. The first to
    open saves the stores, the last to close puts them back.
    """

    __slots__ = ("_open", "_saved", "_thread", "_view")

    def __init__(self) -> None:
        # One item per open request rather than an int: append() and pop()
        # are atomic on every build, so a request closed from another thread
        # can't lose a count.
        self._open: list[None] = []
        self._saved = Saved()
        self._thread = threading.get_ident()
        self._view: object = None

    def begin(self, view: object) -> Self:
        """Count a request opening in this thread; ``view`` is the registry's."""
        if not self._open:
            self._saved = Saved(carried_thread_backends())
            self._view = view
        elif view is not self._view:
            # Stores defined since the first request began: as this one finds them.
            self._saved.add(carried_thread_backends())
            self._view = view
        self._open.append(None)
        return self

    def close(self) -> None:
        """Count a request closing; the last one here puts the thread stores back."""
        requests = self._open
        requests.pop()
        # From another thread: counted, but that thread's stores are its own.
        if not requests and threading.get_ident() == self._thread:
            self._saved.restore()


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.requests = _Overlapping()


_per_thread: Final = _PerThread()


@after_fork_in_child
def _forget_open_requests() -> None:  # pragma: no cover - runs in forked children only
    # The parent's open requests never close in the child: counted, they
    # would keep its thread stores from ever being put back.
    _per_thread.requests = _Overlapping()


@final
class _Last(_PuttingBack):
    """Puts the thread stores back when the last request open in the thread closes."""

    __slots__ = ("_requests",)

    def __init__(self, requests: _Overlapping) -> None:
        self._opened = _NOT_OPEN
        self._requests = requests

    def _put_back(self) -> None:
        self._requests.close()


def _no_op() -> None:  # pragma: no cover - for awaitables without close(), rare
    pass


def _lookup_user(get_user: Callable[[_C], Any], carrier: _C) -> tuple[Any, Exception | None]:
    """Return the user ``get_user`` gives, or ``None`` and the error it raised."""
    try:
        user = get_user(carrier)
        if inspect.isawaitable(user):
            # An object with async __call__: nothing here can await it.
            getattr(user, "close", _no_op)()  # a coroutine: no "never awaited"
            msg = "get_user returned an awaitable; it must return the user itself."
            raise TypeError(msg)  # noqa: TRY301 (reported with the other failures)
    except Exception as exc:  # noqa: BLE001 (documented: a failing lookup means no user)
        return None, exc
    return user, None


@final
class RequestOpener(Generic[_C]):
    """Choose a request's ID and user, and open the request with them.

    ``_C`` is what ``get_user`` receives: the WSGI environ, the ASGI scope.

    Args:
        header: The request-ID header's name; checked here.
        get_user: Returns the user for a request, or ``None``.
        validator: Replaces :func:`~contextual._propagation.wire.is_valid_request_id`.
        generator: Makes a new request ID.
        user_logger: Where a failing ``get_user`` is reported.
        baggage: The stores and keys to restore from the Baggage header, or
            ``None`` to leave it alone.
        overlapping: Whether requests may overlap in one thread, as they do
            on an event loop (ASGI, Django's async path). Then the
            ``propagate=True`` ``"thread"`` stores, which the requests of a
            thread share, are put back once the last request open in the
            thread closes, as they were when the first one began; not when
            each one closes, which would let the last to close put back a
            value another one wrote. The count of open requests is the
            thread's, shared by every overlapping opener (two middleware on
            one loop). ``False`` (WSGI: one request at a time per thread)
            puts them back when each request closes, as it found them.

    Raises:
        ValueError: ``header`` is not an HTTP field name.
        TypeError: ``get_user``, ``validator`` or ``generator`` is not callable.
    """

    __slots__ = (
        "_baggage",
        "_generator",
        "_get_user",
        "_overlapping",
        "_user_logger",
        "_validator",
        "header",
    )

    def __init__(  # noqa: PLR0913 (one argument per middleware option)
        self,
        header: str,
        get_user: Callable[[_C], Any] | None,
        validator: Callable[[str], bool] | None,
        generator: Callable[[], str],
        user_logger: logging.Logger,
        *,
        baggage: AllowList | None = None,
        overlapping: bool = False,
    ) -> None:
        # Checked at run time too: typos here would only show at the first request.
        check_header_name(header)
        options: tuple[tuple[str, object], ...] = (
            ("get_user", get_user),
            ("validator", validator),
            ("generator", generator),
        )
        for option, value in options:
            check_callable(option, value)
        self.header = header
        self._get_user = get_user
        self._validator = validator
        self._generator = generator
        self._user_logger = user_logger
        self._baggage = baggage
        self._overlapping = overlapping

    def open(
        self,
        values: Sequence[str],
        carrier: _C,
        baggage: Sequence[str] = (),
        *,
        user: Any = None,
    ) -> tuple[Opened, str]:
        """Open the request; return the entered context that closes it, and its ID.

        ``values`` holds every value the request-ID header came with,
        ``baggage`` every value of the Baggage header. The problems found on
        the way are logged inside the request, so that the log lines carry
        its new ID. The caller exits the returned context.

        The request's user is what ``get_user`` returns; when there is no
        ``get_user`` or it returns ``None`` (without raising), ``user``
        (what the framework knows already, say), if not ``None``; and
        failing that the request store's ``user_id`` among allowed
        baggage. Allowed baggage is set for the request; its
        ``request_id`` never comes from baggage.

        Once the request is open, the hooks registered with
        :func:`on_request_opened` run in it. When it closes, in this thread,
        every ``propagate=True`` ``"thread"`` store is put back as it was
        when ``open`` was called (as :meth:`Snapshot.run
        <contextual.Snapshot.run>` puts its thread back), so that a value the
        app left in one doesn't reach the thread's next request. With
        ``overlapping``, when the last request open in this thread closes,
        they are put back as they were when the first one was opened (a
        store defined since then, as the first request opened after it
        found it). A store defined while a request is open is not put back
        by that request.
        """
        # Read first: the request begins here, get_user included. Where no
        # such store exists, this check is all a request pays. (While one
        # is counted open in this thread, the stores it saved are held
        # alive, so they are listed: the next request is counted too.)
        view = REGISTRY.view.carried_by_thread
        putting_back = self._begin(view) if view else None
        # What closes what is open so far, should opening the request fail.
        opened: Opened = _NOT_OPEN if putting_back is None else putting_back
        try:
            carried: dict[str, dict[str, Any]] | None = None
            problems: list[Problem] | None = None
            if self._baggage is not None and baggage:
                carried, problems = read(",".join(baggage), self._baggage)
            arrival = rebuild_request(
                values[0] if len(values) == 1 else None, carried, self._validator
            )
            request_id = arrival.request_id
            rejected = None
            reason = ""
            if request_id is None:
                request_id, rejected, reason = self._refuse(values, arrival)
            found, user_error = (
                (None, None) if self._get_user is None else _lookup_user(self._get_user, carrier)
            )
            if found is None and user_error is None:
                found = arrival.user if user is None else user
            request = open_request(request_id, found)
            opened = request if putting_back is None else putting_back.around(request)
            if rejected is not None or user_error is not None:
                self._report(request_id, rejected, reason, arrival.error, user_error)
            if problems:
                report_once(problems)
            if carried:
                stack = contextlib.ExitStack()
                stack.push(opened)
                opened = stack
                stack.enter_context(applied(carried))
            hooks = _hooks.called
            if hooks:
                _call_hooks(hooks, request_id)
        except BaseException:
            # A logger's filter may raise: the request must not stay open, and
            # the count of requests open in this thread must stay right.
            opened.__exit__(None, None, None)
            raise
        return opened, request_id

    def _begin(self, view: object) -> _PuttingBack:
        """Save what a request opening in this thread puts back when it closes."""
        return _Last(_per_thread.requests.begin(view)) if self._overlapping else _Once()

    def _report(
        self,
        request_id: str,
        rejected: str | None,
        reason: str,
        error: Exception | None,
        user_error: Exception | None,
    ) -> None:
        """Log the refused header value and the failing ``get_user``, where there are some."""
        if rejected is not None:
            logger.warning(
                "Refused the %s header (%s): %s; using the new request ID %s instead.",
                self.header,
                reason,
                escape_for_log(rejected),
                request_id,
                exc_info=error,
            )
        if user_error is not None:
            self._user_logger.error(
                "get_user raised; the request goes on with no user.", exc_info=user_error
            )

    def _refuse(self, values: Sequence[str], arrival: Arrival) -> tuple[str, str | None, str]:
        """Return a new request ID, the header's value that was refused (if any), and why."""
        if not values:
            return self._new_id(), None, ""
        if len(values) > 1:
            return self._new_id(), ", ".join(values), f"{len(values)} values"
        why = "not a valid request ID" if arrival.error is None else "the validator raised"
        return self._new_id(), values[0], why

    def _new_id(self) -> str:
        """Return a new ID from the generator, or a safe one if it misbehaves."""
        generated = generate_request_id(self._generator)
        if generated.error is not None:
            logger.error(
                "The request ID generator raised; using a random ID instead.",
                exc_info=generated.error,
            )
        elif generated.refused is not None:
            # It goes out in a response header and into every log line.
            logger.error(
                "The request ID generator returned %s, not a non-empty str of printable "
                "ASCII; using a random ID instead.",
                generated.refused,
            )
        return generated.request_id


renew_locks_after_fork(globals(), "_hooks_lock")
