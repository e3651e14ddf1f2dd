"""Django: run every request in its own request context (extra ``django``).

Add the middleware after Django's ``AuthenticationMiddleware``::

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "contextual.integrations.django.RequestContextMiddleware",
        # ...
    ]

and give it options, if any, in one ``CONTEXTUAL`` setting (a dict; every
key may be left out):

``"HEADER"``
    The request and response header that carries the request ID, spelled as
    a header (``"X-Request-ID"``, the default), not as ``request.META``
    spells it.
``"ECHO"``
    Whether to set the ID in the response header (default ``True``).
``"GET_USER"``
    What to log as the user: a function, or the dotted path of one, called
    with the authenticated ``request.user`` (never with an anonymous one)
    that returns the value, or ``None``. The default logs the user's primary
    key (``user.pk``). It must not query the database: under ASGI it runs in
    the event loop. ``None`` logs no user, and then the middleware needs no
    ``AuthenticationMiddleware``.
``"VALIDATOR"``
    Decides which incoming IDs to keep, instead of the default check: a
    function of the ID that returns a bool, or its dotted path.
``"GENERATOR"``
    Makes a new request ID: a function, or its dotted path (default
    :func:`~contextual.new_request_id`).
``"BAGGAGE"``
    The stores and keys to take from the request's ``baggage`` header, as
    for :class:`contextual.integrations.wsgi.RequestContextMiddleware`
    (default ``None``: nothing).

The middleware checks the setting when Django loads it (at startup, when
the server builds the WSGI or ASGI application): a wrong value raises
:class:`~django.core.exceptions.ImproperlyConfigured` naming the key and
saying what it takes. The how-to :doc:`/howto/django` shows the
``LOGGING`` setting that puts the request ID and user in every log line.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias, final

from contextual import get_current_user, new_request_id
from contextual._request.request import Deferred

from ._carrier import AllowList
from ._extra import missing_library
from ._headers import DEFAULT_HEADER, RequestOpener, check_callable

if TYPE_CHECKING:
    from ._carrier import AllowSpec

__all__ = ["RequestContextMiddleware"]

# Django ships no type information (no py.typed). Imported through
# importlib, its objects are Any: mypy --strict holds whether or not Django
# (or django-stubs) is installed where it runs.
try:
    # Django's own dependency, typed.
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction

    _settings: Any = importlib.import_module("django.conf").settings
    _ImproperlyConfigured: type[Exception] = importlib.import_module(
        "django.core.exceptions"
    ).ImproperlyConfigured
    _import_string: Callable[[str], Any] = importlib.import_module(
        "django.utils.module_loading"
    ).import_string
    _FileResponse: type[Any] = importlib.import_module("django.http").FileResponse
    _connections: Any = importlib.import_module("django.db").connections
except ImportError as exc:
    raise missing_library(__name__, "Django", "django", exc) from exc

_logger = logging.getLogger(__name__)

#: Django's ``HttpRequest`` and ``HttpResponse`` (untyped: see above).
_Request: TypeAlias = Any
_Response: TypeAlias = Any

_SETTING: Final = "CONTEXTUAL"
_KEYS: Final = ("BAGGAGE", "ECHO", "GENERATOR", "GET_USER", "HEADER", "VALIDATOR")
_PATH: Final = "contextual.integrations.django.RequestContextMiddleware"
_AUTH: Final = "django.contrib.auth.middleware.AuthenticationMiddleware"


def _primary_key(user: Any) -> Any:
    return user.pk


def _improperly_configured(key: str, problem: str) -> Exception:
    return _ImproperlyConfigured(f"settings.{_SETTING}[{key!r}]: {problem}")


def _options() -> dict[str, Any]:
    """Return the ``CONTEXTUAL`` setting, checked for its shape and its keys."""
    options: object = getattr(_settings, _SETTING, {})
    if not isinstance(options, Mapping):
        msg = (
            f"settings.{_SETTING} must be a dict of the request-context middleware's "
            f"options, such as {{'HEADER': 'X-Request-ID'}}; got "
            f"{type(options).__name__} {options!r}."
        )
        raise _ImproperlyConfigured(msg)
    unknown = sorted(str(key) for key in options if key not in _KEYS)
    if unknown:
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(key.upper(), _KEYS, n=1))
            else repr(key)
            for key in unknown
        ]
        msg = (
            f"settings.{_SETTING} has keys the request-context middleware doesn't know: "
            f"{', '.join(hints)}. Its keys are {', '.join(_KEYS)}."
        )
        raise _ImproperlyConfigured(msg)
    return dict(options)


def _function(options: dict[str, Any], key: str, default: object) -> Any:
    """Return the function ``options[key]`` names (itself, or its dotted path)."""
    value = options.get(key, default)
    if isinstance(value, str):
        try:
            value = _import_string(value)
        except ImportError as exc:
            problem = (
                f"can't import {value!r} ({exc}). Give a function, or the dotted path of "
                f"one, such as 'myproject.logs.{key.lower()}'."
            )
            raise _improperly_configured(key, problem) from exc
    if iscoroutinefunction(value):
        problem = (
            f"must be a plain function, got the coroutine function {value!r}: nothing "
            "can await it where it runs (in a log call, on the sync path)."
        )
        raise _improperly_configured(key, problem)
    try:
        check_callable(key.lower(), value)
    except TypeError as exc:
        raise _improperly_configured(key, str(exc)) from exc
    return value


@final
class RequestContextMiddleware:
    """Run each Django request in its own request context, with its user.

    A Django middleware for sync and async stacks alike: under WSGI it
    serves requests synchronously, under ASGI asynchronously, with no
    thread hop of its own. For each request it reads the ID from the
    request header (``request.META["HTTP_X_REQUEST_ID"]``), keeps it if it
    is valid and otherwise uses a new one, and opens a request context with
    it and the user. The checks of incoming IDs, the warning for a refused
    one (on the ``contextual.integrations`` logger, inside the request), the
    echo and the baggage are those of
    :class:`contextual.integrations.wsgi.RequestContextMiddleware`; the
    options come from ``settings.CONTEXTUAL`` (see the module).

    **The user** is ``GET_USER(request.user)`` (by default ``request.user.pk``)
    when the user is authenticated, else ``None``. Reading ``request.user``
    may query the database for the session and the user, so the middleware
    reads it only when needed:

    * on the sync path (WSGI, or a sync stack), not before something reads
      the request's user: the first log line of the request (through
      :class:`~contextual.ContextFilter`), :func:`~contextual.get_current_user`,
      work handed to Celery... A request that never logs makes no query of
      the middleware's. The first read may come from a thread the view
      hands work to (a :class:`~contextual.ContextExecutor`): the user is
      then read there, and a database connection the read opens in that
      thread is closed after it (Django closes the request thread's
      connections only). Before an async view, the user is read at once, in
      the request's thread: nothing may query the database from the event
      loop that runs the view.
    * on the async path (ASGI), at the start of the request, with
      ``await request.auser()``, when the request has a session
      (``request.session.session_key``: Django's session cookie came with
      it); a request without one is anonymous, and costs no query.

    If reading the user raises, the error is logged on the
    ``contextual.integrations.django`` logger, inside the request, and the
    request goes on with the user ``None``: a failing user lookup never
    fails a request. :func:`contextual.update_request` sets another user for
    the rest of the request (after a login in the view, say).

    What sees the request: the middleware after this one in ``MIDDLEWARE``
    and the view (sync views that Django runs in its thread pool under ASGI
    too), Django's log line for an error the view raised, tasks the view
    creates, and work it hands on with the propagation layer (a
    :class:`~contextual.ContextExecutor`, :func:`~contextual.to_thread`,
    :func:`~contextual.capture`), which sees the request as it was when
    handed on. A change the view makes with
    :func:`~contextual.update_request` lasts for the rest of the request,
    as seen by the view and the middleware after this one. Middleware before
    this one, Django's ``request_started`` and ``request_finished`` signals,
    other requests, and the server's thread between requests never see it.

    The request closes when the middleware returns the response, and every
    ``propagate=True`` ``"thread"`` store is then back as it was when the
    request began. A streaming response's body is produced afterwards, as
    the server sends it: each of its steps runs in a copy of the request's
    context as the view left it (its ID and user, the view's ``"context"``
    stores), so its log lines still carry the request; a ``FileResponse``
    is sent as it is.

    Args:
        get_response: The next middleware or the view, which Django passes.

    Raises:
        django.core.exceptions.ImproperlyConfigured: ``settings.CONTEXTUAL``
            is not a dict, has an unknown key, or a value of the wrong kind;
            or, at a request, ``GET_USER`` is not ``None`` and no middleware
            before this one has set ``request.user``.

    .. versionadded:: 0.2.0
    """

    # Django's flags for a middleware that serves both kinds of stack.
    sync_capable: Final = True
    async_capable: Final = True

    # No __slots__: markcoroutinefunction() marks the instance with an
    # attribute whose name depends on the Python version.

    # Set on the sync path only: Django calls it before the view where it is set.
    process_view: Callable[[_Request, Callable[..., Any], tuple[Any, ...], dict[str, Any]], None]

    def __init__(self, get_response: Callable[[_Request], Any]) -> None:
        options = _options()
        header = options.get("HEADER", DEFAULT_HEADER)
        echo = options.get("ECHO", True)
        if not isinstance(echo, bool):
            problem = f"must be True or False, got {type(echo).__name__} {echo!r}."
            raise _improperly_configured("ECHO", problem)
        baggage: AllowSpec | None = options.get("BAGGAGE")
        try:
            allow = None if baggage is None else AllowList(baggage)
        except (TypeError, ValueError) as exc:
            raise _improperly_configured("BAGGAGE", str(exc)) from exc
        self._user_of: Callable[[Any], Any] | None = _function(options, "GET_USER", _primary_key)
        validator = _function(options, "VALIDATOR", None)
        generator = _function(options, "GENERATOR", new_request_id)
        if generator is None:
            raise _improperly_configured("GENERATOR", "must be a function, got None.")
        self._async = iscoroutinefunction(get_response)
        try:
            # Async requests overlap on the event loop's thread: its thread
            # stores are put back when the last of them closes.
            self._opener: RequestOpener[_Request] = RequestOpener(
                header, None, validator, generator, _logger, baggage=allow, overlapping=self._async
            )
        except ValueError as exc:
            raise _improperly_configured("HEADER", str(exc)) from exc
        self._header: str = header
        self._meta_key = "HTTP_" + header.upper().replace("-", "_")
        self._echo = echo
        self._baggage = allow is not None
        self._get_response = get_response
        if self._async:
            markcoroutinefunction(self)
        elif self._user_of is not None:
            # Django calls process_view() only where the middleware defines it.
            self.process_view = self._before_view

    def __call__(self, request: _Request) -> Any:
        """Serve one request inside its request context; a coroutine on the async path."""
        if self._async:
            return self._serve_async(request)
        return self._serve(request)

    def _serve(self, request: _Request) -> _Response:
        user = None if self._user_of is None else Deferred(self._lookup(_lazy_user(request)))
        opened, request_id = self._open(request, user)
        try:
            response = self._get_response(request)
            if response.streaming:
                _stream_in_request(response)
        finally:
            opened.__exit__(None, None, None)
        if self._echo:
            response[self._header] = request_id
        return response

    async def _serve_async(self, request: _Request) -> _Response:
        user = error = None
        if self._user_of is not None:
            try:
                user = await self._user_now(request)
            except _ImproperlyConfigured:
                raise
            except Exception as exc:  # noqa: BLE001 (documented: a failing lookup means no user)
                error = exc
        opened, request_id = self._open(request, user)
        try:
            if error is not None:
                _logger.error(
                    "Reading request.user raised; the request goes on with no user.",
                    exc_info=error,
                )
            response = await self._get_response(request)
            if response.streaming:
                _stream_in_request(response)
        finally:
            opened.__exit__(None, None, None)
        if self._echo:
            response[self._header] = request_id
        return response

    def _open(self, request: _Request, user: Any) -> tuple[Any, str]:
        meta = request.META
        raw = meta.get(self._meta_key)
        values = () if raw is None else (raw,)
        if self._baggage:
            # Several Baggage headers arrive joined with commas, as the
            # specification allows.
            baggage = meta.get("HTTP_BAGGAGE")
            return self._opener.open(
                values, request, () if baggage is None else (baggage,), user=user
            )
        return self._opener.open(values, request, user=user)

    def _lookup(self, user: Any) -> Callable[[], Any]:
        """Return what reads the user behind Django's lazy ``request.user``, once."""
        user_of = self._user_of
        assert user_of is not None  # noqa: S101 (only called with a GET_USER)
        thread = threading.get_ident()

        def lookup() -> Any:
            try:
                if threading.get_ident() == thread:
                    return user_of(user) if user.is_authenticated else None
                # Django closes the connections of the request's thread when
                # the request ends, and no other thread's.
                with _closing_new_connections():
                    return user_of(user) if user.is_authenticated else None
            except Exception:
                _logger.exception("Reading request.user raised; the request goes on with no user.")
                return None

        return lookup

    async def _user_now(self, request: _Request) -> Any:
        """Return the user of an async request, querying only if it has a session."""
        auser = getattr(request, "auser", None)
        if auser is None:
            raise _no_user_error()
        session = getattr(request, "session", None)
        if session is not None and session.session_key is None:
            return None
        user = await auser()
        user_of = self._user_of
        assert user_of is not None  # noqa: S101 (only called with a GET_USER)
        return user_of(user) if user.is_authenticated else None

    def _before_view(
        self,
        request: _Request,  # noqa: ARG002 (Django's signature)
        view: Callable[..., Any],
        args: tuple[Any, ...],  # noqa: ARG002 (the same)
        kwargs: dict[str, Any],  # noqa: ARG002 (the same)
    ) -> None:
        """Read the user now if the view is async: its event loop can't query the database."""
        if iscoroutinefunction(view):
            get_current_user()


def _lazy_user(request: _Request) -> Any:
    """Return Django's lazy ``request.user``, unread."""
    try:
        return request.user
    except AttributeError:
        raise _no_user_error() from None


def _no_user_error() -> Exception:
    msg = (
        f"{_PATH} reads request.user, and no middleware before it has set it. Put it "
        f"after {_AUTH!r} in settings.MIDDLEWARE, or set settings.{_SETTING}['GET_USER'] "
        "to None to log no user."
    )
    return _ImproperlyConfigured(msg)


@contextlib.contextmanager
def _closing_new_connections() -> Iterator[None]:
    """Close the database connections that the block opens, and no other."""
    connections = _connections
    opened = {alias for alias in connections if connections[alias].connection is not None}
    try:
        yield
    finally:
        for alias in connections:
            if alias not in opened:
                connections[alias].close()


def _stream_in_request(response: _Response) -> None:
    """Make each step of a streaming body run in a copy of the request's context."""
    if isinstance(response, _FileResponse):
        return
    context = contextvars.copy_context()
    content = response.streaming_content
    if response.is_async:
        response.streaming_content = _AsyncSteps(content, context)
    else:
        response.streaming_content = _Steps(content, context)


@final
class _Steps:
    """A body iterator whose every step runs in ``context``."""

    __slots__ = ("_context", "_iterator")

    def __init__(self, iterator: Iterator[bytes], context: contextvars.Context) -> None:
        self._iterator = iterator
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return self._context.run(next, self._iterator)


@final
class _AsyncSteps:
    """An async body iterator whose every step runs in ``context``."""

    __slots__ = ("_context", "_iterator")

    def __init__(self, iterator: AsyncIterator[bytes], context: contextvars.Context) -> None:
        self._iterator = iterator
        self._context = context

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return _InContext(self._iterator.__anext__(), self._context)


@final
class _InContext:
    """Await ``awaitable`` with ``context`` entered each time it resumes.

    What an asyncio task does with its own context, for one awaitable:
    without a task of its own, it works on every supported Python (a task
    takes a ``context`` only from 3.11).
    """

    __slots__ = ("_awaitable", "_context")

    def __init__(self, awaitable: Awaitable[bytes], context: contextvars.Context) -> None:
        self._awaitable = awaitable
        self._context = context

    def __await__(self) -> Generator[Any, Any, bytes]:
        steps = self._awaitable.__await__()
        run = self._context.run
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                waiting = run(steps.send, sent) if thrown is None else run(steps.throw, thrown)
            except StopIteration as stop:
                result: bytes = stop.value
                return result
            try:
                sent, thrown = (yield waiting), None
            except BaseException as exc:  # noqa: BLE001 (cancellation too: the step gets it)
                sent, thrown = None, exc
