"""Request context in a WSGI server: every log line carries its own request's ID.

A threaded web server serves many requests at once, and the request ID
that should go into each log line must reach every function that logs,
worker threads included; a global mixes up the requests, and passing the ID
down by hand never reaches a library's log lines. Wrap the app in
RequestContextMiddleware and attach a ContextFilter to the log handler: each
request runs in its own request context, with the caller's X-Request-ID
when it is valid, or a fresh one when it is missing or refused, echoed in
the response. Work the app hands to a ContextExecutor logs under the same
ID.

The script serves the app with the standard library's wsgiref, one thread
per request, on 127.0.0.1 and a port the OS picks, and is its own client:

1. ada's slow report and grace's cart, at once: the report's query waits
   (an Event stands for a slow database) until grace's request is done,
   then logs under ada's ID again;
2. a request without an X-Request-ID: it gets a fresh 32-hex ID;
3. a request whose X-Request-ID is not a valid ID: refused, replaced.

A fresh ID is new on every run; each one shows up in its request's log
lines and in the response alike.

Run: python examples/wsgi_server.py
"""

from __future__ import annotations

import logging
import re
import socketserver
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from contextual import ContextExecutor, ContextFilter, get_request_id
from contextual.integrations.wsgi import RequestContextMiddleware

if TYPE_CHECKING:
    from collections.abc import Iterable
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("examples.shop")

# A stuck request fails the example rather than hanging it.
TIMEOUT = 20.0
# The logins the app knows; a real app asks its session or auth library.
SESSIONS = {"token-ada": "ada", "token-grace": "grace"}
FRESH_ID = re.compile(r"[0-9a-f]{32}")


def setup_logging() -> None:
    """Send every record to stdout, with the request fields in each line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ContextFilter())  # on the handler: records of every logger get the fields
    handler.setFormatter(logging.Formatter("  [%(request_id)s user=%(user_id)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, with a thread per request (server_close() joins them)."""


class QuietHandler(WSGIRequestHandler):
    """wsgiref's request handler, without its access log on stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
        """Log nothing: the app's own lines say enough here."""


# The report's query waits for grace's request: set by the report's query
# once it runs, and by the client once grace's response is back.
report_running = threading.Event()
other_request_done = threading.Event()


def wait(event: threading.Event) -> None:
    """Wait for ``event``, or fail after TIMEOUT."""
    if not event.wait(TIMEOUT):
        msg = f"the example got stuck: nothing set the event within {TIMEOUT} s"
        raise TimeoutError(msg)


def user_of(environ: WSGIEnvironment) -> str | None:
    """Return the user whose token the request carries, or None: the middleware's get_user."""
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    return SESSIONS.get(token) if scheme == "Bearer" else None


def run_query(path: str) -> None:
    """Stand for a database query; it runs on a pool thread, and logs."""
    log.info("worker: querying for %s", path)
    if path == "/report":
        report_running.set()
        wait(other_request_done)  # grace's whole request runs meanwhile
        log.info("worker: the report query is done")


def make_app(pool: ContextExecutor) -> WSGIApplication:
    """Return the shop: a plain WSGI app that logs, and hands its query to ``pool``."""

    def shop(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        log.info("GET %s", path)
        pool.submit(run_query, path).result()
        log.info("200 OK")
        body = get_request_id().encode()  # what the app saw: the client compares
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return shop


def get(url: str, headers: dict[str, str]) -> str:
    """GET ``url`` with ``headers``; return what the client learns of the request ID."""
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (http:// to loopback)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (the same)
        echoed: str = response.headers["X-Request-ID"]
        seen = response.read().decode()
    shape = " (fresh: 32 hex digits)" if FRESH_ID.fullmatch(echoed) else ""
    same = "as the app saw it" if seen == echoed else f"but the app saw {seen!r}"
    return f"got back {echoed}{shape}, {same}"


def talk_to(base: str) -> None:
    """Make the three kinds of requests, printing what the client sees after each."""
    print("1. two requests at once: ada's slow report, and grace's cart while it runs")
    with ThreadPoolExecutor(max_workers=1) as client:
        report = client.submit(
            get, f"{base}/report", {"X-Request-ID": "req-1", "Authorization": "Bearer token-ada"}
        )
        wait(report_running)  # ada's request is in flight: now grace's
        cart = get(f"{base}/cart", {"X-Request-ID": "req-2", "Authorization": "Bearer token-grace"})
        print(f"  client: /cart   sent req-2, {cart}")
        other_request_done.set()
        print(f"  client: /report sent req-1, {report.result()}")

    print("2. a request without an X-Request-ID")
    print(f"  client: / sent none, {get(f'{base}/', {})}")

    bad = "<script>alert(1)</script>"
    print(f"3. a request whose X-Request-ID is not a valid ID: {bad!r}")
    print(f"  client: / sent it, {get(f'{base}/', {'X-Request-ID': bad})}")


def main() -> None:
    """Serve the app on a thread of this process, talk to it, then stop it."""
    setup_logging()
    with ContextExecutor(max_workers=4) as pool:
        app = RequestContextMiddleware(make_app(pool), get_user=user_of)
        server = make_server(
            "127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
        )
        # make_server() is already listening: requests wait in the socket's
        # backlog until serve_forever() accepts them.
        serving = threading.Thread(target=server.serve_forever, name="wsgiref")
        serving.start()
        print("server: wsgiref on 127.0.0.1, a thread per request")
        try:
            talk_to(f"http://127.0.0.1:{server.server_port}")
        finally:
            server.shutdown()
            serving.join()
            server.server_close()
    print("server: stopped")


if __name__ == "__main__":
    main()
