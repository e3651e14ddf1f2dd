"""The request-ID header, shared by the WSGI and ASGI middleware.

An incoming request ID is untrusted input: it ends up in every log line and
in a response header. This module decides which IDs to keep, opens the
request with the kept (or a fresh) ID, logs what it refused in a form that
can't forge a log line, and writes the ID into response headers without
touching the other headers.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import TYPE_CHECKING, Any, AnyStr, Final, Generic, TypeVar, final

from contextual._request import new_request_id, open_request

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from contextual._store import StoreScope

__all__ = [
    "DEFAULT_HEADER",
    "LOGGED_CHARS",
    "RequestOpener",
    "escape_for_log",
    "is_valid_request_id",
    "logger",
    "replace_header",
]

#: Where refused request IDs are reported, as warnings.
logger: Final = logging.getLogger("contextual.integrations")

DEFAULT_HEADER: Final = "X-Request-ID"
#: How much of a refused value a log line shows.
LOGGED_CHARS: Final = 64

_VALID_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Printable ASCII: what a response header can carry back and a log line can
# show as is. No custom validator can let anything else through.
_SAFE: Final = re.compile(r"[ -~]+")
# An HTTP field name (RFC 9110, section 5.1).
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

_C = TypeVar("_C")


def is_valid_request_id(value: str) -> bool:
    """Return whether ``value`` is a request ID to keep: the default check.

    1 to 128 characters from ``A-Z a-z 0-9 . _ : -``.
    """
    return _VALID_ID.fullmatch(value) is not None


def escape_for_log(value: str) -> str:
    """Return ``value`` as a log line may show it: quoted, escaped, truncated.

    Everything outside printable ASCII is escaped (``ascii()``), CR, LF and
    the other line breaks included, so the result is one line whatever the
    value holds; values longer than :data:`LOGGED_CHARS` end in ``...``.
    """
    shown = ascii(value[:LOGGED_CHARS])
    return shown + "..." if len(value) > LOGGED_CHARS else shown


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


@final
class RequestOpener(Generic[_C]):
    """Choose a request's ID and user, and open the request with them.

    ``_C`` is what ``get_user`` receives: the WSGI environ, the ASGI scope.

    Args:
        header: The request-ID header's name; checked here.
        get_user: Returns the user for a request, or ``None``.
        validator: Replaces :func:`is_valid_request_id`.
        generator: Makes a new request ID.
        user_logger: Where a failing ``get_user`` is reported.

    Raises:
        ValueError: ``header`` is not an HTTP field name.
        TypeError: ``get_user``, ``validator`` or ``generator`` is not callable.
    """

    __slots__ = ("_generator", "_get_user", "_user_logger", "_validator", "header")

    def __init__(
        self,
        header: str,
        get_user: Callable[[_C], Any] | None,
        validator: Callable[[str], bool] | None,
        generator: Callable[[], str],
        user_logger: logging.Logger,
    ) -> None:
        # Checked at run time too: typos here would only show at the first request.
        name: object = header
        if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
            msg = (
                f"header must be an HTTP field name such as 'X-Request-ID' (letters, "
                f"digits and !#$%&'*+.^_`|~-), got {header!r}."
            )
            raise ValueError(msg)
        options: tuple[tuple[str, object], ...] = (
            ("get_user", get_user),
            ("validator", validator),
            ("generator", generator),
        )
        for option, value in options:
            if value is not None and not callable(value):
                msg = f"{option} must be callable or None, got {type(value).__name__} {value!r}."
                raise TypeError(msg)
            if inspect.iscoroutinefunction(value):
                msg = (
                    f"{option} must be a plain function: it runs before the request opens, "
                    f"where nothing can await it; got the coroutine function {value!r}. Look "
                    "the user up in the app instead, inside a nested request_context()."
                )
                raise TypeError(msg)
        self.header = header
        self._get_user = get_user
        self._validator = validator
        self._generator = generator
        self._user_logger = user_logger

    def open(self, values: Sequence[str], carrier: _C) -> tuple[StoreScope, str]:
        """Open the request; return the entered scope that closes it, and its ID.

        ``values`` holds every value the request-ID header came with. The
        problems found on the way are logged inside the request, so that the
        log lines carry its new ID. The caller exits the returned context.
        """
        request_id, rejected, reason, check_error = self._choose(values)
        user: Any = None
        user_error: Exception | None = None
        if self._get_user is not None:
            try:
                user = self._get_user(carrier)
                if inspect.isawaitable(user):
                    # An object with async __call__: nothing here can await it.
                    getattr(user, "close", _no_op)()  # a coroutine: no "never awaited"
                    user = None
                    msg = "get_user returned an awaitable; it must return the user itself."
                    raise TypeError(msg)  # noqa: TRY301 (reported with the other failures)
            except Exception as exc:  # noqa: BLE001 (documented: a failing lookup means no user)
                user = None
                user_error = exc
        request = open_request(request_id, user)
        try:
            if rejected is not None:
                logger.warning(
                    "Refused the %s header (%s): %s; using the new request ID %s instead.",
                    self.header,
                    reason,
                    escape_for_log(rejected),
                    request_id,
                    exc_info=check_error,
                )
            if user_error is not None:
                self._user_logger.error(
                    "get_user raised; the request goes on with no user.", exc_info=user_error
                )
        except BaseException:
            # A logger's filter may raise: the request must not stay open.
            request.__exit__(None, None, None)
            raise
        return request, request_id

    def _choose(self, values: Sequence[str]) -> tuple[str, str | None, str, Exception | None]:
        """Return the request ID, the refused value, why, and the validator's error."""
        if not values:
            return self._new_id(), None, "", None
        if len(values) > 1:
            return self._new_id(), ", ".join(values), f"{len(values)} values", None
        value = values[0]
        try:
            accepted = self._accepts(value)
        except Exception as exc:  # noqa: BLE001 (a broken validator must not fail requests)
            return self._new_id(), value, "the validator raised", exc
        if accepted:
            return value, None, "", None
        return self._new_id(), value, "not a valid request ID", None

    def _new_id(self) -> str:
        """Return a new ID from the generator, or a safe one if it misbehaves."""
        try:
            request_id: object = self._generator()
        except Exception:
            logger.exception("The request ID generator raised; using a random ID instead.")
            return new_request_id()
        if isinstance(request_id, str) and _SAFE.fullmatch(request_id) is not None:
            return request_id
        # It goes out in a response header and into every log line.
        logger.error(
            "The request ID generator returned %s, not a non-empty str of printable "
            "ASCII; using a random ID instead.",
            escape_for_log(repr(request_id)),
        )
        return new_request_id()

    def _accepts(self, value: str) -> bool:
        if self._validator is None:
            return _VALID_ID.fullmatch(value) is not None  # is_valid_request_id, inlined
        # Whatever the validator says, the ID goes back out in a header.
        return _SAFE.fullmatch(value) is not None and bool(self._validator(value))
