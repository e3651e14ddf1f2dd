"""Request context in a Django project: every log line carries its request's ID and user.

A Django project logs from its views, its middleware and the worker
threads its views hand work to, many requests at once; a line that says
who asked, and which request it belongs to, is what makes the log useful.
Add contextual's RequestContextMiddleware after Django's
AuthenticationMiddleware and put a ContextFilter in the LOGGING setting:
each request runs in its own request context, with the caller's
X-Request-ID when it is valid (a fresh one otherwise), echoed in the
response, and with the logged-in user, read only when a line is logged.

The script is a whole Django project in one file (settings, URLs, views,
Django's users in a sqlite database in a temporary folder), served by the
standard library's wsgiref on 127.0.0.1 and a port the OS picks, and its
own client:

1. ada and grace, each logged in, list their orders: the view and the
   worker thread it hands the query to log under each one's request;
2. a request without a session: no user;
3. grace signs in during a request: update_request() sets the user for
   the rest of it;
4. ada's health check logs nothing, and costs no query for her user
   (her orders cost two: her session and her user, read for the first
   line);
5. a request whose X-Request-ID is not a valid ID: refused, replaced.

A fresh ID is new on every run; each one shows up in its request's log
lines and in the response alike.

Run: python examples/django_app.py (needs Django: pip install django)
"""

from __future__ import annotations

import socketserver
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings

from contextual import ContextExecutor, get_request_id, update_request

# A stuck request fails the example rather than hanging it.
TIMEOUT = 20.0


def username(user: Any) -> str:
    """What the log lines show as the user: the username (the default is the primary key)."""
    name: str = user.get_username()
    return name


def configure(folder: Path) -> None:
    """Configure the project: what a settings.py would hold."""
    settings.configure(
        DEBUG=False,
        SECRET_KEY="an example, never deployed",  # noqa: S106 (a real project reads it from its secrets)
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "contextual.integrations.django.RequestContextMiddleware",
        ],
        CONTEXTUAL={"GET_USER": username},
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(folder / "db.sqlite3"),
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"context": {"()": "contextual.ContextFilter"}},
            "formatters": {"line": {"format": "  [%(request_id)s user=%(user_id)s] %(message)s"}},
            "handlers": {
                "stdout": {
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stdout",
                    "filters": ["context"],
                    "formatter": "line",
                }
            },
            "loggers": {
                "examples.shop": {"handlers": ["stdout"], "level": "INFO"},
                "contextual.integrations": {"handlers": ["stdout"], "level": "WARNING"},
            },
        },
    )
    django.setup()


# -- the app: once the settings are configured --------------------------------------

pool = ContextExecutor(max_workers=2)
urlpatterns: list[Any] = []
queries: list[str] = []  # every SQL statement the project runs, in any thread


def define_app() -> None:
    """Define the views and their URLs, as views.py and urls.py would."""
    import logging  # noqa: PLC0415 (the imports Django allows once it is set up)

    from django.contrib.auth import login  # noqa: PLC0415
    from django.contrib.auth.models import User  # noqa: PLC0415
    from django.db.backends.signals import connection_created  # noqa: PLC0415
    from django.http import HttpResponse  # noqa: PLC0415
    from django.urls import path  # noqa: PLC0415

    log = logging.getLogger("examples.shop")

    def load_orders(path: str) -> None:
        log.info("worker: loading orders for %s", path)

    def orders(request: Any) -> HttpResponse:
        log.info("GET %s", request.path)
        pool.submit(load_orders, request.path).result(timeout=TIMEOUT)
        log.info("200 OK")
        return HttpResponse(get_request_id())  # what the view saw: the client compares

    def sign_in(request: Any) -> HttpResponse:
        log.info("signing in %s", request.GET["user"])
        user = User.objects.get(username=request.GET["user"])
        login(request, user)
        update_request(user_id=user.get_username())
        log.info("signed in")
        return HttpResponse(get_request_id())

    def health(_request: Any) -> HttpResponse:
        return HttpResponse(get_request_id())

    urlpatterns.extend(
        [path("orders", orders), path("", orders), path("sign-in", sign_in), path("health", health)]
    )

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries.append(sql)
        return execute(sql, params, many, context)

    def counting(sender: Any, connection: Any, **kwargs: Any) -> None:  # noqa: ARG001 (a signal's)
        connection.execute_wrappers.append(count)

    connection_created.connect(counting, weak=False)


def create_users() -> dict[str, str]:
    """Create the database, and ada and grace; return ada's session cookie."""
    from django.contrib.auth.models import User  # noqa: PLC0415
    from django.core.management import call_command  # noqa: PLC0415
    from django.db import connections  # noqa: PLC0415
    from django.test import Client  # noqa: PLC0415

    call_command("migrate", verbosity=0)
    cookies = {}
    for name in ("ada", "grace"):
        user = User.objects.create_user(name, password=f"{name}'s password")
        client = Client()
        client.force_login(user)  # what a login form does: a session for the user
        cookies[name] = f"{settings.SESSION_COOKIE_NAME}={client.session.session_key}"
    connections.close_all()
    return cookies


# -- the server and the client ----------------------------------------------------


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, with a thread per request (server_close() joins them)."""


class QuietHandler(WSGIRequestHandler):
    """wsgiref's request handler, without its access log on stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
        """Log nothing: the app's own lines say enough here."""


def get(url: str, headers: dict[str, str]) -> str:
    """GET ``url`` with ``headers``; return what the client learns of the request ID."""
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (http:// to loopback)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (the same)
        echoed: str = response.headers["X-Request-ID"]
        seen = response.read().decode()
    same = "as the view saw it" if seen == echoed else f"but the view saw {seen!r}"
    return f"got back {echoed}, {same}"


def talk_to(base: str, cookies: dict[str, str]) -> None:
    """Make the requests of the docstring, printing what the client sees after each."""
    print("1. ada and grace, each logged in, list their orders")
    for n, name in enumerate(("ada", "grace"), start=1):
        before = len(queries)
        sent = {"X-Request-ID": f"req-{n}", "Cookie": cookies[name]}
        print(f"  client: /orders sent req-{n}, {get(f'{base}/orders', sent)}")
        print(f"  queries for the request: {len(queries) - before} (the session and the user)")

    print("2. a request without a session")
    print(f"  client: / sent req-3, {get(f'{base}/', {'X-Request-ID': 'req-3'})}")

    print("3. grace signs in during the request")
    sent = {"X-Request-ID": "req-4"}
    print(f"  client: /sign-in sent req-4, {get(f'{base}/sign-in?user=grace', sent)}")

    print("4. ada's health check logs nothing")
    before = len(queries)
    sent = {"X-Request-ID": "req-5", "Cookie": cookies["ada"]}
    print(f"  client: /health sent req-5, {get(f'{base}/health', sent)}")
    print(f"  queries for the request: {len(queries) - before}")

    bad = "<script>alert(1)</script>"
    print(f"5. a request whose X-Request-ID is not a valid ID: {bad!r}")
    print(f"  client: / sent it, {get(f'{base}/', {'X-Request-ID': bad})}")


def main() -> None:
    """Set the project up, serve it on a thread of this process, talk to it, stop it."""
    from django.core.wsgi import get_wsgi_application  # noqa: PLC0415 (after the settings)

    with tempfile.TemporaryDirectory(prefix="contextual-django-") as folder:
        configure(Path(folder))
        define_app()
        cookies = create_users()
        server = make_server(
            "127.0.0.1",
            0,
            get_wsgi_application(),
            server_class=ThreadingWSGIServer,
            handler_class=QuietHandler,
        )
        serving = threading.Thread(target=server.serve_forever, name="wsgiref")
        serving.start()
        print("server: Django under wsgiref on 127.0.0.1, a thread per request")
        try:
            talk_to(f"http://127.0.0.1:{server.server_port}", cookies)
        finally:
            server.shutdown()
            serving.join()
            server.server_close()
            pool.shutdown()
    print("server: stopped")


if __name__ == "__main__":
    main()
