"""pyperf benchmarks: one Django request, bare, through RequestContextMiddleware, and django-guid.

Run it through ``run.py``, which appends its results to the same file as
``bench_store.py``'s and prints one report; run directly, it is an ordinary
:class:`pyperf.Runner` script (``python benchmarks/bench_django.py --fast -o
django.json``, then ``python benchmarks/report.py django.json``) and takes
pyperf's options and ``--only PREFIX``, as ``bench_store.py`` does.

Each benchmark is one request through Django's own WSGI handler
(``django.core.handlers.wsgi.WSGIHandler``), called in-process the way a
WSGI server calls it, with a prepared environ and no network: the handler
builds the request, runs the middleware and a view that returns ``ok``, and
the response is closed (Django's ``request_finished``). The statement is
timed as ``bench_store.py`` times every statement (a generated loop, the
statement written out ten times). Each stack has Django's
``SessionMiddleware`` and ``AuthenticationMiddleware``, as a project with
users has, and the request carries a valid ``X-Request-ID`` and no session
cookie:

======================  ================================================================
benchmark               middleware
======================  ================================================================
``django.bare``         sessions, authentication
``django.contextual``   the same, then ``RequestContextMiddleware`` (the user read lazily)
``django.contextual_no_user``  the same, with ``CONTEXTUAL = {"GET_USER": None}``
``django.guid``         django-guid's ``guid_middleware`` first, then the same two, with
                        ``DJANGO_GUID = {"GUID_HEADER_NAME": "X-Request-ID"}``
======================  ================================================================

Django's settings are configured once per process, so every worker
configures them for the benchmark it runs, and each stack is built as its
own ``WSGIHandler`` under ``override_settings(MIDDLEWARE=...)``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

# bench_store.py, next to this file: the same Case, timer and metadata.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_store

_ID = "0f8e2bc4a3d14f0f9c1b6a5e4d3c2b1a"  # a uuid4 hex: valid for both middlewares

_SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
_AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
_CONTEXTUAL = "contextual.integrations.django.RequestContextMiddleware"
_GUID = "django_guid.middleware.guid_middleware"

#: Each benchmark's MIDDLEWARE and CONTEXTUAL settings.
STACKS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "bare": ([_SESSION, _AUTH], {}),
    "contextual": ([_SESSION, _AUTH, _CONTEXTUAL], {}),
    "contextual_no_user": ([_SESSION, _AUTH, _CONTEXTUAL], {"GET_USER": None}),
    "guid": ([_GUID, _SESSION, _AUTH], {}),
}

SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "benchmarks only",
    "ALLOWED_HOSTS": ["bench"],
    "ROOT_URLCONF": "bench_django",
    "INSTALLED_APPS": [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
        "django_guid",
    ],
    # Never opened: no request in these benchmarks reads its session or user.
    "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    "DEFAULT_AUTO_FIELD": "django.db.models.AutoField",
    "USE_TZ": True,
    "DJANGO_GUID": {"GUID_HEADER_NAME": "X-Request-ID"},
    # Logging as Django configures it by default: nothing below WARNING.
}


def view(_request: Any) -> Any:
    from django.http import HttpResponse  # noqa: PLC0415 (after the settings)

    return HttpResponse(b"ok")


def _urlpatterns() -> list[Any]:
    from django.urls import path  # noqa: PLC0415 (after the settings)

    return [path("", view)]


def __getattr__(name: str) -> Any:
    # Django reads ROOT_URLCONF's urlpatterns once the settings are configured.
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def _configure() -> None:
    import django  # noqa: PLC0415 (only the Django workers)
    from django.conf import settings  # noqa: PLC0415

    if not settings.configured:
        settings.configure(**SETTINGS)
        django.setup()


def _start_response(*_args: Any) -> None:
    """What a WSGI server's start_response does, minus the sending."""


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench",
        "HTTP_X_REQUEST_ID": _ID,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _django(kind: str) -> Any:
    def setup() -> dict[str, Any]:
        _configure()
        from django.core.handlers.wsgi import WSGIHandler  # noqa: PLC0415
        from django.test import override_settings  # noqa: PLC0415

        middleware, options = STACKS[kind]
        with override_settings(MIDDLEWARE=middleware, CONTEXTUAL=options):
            handler = WSGIHandler()
        environ = _environ()
        # What is measured is a whole request that succeeds, echo included.
        response = handler(environ.copy(), _start_response)
        response.close()
        if response.status_code != 200 or response.content != b"ok":
            msg = f"the {kind} stack answered {response.status_code} {response.content!r}"
            raise RuntimeError(msg)
        if kind != "bare" and response.headers.get("X-Request-ID") != _ID:
            msg = f"the {kind} stack did not echo the request ID: {dict(response.headers)}"
            raise RuntimeError(msg)
        return {"handler": handler, "environ": environ, "start_response": _start_response}

    return setup


_STATEMENT = "handler(environ.copy(), start_response).close()"

CASES: tuple[bench_store.Case, ...] = (
    bench_store.Case("django.bare", "Django request, bare", _STATEMENT, _django("bare")),
    bench_store.Case(
        "django.contextual",
        "Django request + RequestContextMiddleware",
        _STATEMENT,
        _django("contextual"),
    ),
    bench_store.Case(
        "django.contextual_no_user",
        "Django request + RequestContextMiddleware, GET_USER None",
        _STATEMENT,
        _django("contextual_no_user"),
    ),
    bench_store.Case(
        "django.guid", "Django request + django-guid middleware", _STATEMENT, _django("guid")
    ),
)


def main() -> None:
    bench_store.run_cases(CASES, "a Django request through contextual and django-guid")


if __name__ == "__main__":
    main()
