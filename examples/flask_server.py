"""Flask and Flask-Login: every log line carries its request's ID and the logged-in user.

A Flask app logs from its views, its hooks and the worker threads it hands
work to, for many requests at once. Call install(app) where the app is
created: each request runs in its own request context, with the caller's
X-Request-ID when it is valid, or a fresh one, echoed in the response. The
user is known only once Flask-Login has loaded it, inside the request: the
user loader, and the handler of Flask-Login's user_logged_in signal, set it
for the rest of the request with update_request(). A ContextFilter on the
log handler puts both in every line, those of a ContextExecutor's workers
and of an after_request hook included.

The script serves the app with werkzeug's threaded server (it comes with
Flask), on 127.0.0.1 and a port the OS picks, and is its own client, with a
cookie jar per user:

1. ada and grace log in: each login request's lines carry the user from
   the moment login_user() runs;
2. ada's slow report and grace's cart, at once: the report's query waits
   (an Event stands for a slow database) until grace's request is done,
   then logs under ada's ID and user again;
3. a request from nobody logged in, whose X-Request-ID is not a valid ID:
   refused, replaced by a fresh ID, with no user.

A fresh ID is new on every run; it shows up in its request's log lines and
in the response alike.

Run: python examples/flask_server.py (needs: pip install flask flask-login)
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import CookieJar
from typing import Any

from flask import Flask, Response, request
from flask_login import LoginManager, UserMixin, login_required, login_user, user_logged_in
from werkzeug.serving import make_server

from contextual import (
    ContextExecutor,
    ContextFilter,
    current_request,
    get_current_user,
    get_request_id,
    update_request,
)
from contextual.integrations.flask import install

log = logging.getLogger("examples.shop")

# A stuck request fails the example rather than hanging it.
TIMEOUT = 20.0
FRESH_ID = re.compile(r"[0-9a-f]{32}")


class User(UserMixin):
    """A user of the shop; a real app loads it from its database."""

    def __init__(self, user_id: str) -> None:
        self.id = user_id


USERS = {name: User(name) for name in ("ada", "grace")}


def setup_logging() -> None:
    """Send every record to stdout, with the request fields in each line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ContextFilter())  # on the handler: records of every logger get the fields
    handler.setFormatter(logging.Formatter("  [%(request_id)s user=%(user_id)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # werkzeug's server logs an access line after each response: quiet here.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


# The report's query waits for grace's request: set by the report's query
# once it runs, and by the client once grace's response is back.
report_running = threading.Event()
other_request_done = threading.Event()


def wait(event: threading.Event) -> None:
    """Wait for ``event``, or fail after TIMEOUT."""
    if not event.wait(TIMEOUT):
        msg = f"the example got stuck: nothing set the event within {TIMEOUT} s"
        raise TimeoutError(msg)


def run_query(path: str) -> None:
    """Stand for a database query; it runs on a pool thread, and logs."""
    log.info("worker: querying for %s", path)
    if path == "/report":
        report_running.set()
        wait(other_request_done)  # grace's whole request runs meanwhile
        log.info("worker: the report query is done")


def load_user(user_id: str) -> User | None:
    """Flask-Login's user loader: it runs once per request that uses current_user."""
    user = USERS.get(user_id)
    # The loader also runs where no request is open (a test_request_context()).
    if user is not None and current_request() is not None:
        update_request(user_id=user.get_id())
    return user


def logged_in(_app: Flask, user: User, **_: Any) -> None:
    """On login_user(): the loader doesn't run for the login request itself."""
    update_request(user_id=user.get_id())


def make_app(pool: ContextExecutor) -> Flask:
    """Return the shop: views that log, and hand their query to ``pool``."""
    app = Flask("shop")
    # Signs the session cookie; a real app reads its own from its configuration.
    app.secret_key = "example only"  # noqa: S105 (the example's own)
    LoginManager(app).user_loader(load_user)
    user_logged_in.connect(logged_in, app)

    @app.post("/login/<name>")
    def login(name: str) -> str:
        log.info("POST /login/%s", name)
        login_user(USERS[name])
        return seen()

    @app.get("/")
    def index() -> str:
        return query()

    @app.get("/report")
    @app.get("/cart")
    @login_required
    def private() -> str:
        return query()

    @app.after_request
    def status(response: Response) -> Response:
        log.info("%s", response.status)
        return response

    def query() -> str:
        log.info("GET %s", request.path)
        pool.submit(run_query, request.path).result()
        return seen()

    install(app)
    return app


def seen() -> str:
    """What the app saw: the client compares it with the echoed ID."""
    return f"{get_request_id()} {get_current_user() or '-'}"


class Client:
    """A browser, in short: one cookie jar (so one session) per user."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def call(self, method: str, path: str, request_id: str | None = None) -> str:
        """Make a request; return what the client learns of its ID and user."""
        headers = {} if request_id is None else {"X-Request-ID": request_id}
        url = f"{self.base}{path}"
        sent = urllib.request.Request(url, headers=headers, method=method)  # noqa: S310 (http:// to loopback)
        with self.opener.open(sent, timeout=TIMEOUT) as response:
            echoed: str = response.headers["X-Request-ID"]
            seen_id, user = response.read().decode().split()
        shape = " (fresh: 32 hex digits)" if FRESH_ID.fullmatch(echoed) else ""
        same = "as the app saw it" if seen_id == echoed else f"but the app saw {seen_id!r}"
        return f"got back {echoed}{shape}, {same}, user={user}"


def talk_to(base: str) -> None:
    """Log in, then make the two kinds of requests, printing what the client sees."""
    ada, grace, nobody = Client(base), Client(base), Client(base)
    print("1. ada and grace log in, each with a session cookie of her own")
    print(f"  client: ada   sent req-1, {ada.call('POST', '/login/ada', 'req-1')}")
    print(f"  client: grace sent req-2, {grace.call('POST', '/login/grace', 'req-2')}")

    print("2. two requests at once: ada's slow report, and grace's cart while it runs")
    with ThreadPoolExecutor(max_workers=1) as browser:
        report = browser.submit(ada.call, "GET", "/report", "req-3")
        wait(report_running)  # ada's request is in flight: now grace's
        print(f"  client: /cart   sent req-4, {grace.call('GET', '/cart', 'req-4')}")
        other_request_done.set()
        print(f"  client: /report sent req-3, {report.result()}")

    bad = "<script>alert(1)</script>"
    print(f"3. nobody logged in, and an X-Request-ID that is not a valid ID: {bad!r}")
    print(f"  client: / sent it, {nobody.call('GET', '/', bad)}")


def main() -> None:
    """Serve the app on a thread of this process, talk to it, then stop it."""
    setup_logging()
    with ContextExecutor(max_workers=4) as pool:
        server = make_server("127.0.0.1", 0, make_app(pool), threaded=True)
        serving = threading.Thread(target=server.serve_forever, name="werkzeug")
        serving.start()
        print("server: werkzeug on 127.0.0.1, a thread per request")
        try:
            talk_to(f"http://127.0.0.1:{server.server_port}")
        finally:
            server.shutdown()
            serving.join()
            server.server_close()
    print("server: stopped")


if __name__ == "__main__":
    main()
