"""The apps that tests/integrations/test_servers.py runs under real servers.

Each handler logs several lines on ``tests.server_apps``, naming the token
the client sent in ``X-Token``; the test knows which request ID and user
each token belongs to, and checks every line against them. Handlers sleep
briefly and hand work to a ContextExecutor, so that requests interleave.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from contextual import current_request, get_current_user, get_request_id

LOGGER = "tests.server_apps"
log = logging.getLogger(LOGGER)

#: The log lines every /work request writes (the WSGI app one more, while
#: the server iterates its body).
ASGI_LINES = ("start", "slept", "in pool", "end")
WSGI_LINES = ("start", "in pool", "end", "streaming")


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def user_from_scope(scope: dict[str, Any]) -> str | None:
    return _header(scope["headers"], b"x-user")


def user_from_environ(environ: dict[str, Any]) -> str | None:
    user: str | None = environ.get("HTTP_X_USER")
    return user


def _work_in_pool(token: str) -> dict[str, Any]:
    log.info("in pool %s", token)
    return {"id": get_request_id(), "user": get_current_user()}


def _seen(token: str | None, pool: dict[str, Any]) -> bytes:
    return json.dumps(
        {"token": token, "id": get_request_id(), "user": get_current_user(), "pool": pool}
    ).encode()


# -- ASGI --------------------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AsgiApp:
    """A raw ASGI app: /work over HTTP, an echo over WebSocket, and lifespan."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        self.lifespan_saw: list[Any] = []

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "websocket":
            await self.websocket(receive, send)
        else:
            await self.http(scope, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            self.lifespan_saw.append((message["type"], get_request_id(), current_request()))
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: dict[str, Any], send: Send) -> None:
        token = _header(scope["headers"], b"x-token")
        log.info("start %s", token)
        await asyncio.sleep(0.002)
        log.info("slept %s", token)
        loop = asyncio.get_running_loop()
        pool = await loop.run_in_executor(self.pool, _work_in_pool, token)
        log.info("end %s", token)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"set-cookie", b"a=1"),
                    (b"set-cookie", b"b=2"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _seen(token, pool)})

    async def websocket(self, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            token = message["text"]
            log.info("ws message %s", token)
            await asyncio.sleep(0.001)
            loop = asyncio.get_running_loop()
            pool = await loop.run_in_executor(self.pool, _work_in_pool, token)
            await send({"type": "websocket.send", "text": _seen(token, pool).decode()})


# -- WSGI --------------------------------------------------------------------------

StartResponse = Callable[..., Any]


class WsgiApp:
    """A raw WSGI app: /work, which streams its body and logs while streamed."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        token = environ.get("HTTP_X_TOKEN")
        log.info("start %s", token)
        time.sleep(0.001)
        pool = self.pool.submit(_work_in_pool, str(token)).result(timeout=10)
        log.info("end %s", token)
        start_response(
            "200 OK",
            [("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
        )
        return self.body(token, pool)

    def body(self, token: str | None, pool: dict[str, Any]) -> Iterator[bytes]:
        # Runs while the server iterates, after the app has returned.
        log.info("streaming %s", token)
        yield _seen(token, pool)


class ThreadWatch:
    """Outside the middleware: what each server thread sees before and after a request.

    ``/probe`` is served here, without the middleware, and reports what the
    server thread sees between requests; everything else goes to ``inner``,
    and the thread must see no request before the call, nor after close().
    """

    def __init__(self, inner: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.violations: list[str] = []
        self.threads_served: set[int] = set()
        self.probes: list[tuple[int, Any, Any, Any]] = []

    def _check(self, when: str) -> None:
        if get_request_id() is not None or current_request() is not None:
            with self.lock:
                self.violations.append(f"{when}: {get_request_id()!r}")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/probe":
            with self.lock:
                self.probes.append(
                    (threading.get_ident(), get_request_id(), get_current_user(), current_request())
                )
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"probe"]
        self._check("before the call")
        with self.lock:
            self.threads_served.add(threading.get_ident())
        return _Watched(self.inner(environ, start_response), self)


class _Watched:
    def __init__(self, body: Iterable[bytes], watch: ThreadWatch) -> None:
        self.body = body
        self.watch = watch

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        self.body.close()  # type: ignore[attr-defined]
        self.watch._check("after close()")
