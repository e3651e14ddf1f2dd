"""The two services of test_http_services.py: A calls B over loopback with httpx.

Service A (ASGI) opens each request with the ID and user its client sent,
sets a tenant and a role in stores of its own, and calls service B with an
``httpx.AsyncClient`` that carries the context. Service B (WSGI or ASGI)
restores what its allow-list takes: the user and the tenant, never the
role. Both log on their own logger; B's handlers also hand work to a
ContextExecutor, whose log line must carry A's request too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

import httpx

from contextual import ContextStore, get_current_user, get_request_id
from contextual.integrations import asgi, wsgi
from contextual.integrations.http import install_httpx
from support.http_servers import serve_lifespan

A_LOGGER = "tests.http_services.a"
B_LOGGER = "tests.http_services.b"
a_log = logging.getLogger(A_LOGGER)
b_log = logging.getLogger(B_LOGGER)

TENANT = ContextStore("tests.http_services.tenant", defaults={"tenant": None})
ROLE = ContextStore("tests.http_services.role", defaults={"role": None})

#: What A lets out on its /call-all route: the user, the tenant and the role.
A_SENDS = {
    "contextual.request": ["user_id"],
    "tests.http_services.tenant": True,
    "tests.http_services.role": True,
}
#: What B takes: the user and the tenant; never the role.
B_TAKES = {"contextual.request": ["user_id"], "tests.http_services.tenant": ["tenant"]}

#: The log lines B writes for each request.
B_LINES = ("b start", "b in pool")


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _user_from_scope(scope: dict[str, Any]) -> str | None:
    return header(scope["headers"], b"x-user")


def _b_view(token: str | None, baggage: str | None, request_id: str | None) -> dict[str, Any]:
    """What B saw: its context, and the headers that carried it."""
    return {
        "token": token,
        "id": get_request_id(),
        "user": get_current_user(),
        "tenant": TENANT.get("tenant"),
        "role": ROLE.get("role"),
        "received": {"x-request-id": request_id, "baggage": baggage},
    }


def _in_pool(token: str | None) -> dict[str, Any]:
    b_log.info("b in pool %s", token)
    return {"id": get_request_id(), "user": get_current_user(), "tenant": TENANT.get("tenant")}


# -- A -----------------------------------------------------------------------------


class ServiceA:
    """ASGI: /call-all and /call-default call the B named in X-Target, at /work."""

    def __init__(self) -> None:
        self.clients: dict[str, httpx.AsyncClient] = {}

    def client(self, route: str) -> httpx.AsyncClient:
        # Made in A's event loop, on first use, and closed at shutdown.
        if route not in self.clients:
            client = httpx.AsyncClient(timeout=20.0)
            install_httpx(client, allow=A_SENDS if route == "/call-all" else None)
            self.clients[route] = client
        return self.clients[route]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            await asyncio.gather(*(client.aclose() for client in self.clients.values()))
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = scope["headers"]
        token = header(headers, b"x-token")
        target = header(headers, b"x-target")
        with (
            TENANT.scope(tenant=header(headers, b"x-tenant")),
            ROLE.scope(role="admin"),
        ):
            a_log.info("a calls B %s", token)
            response = await self.client(scope["path"]).get(
                f"{target}/work", headers={"X-Token": token or ""}
            )
            a_log.info("a got B's answer %s", token)
        body = json.dumps(
            {"a": {"id": get_request_id(), "user": get_current_user()}, "b": response.json()}
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


# -- B -----------------------------------------------------------------------------


class ServiceB:
    """WSGI: /work reports what it sees; /probe, outside the middleware, what a thread holds."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        self.app = wsgi.RequestContextMiddleware(self.work, baggage=B_TAKES)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/probe":
            seen = {
                "id": get_request_id(),
                "tenant": TENANT.get("tenant"),
                "role": ROLE.get("role"),
            }
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(seen).encode()]
        return self.app(environ, start_response)

    def work(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        token = environ.get("HTTP_X_TOKEN")
        b_log.info("b start %s", token)
        view = _b_view(token, environ.get("HTTP_BAGGAGE"), environ.get("HTTP_X_REQUEST_ID"))
        view["pool"] = self.pool.submit(_in_pool, token).result(timeout=20)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(view).encode()]


class AsgiServiceB:
    """ASGI: /work reports what it sees."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        self.app = asgi.RequestContextMiddleware(self.work, baggage=B_TAKES)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await self.app(scope, receive, send)

    async def work(self, scope: Any, _receive: Any, send: Any) -> None:
        headers = scope["headers"]
        token = header(headers, b"x-token")
        b_log.info("b start %s", token)
        baggage = [value.decode() for key, value in headers if key == b"baggage"]
        view = _b_view(
            token, ",".join(baggage) if baggage else None, header(headers, b"x-request-id")
        )
        loop = asyncio.get_running_loop()
        view["pool"] = await loop.run_in_executor(self.pool, _in_pool, token)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(view).encode()})


def service_a() -> asgi.RequestContextMiddleware:
    """A, behind the middleware: the ID and user come from its client."""
    return asgi.RequestContextMiddleware(ServiceA(), get_user=_user_from_scope)  # type: ignore[arg-type]
