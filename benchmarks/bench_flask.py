"""pyperf benchmarks: a Flask request with ``contextual.integrations.flask.install`` against none.

The request path only: each operation is one whole request, in-process,
through the app's WSGI callable, as a WSGI server makes it (call the app
with a copy of a prepared environ, iterate the body, close it), with no
socket and no server. The app has one view, which returns a short text;
the request carries a valid ``X-Request-ID``, so the installed app keeps it
and echoes it. The contenders:

* ``flask.bare``: the Flask app as it is;
* ``flask.contextual``: the same app after ``install(app)``;
* ``flask.contextual_user``: after ``install(app)``, with a
  ``before_request`` hook that sets the user with ``update_request()``,
  against ``flask.bare_hook``, the bare app with a ``before_request`` hook
  that does nothing.

No peer exists for Flask: asgi-correlation-id is ASGI only, and
django-guid is Django only.

Run it through ``run.py``, which appends its results to the same file as
``bench_store.py``'s; run directly, it is an ordinary :class:`pyperf.Runner`
script (``python benchmarks/bench_flask.py --fast -o flask.json``, then
``python benchmarks/report.py flask.json``). It times each statement with
``bench_store.py``'s generated loop, so its numbers compare with that
file's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

# bench_store.py, next to this file: the same Case, timer and runner.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import Case, run_cases

import contextual

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

_ID = "0f8e2bc4a3d14f0f9c1b6a5e4d3c2b1a"  # a uuid4 hex, as in bench_store.py


def _start_response(_status: str, _headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
    return None


def _request(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> None:
    # What a WSGI server does with one request; the environ is the server's
    # own for each request, and Flask writes into it.
    body = app(dict(environ), _start_response)
    try:
        for _ in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _flask(kind: str) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        # Imported here: only this benchmark's workers need Flask, and the
        # source digest covers what every worker imports at start.
        from flask import Flask  # noqa: PLC0415
        from werkzeug.test import EnvironBuilder  # noqa: PLC0415

        app = Flask("bench")

        @app.get("/")
        def index() -> str:
            return "ok"

        if kind == "bare_hook":

            @app.before_request
            def nothing() -> None:
                return None

        if kind.startswith("contextual"):
            from contextual.integrations.flask import install  # noqa: PLC0415

            if kind == "contextual_user":

                @app.before_request
                def set_user() -> None:
                    contextual.update_request(user_id="ada")

            install(app)
        builder = EnvironBuilder(path="/", headers={"X-Request-ID": _ID})
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        _request(app, environ)  # a first request: Flask finishes its setup
        return {"request": _request, "app": app, "environ": environ}

    return setup


CASES: tuple[Case, ...] = (
    Case("flask.bare", "Flask app, bare", "request(app, environ)", _flask("bare")),
    Case(
        "flask.contextual",
        "Flask app + install()",
        "request(app, environ)",
        _flask("contextual"),
    ),
    Case(
        "flask.bare_hook",
        "Flask app, bare, no-op before_request",
        "request(app, environ)",
        _flask("bare_hook"),
    ),
    Case(
        "flask.contextual_user",
        "Flask app + install(), update_request() in before_request",
        "request(app, environ)",
        _flask("contextual_user"),
    ),
)


def main() -> None:
    run_cases(CASES, "contextual's Flask integration against the bare app")


if __name__ == "__main__":
    main()
