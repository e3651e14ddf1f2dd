"""Request context in an ASGI server: two requests on one event loop, each with its own ID.

An async server runs every request on one thread, as tasks of one event
loop: a threading.local holds one value for all of them, so a request that
awaits a slow service wakes up with the request ID of whichever request ran
meanwhile. Wrap the app in RequestContextMiddleware and attach a
ContextFilter to the log handler: each request runs in its own request
context (built on contextvars), with the caller's X-Request-ID when it is
valid, or a fresh one when it is missing or refused, echoed in the
response. Blocking work handed to a thread with contextual.to_thread logs
under the same ID.

The script serves a plain ASGI app (no framework) with uvicorn, on
127.0.0.1 and a port the OS picks, in its own event loop, and is its own
client, with httpx:

1. ada's report and grace's cart, at once: the report awaits a slow
   service (an asyncio Event stands for it) until grace's request is done,
   then logs under ada's ID again;
2. a request without an X-Request-ID: it gets a fresh 32-hex ID;
3. a request whose X-Request-ID is not a valid ID: refused, replaced.

The app's startup and shutdown (the ASGI lifespan) run outside any request.
A fresh ID is new on every run; each one shows up in its request's log
lines and in the response alike.

Needs uvicorn and httpx: pip install uvicorn httpx

Run: python examples/asgi_server.py
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn

from contextual import ContextFilter, get_request_id, to_thread
from contextual.integrations.asgi import RequestContextMiddleware

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("examples.shop")

# A stuck request fails the example rather than hanging it.
TIMEOUT = 20.0
# The logins the app knows; a real app asks its session or auth library.
SESSIONS = {b"Bearer token-ada": "ada", b"Bearer token-grace": "grace"}
FRESH_ID = re.compile(r"[0-9a-f]{32}")


def setup_logging() -> None:
    """Send every record to stdout, with the request fields in each line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ContextFilter())  # on the handler: records of every logger get the fields
    handler.setFormatter(logging.Formatter("  [%(request_id)s user=%(user_id)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its lines show the port


async def wait(event: asyncio.Event) -> None:
    """Wait for ``event``, or fail after TIMEOUT."""
    await asyncio.wait_for(event.wait(), TIMEOUT)


def user_of(scope: Scope) -> str | None:
    """Return the user whose token the request carries, or None: the middleware's get_user."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return SESSIONS.get(value)
    return None


def run_query(path: str) -> None:
    """Stand for a blocking database query; it runs in a worker thread, and logs."""
    log.info("worker thread: querying for %s", path)


class Shop:
    """A plain ASGI app: it logs, queries in a thread, and answers with the request ID it saw."""

    def __init__(self) -> None:
        # The report awaits grace's request: set by the report once it
        # awaits, and by the client once grace's response is back.
        self.report_waiting = asyncio.Event()
        self.other_request_done = asyncio.Event()
        # Set once the lifespan's startup is complete: the server's start signal.
        self.started = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request, or the lifespan."""
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        path = scope["path"]
        log.info("GET %s", path)
        # asyncio.to_thread would carry the request ID too (it copies every ContextVar);
        # contextual's also carries "thread" stores, and leaves propagate=False ones out.
        await to_thread(run_query, path)
        if path == "/report":
            self.report_waiting.set()
            await wait(self.other_request_done)  # grace's whole request runs meanwhile
            log.info("the pricing service answered")
        log.info("200 OK")
        body = get_request_id().encode()  # what the app saw: the client compares
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Log the app's startup and shutdown, which the middleware leaves outside any request."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                log.info("shop starting")
                await send({"type": "lifespan.startup.complete"})
                self.started.set()
            elif message["type"] == "lifespan.shutdown":
                log.info("shop stopping")
                await send({"type": "lifespan.shutdown.complete"})
                return


async def get(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> str:
    """GET ``path`` with ``headers``; return what the client learns of the request ID."""
    response = await client.get(path, headers=headers)
    echoed = response.headers["x-request-id"]
    shape = " (fresh: 32 hex digits)" if FRESH_ID.fullmatch(echoed) else ""
    seen = response.text
    same = "as the app saw it" if seen == echoed else f"but the app saw {seen!r}"
    return f"got back {echoed}{shape}, {same}"


async def talk_to(shop: Shop, client: httpx.AsyncClient) -> None:
    """Make the three kinds of requests, printing what the client sees after each."""
    print("1. two requests at once on one event loop: ada's report, and grace's cart")
    report = asyncio.create_task(
        get(client, "/report", {"X-Request-ID": "req-1", "Authorization": "Bearer token-ada"})
    )
    await wait(shop.report_waiting)  # ada's request awaits: now grace's
    cart = await get(
        client, "/cart", {"X-Request-ID": "req-2", "Authorization": "Bearer token-grace"}
    )
    print(f"  client: /cart   sent req-2, {cart}")
    shop.other_request_done.set()
    print(f"  client: /report sent req-1, {await report}")

    print("2. a request without an X-Request-ID")
    print(f"  client: / sent none, {await get(client, '/', {})}")

    bad = "<script>alert(1)</script>"
    print(f"3. a request whose X-Request-ID is not a valid ID: {bad!r}")
    print(f"  client: / sent it, {await get(client, '/', {'X-Request-ID': bad})}")


async def main() -> None:
    """Serve the app in this event loop, talk to it, then stop it."""
    setup_logging()
    shop = Shop()
    config = uvicorn.Config(
        RequestContextMiddleware(shop, get_user=user_of),
        lifespan="on",
        ws="none",  # no WebSockets here: no WebSocket library to load
        log_level="warning",  # uvicorn's own lines, with the port, would change every run
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    with socket.create_server(("127.0.0.1", 0)) as listening:
        # Already listening: requests wait in the socket's backlog until
        # uvicorn accepts them, so the port is known and usable at once.
        port = listening.getsockname()[1]
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        try:
            await wait(shop.started)
            print("server: uvicorn on 127.0.0.1, one event loop")
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT
            ) as client:
                await talk_to(shop, client)
        finally:
            server.should_exit = True
            await serving
    print("server: stopped")


if __name__ == "__main__":
    asyncio.run(main())
