"""Both middlewares under real servers, real clients and real concurrency.

The ASGI app runs under uvicorn, the WSGI app under waitress. Each server is
started by a fixture on 127.0.0.1 with a port the OS picks, and stopped at
the end of the module. Hundreds of requests with distinct IDs and users run
50 at a time; every log line the handlers write, in the event loop, in
ContextExecutor workers and in waitress's threads, must carry its own
request's ID and user.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from contextual import ContextExecutor, ContextStore, get_request_id
from contextual.integrations import asgi, wsgi
from support.http_servers import running_asgi, running_wsgi, serve_lifespan
from support.middleware import FRESH_ID, WARNINGS_LOGGER, ContextRecorder, recording, shown_in_log
from support.server_apps import (
    ASGI_LINES,
    LOGGER,
    WSGI_LINES,
    AsgiApp,
    ThreadWatch,
    WsgiApp,
    user_from_environ,
    user_from_scope,
)

REQUESTS = 500
CONCURRENCY = 50
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def executor() -> Iterator[ContextExecutor]:
    with ContextExecutor(max_workers=4, thread_name_prefix="tests-pool") as pool:
        yield pool


@dataclass
class Running:
    url: str
    app: Any


@pytest.fixture(scope="module")
def uvicorn_server(executor: ContextExecutor) -> Iterator[Running]:
    app = AsgiApp(executor)
    middleware = asgi.RequestContextMiddleware(app, get_user=user_from_scope)
    with running_asgi(middleware, ws="websockets-sansio") as url:
        yield Running(url, app)


@pytest.fixture(scope="module")
def waitress_server(executor: ContextExecutor) -> Iterator[Running]:
    # waitress: pure Python (nothing to compile on any interpreter), a real
    # pool of OS threads that each serve request after request (what we
    # must prove clean), and a server object to embed in a thread and stop.
    watch = ThreadWatch(
        wsgi.RequestContextMiddleware(WsgiApp(executor), get_user=user_from_environ)
    )
    with running_wsgi(watch, probe="/probe") as url:
        watch.probes.clear()
        yield Running(url, watch)


# -- the load ----------------------------------------------------------------------


@dataclass
class Planned:
    """One request: what the client sends, and what it must get back."""

    token: str
    user: str
    ids: list[bytes] = field(default_factory=list)  # the X-Request-ID values sent
    malicious: bool = False
    path: str = "/work"

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"X-Token", self.token.encode()),
            (b"X-User", self.user.encode()),
            *[(b"X-Request-ID", value) for value in self.ids],
        ]

    @property
    def as_server_sees_it(self) -> str:
        # Both servers give several values joined by ", " (waitress) or as
        # several pairs (uvicorn), which the middleware joins the same way.
        return ", ".join(value.decode("latin-1") for value in self.ids)


# Values that HTTP lets through to the app (CR, LF and the other control
# characters but tab never get past the clients and servers: the in-process
# tests cover those).
MALICIOUS: list[list[bytes]] = [
    [b"caf\xc3\xa9"],
    [b"\xe9vil"],
    [b"abc\x85Injected: next-line"],
    [b"a\tb"],
    [b"x" * 129],
    [b"y" * 500],
    [b""],
    [b"one", b"two"],
    [b"a b"],
    [b"<script>alert(1)</script>"],
    [b"%0d%0aSet-Cookie:%20evil=1"],
    [b"id'; DROP TABLE requests; --"],
    [b"\xff\xfe"],
]


def plan(count: int, *, malicious_every: int = 0) -> list[Planned]:
    run = uuid.uuid4().hex[:8]
    planned = []
    for n in range(count):
        item = Planned(token=f"{run}-{n}", user=f"user-{n % 37}")
        if malicious_every and n % malicious_every == 0:
            item.ids = MALICIOUS[(n // malicious_every) % len(MALICIOUS)]
            item.malicious = True
        else:
            item.ids = [f"req-{run}-{n}".encode()]
        planned.append(item)
    return planned


async def fire(url: str, planned: list[Planned]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=TIMEOUT) as client:

        async def one(item: Planned) -> httpx.Response:
            async with gate:
                return await client.get(item.path, headers=item.headers)

        return await asyncio.gather(*(one(item) for item in planned))


def check(
    planned: list[Planned],
    responses: list[httpx.Response],
    recorder: ContextRecorder,
    lines_per_request: int,
) -> None:
    expected: dict[str, tuple[str, str]] = {}
    for item, response in zip(planned, responses, strict=True):
        assert response.status_code == 200, response.text
        echoed = response.headers.get_list("x-request-id")
        assert len(echoed) == 1, echoed
        if item.malicious:
            assert FRESH_ID.fullmatch(echoed[0]), echoed
            assert echoed[0].encode() not in item.ids
            assert all(
                value.encode("latin-1") not in item.ids or value == ""
                for _, value in response.headers.multi_items()
            )
        else:
            assert echoed == [item.ids[0].decode()]
        assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
        assert response.json() == {
            "token": item.token,
            "id": echoed[0],
            "user": item.user,
            "pool": {"id": echoed[0], "user": item.user},
        }
        expected[item.token] = (echoed[0], item.user)

    lines = recorder.of(LOGGER)
    assert Counter(line.message.rsplit(" ", 1)[1] for line in lines) == dict.fromkeys(
        expected, lines_per_request
    )
    without_context = [line for line in lines if line.request_id is None or line.user is None]
    mixups = [
        line
        for line in lines
        if (line.request_id, line.user) != expected[line.message.rsplit(" ", 1)[1]]
    ]
    assert without_context == []
    assert mixups == []

    warnings = recorder.of(WARNINGS_LOGGER)
    malicious = {expected[item.token][0]: item for item in planned if item.malicious}
    assert sorted(line.request_id for line in warnings) == sorted(malicious), "once each"
    for line in warnings:
        item = malicious[line.request_id]  # type: ignore[index]
        assert shown_in_log(item.as_server_sees_it) in line.message
        assert len(line.message.splitlines()) == 1
        assert line.message.isascii()
        assert line.message.isprintable()


# -- uvicorn -----------------------------------------------------------------------


def test_uvicorn_requests_never_see_each_others_context(uvicorn_server: Running):
    planned = plan(REQUESTS)
    with recording(LOGGER, WARNINGS_LOGGER) as recorder:
        responses = asyncio.run(fire(uvicorn_server.url, planned))
    check(planned, responses, recorder, len(ASGI_LINES))


def test_uvicorn_replaces_malicious_ids_under_load(uvicorn_server: Running):
    planned = plan(260, malicious_every=2)
    with recording(LOGGER, WARNINGS_LOGGER) as recorder:
        responses = asyncio.run(fire(uvicorn_server.url, planned))
    check(planned, responses, recorder, len(ASGI_LINES))


def test_uvicorn_websockets_see_their_own_context(uvicorn_server: Running):
    url = uvicorn_server.url.replace("http://", "ws://") + "/ws"
    run = uuid.uuid4().hex[:8]
    connections, messages = 20, 3

    async def one(n: int) -> list[Any]:
        headers = {"X-Request-ID": f"ws-{run}-{n}", "X-User": f"ws-user-{n}"}
        async with connect(url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
            replies: list[Any] = [ws.response.headers.get_all("X-Request-ID")]
            for m in range(messages):
                await ws.send(f"{run}-{n}.{m}")
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
            return replies

    async def main() -> list[list[Any]]:
        return await asyncio.gather(*(one(n) for n in range(connections)))

    with recording(LOGGER, WARNINGS_LOGGER) as recorder:
        results = asyncio.run(main())

    for n, (echoed, *replies) in enumerate(results):
        request_id, user = f"ws-{run}-{n}", f"ws-user-{n}"
        assert echoed == [request_id]
        assert replies == [
            {
                "token": f"{run}-{n}.{m}",
                "id": request_id,
                "user": user,
                "pool": {"id": request_id, "user": user},
            }
            for m in range(messages)
        ]
    lines = recorder.of(LOGGER)
    assert len(lines) == connections * messages * 2
    for line in lines:
        n = int(line.message.rsplit(" ", 1)[1].split("-")[1].split(".")[0])
        assert (line.request_id, line.user) == (f"ws-{run}-{n}", f"ws-user-{n}")
    assert recorder.of(WARNINGS_LOGGER) == []


def test_uvicorn_lifespan_passes_through_outside_any_request(uvicorn_server: Running):
    assert uvicorn_server.app.lifespan_saw == [("lifespan.startup", None, None)]


# -- waitress ----------------------------------------------------------------------


def with_probes(planned: list[Planned], every: int) -> list[Planned]:
    """Mix in requests for /probe, served without the middleware."""
    mixed: list[Planned] = []
    for n, item in enumerate(planned):
        mixed.append(item)
        if n % every == 0:
            mixed.append(Planned(token=f"probe-{n}", user="", path="/probe"))
    return mixed


def test_waitress_requests_never_see_each_others_context(waitress_server: Running):
    watch: ThreadWatch = waitress_server.app
    planned = plan(REQUESTS)
    mixed = with_probes(planned, every=10)
    with recording(LOGGER, WARNINGS_LOGGER) as recorder:
        responses = asyncio.run(fire(waitress_server.url, mixed))
    work = [(item, r) for item, r in zip(mixed, responses, strict=True) if item.path == "/work"]
    check([item for item, _ in work], [r for _, r in work], recorder, len(WSGI_LINES))
    assert watch.violations == []
    # Served without the middleware: a server thread between requests holds nothing.
    assert len(watch.probes) == len(mixed) - len(planned)
    assert {(request_id, user, request) for _, request_id, user, request in watch.probes} == {
        (None, None, None)
    }
    assert len(watch.threads_served) > 1, "the load must spread over several threads"


def test_waitress_threads_hold_nothing_after_serving_requests(waitress_server: Running):
    watch: ThreadWatch = waitress_server.app
    asyncio.run(fire(waitress_server.url, plan(100)))
    watch.probes.clear()
    # One at a time: every probe lands on a thread that has served requests.
    with httpx.Client(base_url=waitress_server.url, timeout=TIMEOUT) as client:
        for _ in range(16):
            assert client.get("/probe").status_code == 200
    assert {thread for thread, *_ in watch.probes} <= watch.threads_served
    assert {(request_id, user, request) for _, request_id, user, request in watch.probes} == {
        (None, None, None)
    }
    assert watch.violations == []


def test_waitress_replaces_malicious_ids_under_load(waitress_server: Running):
    planned = plan(260, malicious_every=2)
    with recording(LOGGER, WARNINGS_LOGGER) as recorder:
        responses = asyncio.run(fire(waitress_server.url, planned))
    check(planned, responses, recorder, len(WSGI_LINES))
    assert waitress_server.app.violations == []


# -- thread stores, request after request on one server thread ---------------------


class TenantApp:
    """Writes the tenant a path names into a ``"thread"`` store; records what each request found.

    ``/tenant/<name>`` writes it in the app's call, ``/stream/<name>`` while
    the server iterates the body, ``/boom/<name>`` just before raising. Each
    request also takes a connection from a ``propagate=False`` thread store,
    making one if that thread has none yet. ``/ready`` (the server's probe)
    does nothing.
    """

    def __init__(self, unique_name: str) -> None:
        self.tenants = ContextStore(f"{unique_name}.tenants", backend="thread")
        self.connections = ContextStore(
            f"{unique_name}.connections", backend="thread", propagate=False
        )
        self.numbers = itertools.count(1)
        self.found: list[dict[str, Any]] = []

    def visit(self, path: str) -> str:
        """Record what this request finds; return the action the path asks for."""
        _, action, name = path.split("/")
        if "connection" not in self.connections:
            self.connections["connection"] = f"conn-{next(self.numbers)}"
        self.found.append(
            {
                "path": path,
                "thread": threading.get_ident(),
                "request_id": get_request_id(),
                "tenant": self.tenants.get("tenant"),
                "connection": self.connections["connection"],
            }
        )
        if action != "stream":
            self.tenants["tenant"] = name
        if action == "boom":
            raise RuntimeError(f"boom in {path}")
        return name


class TenantWsgiApp(TenantApp):
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/ready":
            return [b"ready"]
        path = environ["PATH_INFO"]
        name = self.visit(path)
        if path.startswith("/stream/"):
            return self.stream(name)
        return [b"ok"]

    def stream(self, name: str) -> Iterator[bytes]:
        yield b"o"
        self.tenants["tenant"] = name
        yield b"k"


class TenantAsgiApp(TenantApp):
    """``/hold/<name>`` also waits, once it has written, until :meth:`release` lets it answer."""

    def __init__(self, unique_name: str) -> None:
        super().__init__(unique_name)
        self.held: dict[str, threading.Event] = {}
        self.releases: dict[str, asyncio.Event] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def holding(self, name: str) -> threading.Event:
        """Set once ``/hold/<name>`` has written its tenant and waits."""
        return self.held.setdefault(name, threading.Event())

    def release(self, name: str) -> None:
        """Let ``/hold/<name>`` answer (from any thread)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.releases[name].set)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        name = self.visit(scope["path"])
        if scope["path"].startswith("/hold/"):
            self.loop = asyncio.get_running_loop()
            release = self.releases[name] = asyncio.Event()
            self.holding(name).set()
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def visit(url: str, *paths: str) -> list[int]:
    """Request ``paths`` one after another; return the status codes."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        return [client.get(path).status_code for path in paths]


def one_thread(app: TenantApp) -> int:
    """The one server thread every recorded request ran in (not the test's)."""
    (thread,) = {found["thread"] for found in app.found}
    assert thread != threading.get_ident()
    return thread


@pytest.fixture
def one_thread_waitress(unique_name: str) -> Iterator[Running]:
    # One worker thread: every request is served by the same thread.
    app = TenantWsgiApp(unique_name)
    with running_wsgi(wsgi.RequestContextMiddleware(app), threads=1) as url:
        yield Running(url, app)


@pytest.fixture
def uvicorn_tenants(unique_name: str) -> Iterator[Running]:
    app = TenantAsgiApp(unique_name)
    with running_asgi(asgi.RequestContextMiddleware(app)) as url:
        yield Running(url, app)


def tenants_found(app: TenantApp) -> list[tuple[str, Any]]:
    return [(found["path"], found["tenant"]) for found in app.found]


def test_waitress_a_thread_store_written_in_one_request_is_gone_in_the_next(
    one_thread_waitress: Running,
):
    assert visit(one_thread_waitress.url, "/tenant/acme", "/tenant/globex") == [200, 200]
    app: TenantApp = one_thread_waitress.app
    assert tenants_found(app) == [("/tenant/acme", None), ("/tenant/globex", None)]
    one_thread(app)
    assert len({found["request_id"] for found in app.found}) == 2


def test_waitress_a_thread_store_written_while_streaming_is_gone_in_the_next_request(
    one_thread_waitress: Running,
):
    assert visit(one_thread_waitress.url, "/stream/acme", "/tenant/globex") == [200, 200]
    app: TenantApp = one_thread_waitress.app
    assert tenants_found(app) == [("/stream/acme", None), ("/tenant/globex", None)]
    one_thread(app)


def test_waitress_a_thread_store_written_before_the_app_raised_is_gone_in_the_next(
    one_thread_waitress: Running,
):
    assert visit(one_thread_waitress.url, "/boom/acme", "/tenant/globex") == [500, 200]
    app: TenantApp = one_thread_waitress.app
    assert tenants_found(app) == [("/boom/acme", None), ("/tenant/globex", None)]
    one_thread(app)


def test_waitress_a_non_propagating_thread_store_keeps_its_connection_across_requests(
    one_thread_waitress: Running,
):
    assert visit(one_thread_waitress.url, "/tenant/acme", "/tenant/globex") == [200, 200]
    app: TenantApp = one_thread_waitress.app
    assert [found["connection"] for found in app.found] == ["conn-1", "conn-1"]
    one_thread(app)


def test_uvicorn_a_thread_store_written_in_one_request_is_gone_in_the_next(
    uvicorn_tenants: Running,
):
    assert visit(uvicorn_tenants.url, "/tenant/acme", "/tenant/globex") == [200, 200]
    app: TenantApp = uvicorn_tenants.app
    assert tenants_found(app) == [("/tenant/acme", None), ("/tenant/globex", None)]
    one_thread(app)


def test_uvicorn_a_thread_store_written_before_the_app_raised_is_gone_in_the_next(
    uvicorn_tenants: Running,
):
    assert visit(uvicorn_tenants.url, "/boom/acme", "/tenant/globex") == [500, 200]
    app: TenantApp = uvicorn_tenants.app
    assert tenants_found(app) == [("/boom/acme", None), ("/tenant/globex", None)]
    one_thread(app)


def test_uvicorn_a_non_propagating_thread_store_keeps_its_connection_across_requests(
    uvicorn_tenants: Running,
):
    assert visit(uvicorn_tenants.url, "/tenant/acme", "/tenant/globex") == [200, 200]
    app: TenantApp = uvicorn_tenants.app
    assert [found["connection"] for found in app.found] == ["conn-1", "conn-1"]
    one_thread(app)


def test_uvicorn_overlapping_requests_leave_the_thread_as_before_the_first_began(
    uvicorn_tenants: Running,
):
    # globex begins and writes; acme begins while it is open and finds its
    # write; globex ends, then acme: the next request finds the thread as
    # it was before globex began.
    app: TenantAsgiApp = uvicorn_tenants.app

    async def main() -> list[int]:
        async with httpx.AsyncClient(base_url=uvicorn_tenants.url, timeout=TIMEOUT) as client:
            globex = asyncio.create_task(client.get("/hold/globex"))
            assert await asyncio.to_thread(app.holding("globex").wait, TIMEOUT)
            acme = asyncio.create_task(client.get("/hold/acme"))
            assert await asyncio.to_thread(app.holding("acme").wait, TIMEOUT)
            app.release("globex")
            statuses = [(await globex).status_code]
            app.release("acme")
            statuses.append((await acme).status_code)
            statuses.append((await client.get("/tenant/initech")).status_code)
            return statuses

    assert asyncio.run(main()) == [200, 200, 200]
    assert tenants_found(app) == [
        ("/hold/globex", None),
        ("/hold/acme", "globex"),
        ("/tenant/initech", None),
    ]
    one_thread(app)
