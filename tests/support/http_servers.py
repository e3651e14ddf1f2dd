"""Real servers on loopback for the tests that serve HTTP, and what they share.

``running_asgi`` serves an ASGI app with uvicorn, ``running_wsgi`` a WSGI
app with waitress; each in a thread of this process, on 127.0.0.1 and a
port the OS picks, stopped when the block ends. ``forget_reports`` lets a
test see the warnings that are logged once per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
import waitress
from waitress import wasyncore

from contextual.integrations import _headers

TIMEOUT = 20.0


def forget_reports() -> None:
    """Forget which kinds of problems were reported, so they are reported again."""
    _headers._reported.clear()


async def serve_lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI lifespan's startup, then its shutdown (uvicorn runs with lifespan on)."""
    assert (await receive())["type"] == "lifespan.startup"
    await send({"type": "lifespan.startup.complete"})
    assert (await receive())["type"] == "lifespan.shutdown"
    await send({"type": "lifespan.shutdown.complete"})


def wait_until(ready: Callable[[], bool], thread: threading.Thread, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if not thread.is_alive():
            pytest.fail(f"{what} stopped before it was ready")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} was not ready after {TIMEOUT} s")
        time.sleep(0.01)


@contextmanager
def running_asgi(app: Any, **options: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn (lifespan on) for a block; yield its base URL.

    ``options`` go to ``uvicorn.Config`` (``ws=`` for the WebSocket tests).
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="asyncio",
        http="h11",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # Longer than any test: uvicorn closes a connection idle for 5 s by
        # default, and a client that picks that connection from its pool as
        # it closes gets a reset (httpx.ReadError) under a slow, loaded run.
        timeout_keep_alive=120,
        **options,
    )
    server = uvicorn.Server(config)
    # In a thread, uvicorn installs no signal handlers and leaves the test's alone.
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started, thread, "uvicorn")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "uvicorn did not stop"


@contextmanager
def running_wsgi(app: Any, *, threads: int = 8, probe: str = "/ready") -> Iterator[str]:
    """Serve ``app`` with waitress for a block; yield its base URL.

    The server is ready once a request for ``probe`` gets any response.
    """
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}"

    def serving() -> bool:
        try:
            httpx.get(f"{url}{probe}", timeout=1)
        except httpx.TransportError:
            return False
        return True

    wait_until(serving, thread, "waitress")
    try:
        yield url
    finally:
        # Close every channel from the server's own loop thread; the loop
        # ends when nothing is left to watch.
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        thread.join(TIMEOUT)
        server.task_dispatcher.shutdown()
        assert not thread.is_alive(), "waitress did not stop"
