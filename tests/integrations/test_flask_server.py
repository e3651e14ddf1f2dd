"""A real Flask app with real Flask-Login sessions, served by waitress, under load.

The app (support.flask_app) runs under waitress on 127.0.0.1, with
``contextual.integrations.flask.install`` on it. Every user logs in first
and keeps its own session cookie; then 500 requests run 50 at a time, each
with its own X-Request-ID, user and token. Each request logs in the view, in
a ContextExecutor task, in ``teardown_request`` and ``teardown_appcontext``
handlers, and while waitress iterates its streamed body; a handler with a
ContextFilter records every line in this process, and each must carry its
own request's ID and user, none another's. The user is set with
``update_request`` from a ``before_request`` hook, and from the Flask-Login
user loader: both ways are served.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from contextual import ContextExecutor
from support.flask_app import LOGGER, WORK_LINES, FlaskApp
from support.http_servers import running_wsgi
from support.middleware import FRESH_ID, WARNINGS_LOGGER, recording, shown_in_log
from support.server_apps import ThreadWatch

REQUESTS = 500
CONCURRENCY = 50
TIMEOUT = 20.0

# Values HTTP lets through to the app that the middleware must refuse.
MALICIOUS: list[bytes] = [
    b"caf\xc3\xa9",
    b"a b",
    b"x" * 129,
    b"",
    b"<script>alert(1)</script>",
    b"%0d%0aSet-Cookie:%20evil=1",
    b"id'; DROP TABLE requests; --",
]


@dataclass
class Served:
    url: str
    flask: FlaskApp
    watch: ThreadWatch


@pytest.fixture(scope="module")
def executor() -> Iterator[ContextExecutor]:
    with ContextExecutor(max_workers=4, thread_name_prefix="tests-flask-pool") as pool:
        yield pool


@pytest.fixture(scope="module", params=["before_request", "user_loader"])
def server(request: pytest.FixtureRequest, executor: ContextExecutor) -> Iterator[Served]:
    flask = FlaskApp(executor, request.param)
    # Outside the app: each waitress thread must hold no request before
    # a call, nor after the response is closed.
    watch = ThreadWatch(flask.app)
    with running_wsgi(watch, probe="/ready") as url:
        yield Served(url, flask, watch)


@dataclass
class Planned:
    """One request: what the client sends, and what it must get back."""

    token: str
    user: str
    request_id: bytes
    cookie: str = ""
    echoed: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def malicious(self) -> bool:
        return not self.request_id.startswith(b"req-")

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"X-Token", self.token.encode()),
            (b"X-Request-ID", self.request_id),
            (b"Cookie", f"session={self.cookie}".encode()),
        ]


def plan(count: int, *, malicious_every: int = 0) -> list[Planned]:
    run = uuid.uuid4().hex[:8]
    planned = []
    for n in range(count):
        request_id = f"req-{run}-{n}".encode()
        if malicious_every and n % malicious_every == 0:
            request_id = MALICIOUS[(n // malicious_every) % len(MALICIOUS)]
        planned.append(Planned(f"{run}-{n}", f"user-{run}-{n}", request_id))
    return planned


def limits() -> httpx.Limits:
    return httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)


async def log_in(url: str, planned: list[Planned]) -> None:
    """Log each planned user in; keep its session cookie for its request."""
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits(), timeout=TIMEOUT) as client:

        async def one(item: Planned) -> None:
            async with gate:
                response = await client.post(f"/login/{item.user}")
            assert response.status_code == 200, response.text
            item.cookie = response.cookies["session"]

        await asyncio.gather(*(one(item) for item in planned))


async def fire(url: str, planned: list[Planned], path: str = "/work") -> list[httpx.Response]:
    gate = asyncio.Semaphore(CONCURRENCY)
    # Each request sends its own Cookie header, which wins over the client's jar.
    async with httpx.AsyncClient(base_url=url, limits=limits(), timeout=TIMEOUT) as client:

        async def one(item: Planned) -> httpx.Response:
            async with gate:
                return await client.get(path, headers=item.headers)

        return await asyncio.gather(*(one(item) for item in planned))


def serve(server: Served, planned: list[Planned]) -> list[httpx.Response]:
    asyncio.run(log_in(server.url, planned))
    server.flask.most_in_flight = 0
    server.watch.probes.clear()
    with recording(LOGGER, WARNINGS_LOGGER) as recorder:
        responses = asyncio.run(fire(server.url, planned))
    check(planned, responses)
    check_lines(planned, recorder)
    return responses


def check(planned: list[Planned], responses: list[httpx.Response]) -> None:
    for item, response in zip(planned, responses, strict=True):
        assert response.status_code == 200, response.text
        echoed = response.headers.get_list("x-request-id")
        assert len(echoed) == 1, echoed
        item.echoed = echoed[0]
        if item.malicious:
            assert FRESH_ID.fullmatch(item.echoed), echoed
        else:
            assert item.echoed == item.request_id.decode()
        seen = {"id": item.echoed, "user": item.user}
        assert response.json() == {"token": item.token, "view": seen, "pool": seen, "stream": seen}


def check_lines(planned: list[Planned], recorder) -> None:
    expected = {item.token: (item.echoed, item.user) for item in planned}
    lines = recorder.of(LOGGER)
    by_token = Counter(line.message.rsplit(" ", 1)[1] for line in lines)
    assert by_token == dict.fromkeys(expected, len(WORK_LINES))
    assert Counter(line.message.rsplit(" ", 1)[0] for line in lines) == dict.fromkeys(
        WORK_LINES, len(planned)
    )
    mixups = [
        line
        for line in lines
        if (line.request_id, line.user) != expected[line.message.rsplit(" ", 1)[1]]
    ]
    assert mixups == []
    # A refused ID is reported once per request, inside it, under its new ID;
    # before Flask runs, so before the app knows the user.
    warnings = recorder.of(WARNINGS_LOGGER)
    malicious = {item.echoed: item for item in planned if item.malicious}
    assert sorted(line.request_id for line in warnings) == sorted(malicious)
    for line in warnings:
        item = malicious[line.request_id]  # type: ignore[index]
        assert line.user is None
        assert shown_in_log(item.request_id.decode("latin-1")) in line.message
        assert line.message.isascii()
        assert line.message.isprintable()


# A thousand requests through a real server (the logins, then the load): on a
# busy CI machine, more than the default minute.
@pytest.mark.timeout(180)
def test_requests_never_see_each_others_context(server: Served):
    serve(server, plan(REQUESTS))
    assert server.flask.most_in_flight > 1, "requests must overlap in the view"
    assert server.watch.violations == []
    assert len(server.watch.threads_served) > 1, "the load must spread over several threads"


@pytest.mark.timeout(120)
def test_bad_request_ids_are_replaced_under_load(server: Served):
    serve(server, plan(140, malicious_every=2))
    assert server.watch.violations == []


def test_server_threads_hold_nothing_between_requests(server: Served):
    asyncio.run(fire(server.url, plan(50)))  # not logged in: 401, through the app all the same
    server.watch.probes.clear()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        for _ in range(16):
            assert client.get("/probe").status_code == 200
    assert {thread for thread, *_ in server.watch.probes} <= server.watch.threads_served
    assert {
        (request_id, user, request) for _, request_id, user, request in server.watch.probes
    } == {(None, None, None)}
    assert server.watch.violations == []


def test_a_request_held_in_its_view_keeps_its_user_while_another_runs(server: Served):
    ada, grace = plan(2)
    asyncio.run(log_in(server.url, [ada, grace]))
    flask = server.flask
    flask.hold.clear()
    flask.release.clear()
    with (
        recording(LOGGER) as recorder,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as http,
        ThreadPoolExecutor(max_workers=1) as client,
    ):
        held = client.submit(http.get, "/hold", headers=ada.headers)
        assert flask.hold.wait(TIMEOUT)
        # ada's request waits inside its view: grace's runs from start to end.
        other = http.get("/work", headers=grace.headers)
        flask.release.set()
        held_response = held.result(TIMEOUT)
    assert other.json()["view"] == {"id": grace.request_id.decode(), "user": grace.user}
    assert held_response.json() == {"id": ada.request_id.decode(), "user": ada.user}
    ada_lines = [
        (line.message, line.request_id, line.user)
        for line in recorder.of(LOGGER)
        if line.message.endswith(ada.token)
    ]
    ada_id = ada.request_id.decode()
    assert ada_lines == [
        (f"start {ada.token}", ada_id, ada.user),
        (f"released {ada.token}", ada_id, ada.user),
        (f"teardown_request {ada.token}", ada_id, ada.user),
        (f"teardown_appcontext {ada.token}", ada_id, ada.user),
    ]
    grace_lines = [line for line in recorder.of(LOGGER) if line.message.endswith(grace.token)]
    assert len(grace_lines) == len(WORK_LINES)
    assert {(line.request_id, line.user) for line in grace_lines} == {
        (grace.request_id.decode(), grace.user)
    }
