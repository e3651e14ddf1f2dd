"""Flask: run every request of an app in its own request context (extra ``flask``).

One call, where the app is created::

    from flask import Flask
    from contextual.integrations.flask import install

    app = Flask(__name__)
    install(app)

Every request then runs in its own :func:`~contextual.request_context`,
with the validated and echoed request ID, from before Flask's first hook to
the end of the response, a streamed one included. Set the user once it is
known, in a ``before_request`` hook or a Flask-Login user loader, with
:func:`contextual.update_request`; the how-to :doc:`/howto/flask` shows
both, and how to log the fields.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

from contextual import new_request_id

from ._extra import missing_library
from ._headers import DEFAULT_HEADER
from .wsgi import RequestContextMiddleware

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = ["EXTENSION", "install"]

try:
    from flask import Flask
except ImportError as exc:
    raise missing_library(__name__, "Flask", "flask", exc) from exc

#: The key of ``app.extensions`` under which :func:`install` records the
#: :class:`~contextual.integrations.wsgi.RequestContextMiddleware` it put
#: around the app's WSGI callable.
#:
#: .. versionadded:: 0.2.0
EXTENSION: Final = "contextual"


def install(  # noqa: PLR0913 (keyword-only options, one per middleware setting)
    app: Flask,
    *,
    header: str = DEFAULT_HEADER,
    get_user: Callable[[dict[str, Any]], Any] | None = None,
    validator: Callable[[str], bool] | None = None,
    generator: Callable[[], str] = new_request_id,
    echo: bool = True,
    baggage: Mapping[str, bool | Iterable[str]] | Iterable[str] | None = None,
) -> None:
    """Run every request of the Flask ``app`` in its own request context.

    Call it once, where the app is created (in the application factory,
    with the other extensions). It wraps ``app.wsgi_app``, the app's WSGI
    callable, in a :class:`~contextual.integrations.wsgi.RequestContextMiddleware`
    with these options, and records that middleware in
    ``app.extensions["contextual"]`` (:data:`EXTENSION`). The options, the
    checks of the incoming request ID, its echo in the response and the
    warning for a refused one are the middleware's: see it for each.

    **What runs inside the request.** Everything Flask does for a request
    that reaches the app through its WSGI callable (any WSGI server, and
    ``app.test_client()``): the ``request_started`` signal,
    ``before_request`` hooks, the view (an ``async def`` view too: Flask
    runs it with asgiref, which carries the request there and back), error
    handlers and Flask's own log line for an unhandled exception,
    ``after_request`` hooks, the ``request_finished`` signal,
    ``teardown_request`` and ``teardown_appcontext`` handlers, and a
    streamed body, with or without ``stream_with_context``, to its end and
    the response's ``call_on_close`` functions. Work the app hands on with
    the propagation layer (a :class:`~contextual.ContextExecutor` or
    :class:`~contextual.ContextProcessPoolExecutor` task,
    :func:`~contextual.capture`, a Celery task published with
    :mod:`contextual.integrations.celery`) sees the request as it was when
    handed on, and nothing it changes flows back; a plain
    :class:`threading.Thread` does not see it, except on interpreters where
    new threads inherit their starter's context. WSGI middleware put around
    ``app.wsgi_app`` before :func:`install` runs inside the request, and
    middleware put around it afterwards runs outside: wrap the ones that
    ``get_user`` relies on (one that sets ``REMOTE_USER``) first.

    Nothing opens a request for ``app.test_request_context()``,
    ``app.app_context()`` (CLI commands, the shell) or code run at import:
    there :func:`~contextual.get_request_id` returns ``None``, and
    :func:`contextual.update_request` raises
    :class:`~contextual.NoRequestError`.

    **The user.** ``get_user`` sees the WSGI environ only, before Flask has
    a session or a logged-in user. Once the app knows the user, set it for
    the rest of the request with ``update_request(user_id=...)``: in a
    ``before_request`` hook, which every request runs, or in a Flask-Login
    user loader, which runs only for the requests that use
    ``current_user``. From then on :func:`~contextual.get_current_user`,
    :func:`~contextual.current_request` and every log line of the request
    agree on it, the streamed body and teardown handlers included, and work
    handed on afterwards carries it. A user loader also runs where no
    request is open (``app.test_request_context()``): guard its call with
    ``current_request() is not None``.

    Args:
        app: The ``flask.Flask`` app.
        header: The request and response header that carries the ID.
        get_user: Called with the WSGI environ before the request opens;
            returns the user ID, or ``None``.
        validator: Decides which incoming IDs to keep, instead of the
            default check.
        generator: Makes a new request ID.
        echo: Whether to set the ID in the response header.
        baggage: The stores and keys to take from the request's ``baggage``
            header; ``None``, the default, takes nothing.

    Raises:
        TypeError: ``app`` is not a ``flask.Flask`` app; or ``get_user``,
            ``validator`` or ``generator`` is not callable, or ``baggage``
            is not an allow-list.
        ValueError: ``header`` is not an HTTP field name.
        RuntimeError: The app has a request context already: :func:`install`
            was called on it before, or ``app.wsgi_app`` is a
            ``RequestContextMiddleware`` put there by hand.

    Example:
        >>> from flask import Flask
        >>> from contextual import get_request_id
        >>> from contextual.integrations.flask import install
        >>> app = Flask("shop")
        >>> @app.get("/")
        ... def index():
        ...     return get_request_id()
        >>> install(app)
        >>> response = app.test_client().get("/", headers={"X-Request-ID": "r-42"})
        >>> response.text, response.headers["X-Request-ID"]
        ('r-42', 'r-42')

    .. versionadded:: 0.2.0
    """
    # Typed callers can't get here with another object; untyped ones can.
    if not isinstance(cast("object", app), Flask):
        msg = (
            f"install() takes a flask.Flask app, got {type(app).__name__} {app!r}. Pass the "
            "app itself (not a blueprint, nor app.wsgi_app); for any other WSGI app, wrap "
            "it in contextual.integrations.wsgi.RequestContextMiddleware instead."
        )
        raise TypeError(msg)
    current = app.wsgi_app
    middleware = RequestContextMiddleware(
        current,
        header=header,
        get_user=get_user,
        validator=validator,
        generator=generator,
        echo=echo,
        baggage=baggage,
    )
    # setdefault: of two install() calls at once, exactly one records its own.
    if app.extensions.setdefault(EXTENSION, middleware) is not middleware:
        msg = (
            f"contextual is installed on {app!r} already. Call install() once per app, "
            "where the app is created; its options can't be changed afterwards."
        )
        raise RuntimeError(msg)
    if isinstance(current, RequestContextMiddleware):
        del app.extensions[EXTENSION]
        msg = (
            f"{app!r} has a request context already: app.wsgi_app is a "
            "RequestContextMiddleware. Keep one of the two: remove that wrapping, or "
            "this call to install()."
        )
        raise RuntimeError(msg)  # noqa: TRY004 (a Flask app, in the wrong state)
    app.wsgi_app = middleware  # type: ignore[method-assign]
