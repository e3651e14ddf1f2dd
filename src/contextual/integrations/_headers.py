"""The request-ID header, shared by the WSGI and ASGI middleware.

An incoming request ID is untrusted input: it ends up in every log line and
in a response header. This module decides which IDs to keep, opens the
request with the kept (or a fresh) ID, logs what it refused in a form that
can't forge a log line, and writes the ID into response headers without
touching the other headers. With a Baggage allow-list, it also restores
the allowed values an incoming Baggage header carries, for the request.
The rule for request IDs, the escaping of log lines, and the request rebuilt
from what arrived are ``contextual._propagation.wire``'s.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
from typing import TYPE_CHECKING, Any, AnyStr, Final, Generic, TypeAlias, TypeVar, final

from contextual import new_request_id
from contextual._propagation.wire import (
    Reported,
    escape_for_log,
    is_printable_ascii,
    rebuild_request,
)
from contextual._request.request import open_request

from ._baggage import read
from ._carrier import applied

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from contextual._propagation.wire import Arrival, Problem

    from ._carrier import AllowList

__all__ = [
    "DEFAULT_HEADER",
    "Opened",
    "RequestOpener",
    "check_callable",
    "check_header_name",
    "logger",
    "replace_header",
    "report_once",
]

#: Where refused request IDs are reported, as warnings.
logger: Final = logging.getLogger("contextual.integrations")

DEFAULT_HEADER: Final = "X-Request-ID"

# An HTTP field name (RFC 9110, section 5.1).
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

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
            msg += " Look the user up in the app instead, inside a nested request_context()."
        raise TypeError(msg)


def check_header_name(header: object) -> str:
    """Return ``header`` if it is an HTTP field name; raise :class:`ValueError` if not."""
    if not isinstance(header, str) or _TOKEN.fullmatch(header) is None:
        msg = (
            f"header must be an HTTP field name such as 'X-Request-ID' (letters, "
            f"digits and !#$%&'*+.^_`|~-), got {header!r}."
        )
        raise ValueError(msg)
    return header


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

    Raises:
        ValueError: ``header`` is not an HTTP field name.
        TypeError: ``get_user``, ``validator`` or ``generator`` is not callable.
    """

    __slots__ = ("_baggage", "_generator", "_get_user", "_user_logger", "_validator", "header")

    def __init__(  # noqa: PLR0913 (one argument per middleware option)
        self,
        header: str,
        get_user: Callable[[_C], Any] | None,
        validator: Callable[[str], bool] | None,
        generator: Callable[[], str],
        user_logger: logging.Logger,
        *,
        baggage: AllowList | None = None,
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

    def open(
        self, values: Sequence[str], carrier: _C, baggage: Sequence[str] = ()
    ) -> tuple[Opened, str]:
        """Open the request; return the entered context that closes it, and its ID.

        ``values`` holds every value the request-ID header came with,
        ``baggage`` every value of the Baggage header. The problems found on
        the way are logged inside the request, so that the log lines carry
        its new ID. The caller exits the returned context.

        Allowed baggage is set for the request. The request store's
        ``user_id`` among it is the request's user when there is no
        ``get_user`` or it returns ``None``; its ``request_id`` never comes
        from baggage.
        """
        carried: dict[str, dict[str, Any]] | None = None
        problems: list[Problem] | None = None
        if self._baggage is not None and baggage:
            carried, problems = read(",".join(baggage), self._baggage)
        arrival = rebuild_request(values[0] if len(values) == 1 else None, carried, self._validator)
        request_id = arrival.request_id
        rejected = None
        if request_id is None:
            request_id, rejected, reason = self._refuse(values, arrival)
        user: Any = None
        user_error: Exception | None = None
        if self._get_user is not None:
            user, user_error = _lookup_user(self._get_user, carrier)
        if user is None and user_error is None:
            user = arrival.user
        request = open_request(request_id, user)
        opened: Opened = request
        try:
            if rejected is not None:
                logger.warning(
                    "Refused the %s header (%s): %s; using the new request ID %s instead.",
                    self.header,
                    reason,
                    escape_for_log(rejected),
                    request_id,
                    exc_info=arrival.error,
                )
            if user_error is not None:
                self._user_logger.error(
                    "get_user raised; the request goes on with no user.", exc_info=user_error
                )
            if problems:
                report_once(problems)
            if carried:
                stack = contextlib.ExitStack()
                stack.push(request)
                stack.enter_context(applied(carried))
                opened = stack
        except BaseException:
            # A logger's filter may raise: the request must not stay open.
            request.__exit__(None, None, None)
            raise
        return opened, request_id

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
        try:
            request_id: object = self._generator()
        except Exception:
            logger.exception("The request ID generator raised; using a random ID instead.")
            return new_request_id()
        if isinstance(request_id, str) and is_printable_ascii(request_id):
            return request_id
        # It goes out in a response header and into every log line.
        logger.error(
            "The request ID generator returned %s, not a non-empty str of printable "
            "ASCII; using a random ID instead.",
            escape_for_log(repr(request_id)),
        )
        return new_request_id()
