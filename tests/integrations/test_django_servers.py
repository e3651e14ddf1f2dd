"""The Django middleware in a real Django project, under waitress (WSGI) and uvicorn (ASGI).

The project (tests/support/django_project) has sessions and Django's users
in a sqlite database, fifty users logged in with sessions of their own, and
the how-to's LOGGING recipe, whose handler keeps the formatted lines. Each
server runs in a thread of this process on 127.0.0.1; 500 requests, 50 at a
time, each with its own X-Request-ID and its own user's session cookie, go
to sync views (in waitress's threads, and in the thread Django runs them in
under ASGI), async views (in the one-off event loop Django gives each under
WSGI, and in uvicorn's loop) and streamed bodies, each handing work to a
ContextExecutor. Every line must carry its own request's ID and user.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

from support import django_project
from support.django_project import logs
from support.django_project.queries import counting_queries, opened_connections
from support.http_servers import running_asgi, running_wsgi, serve_lifespan
from support.middleware import FRESH_ID, WARNINGS_LOGGER, recording, shown_in_log
from support.server_apps import ThreadWatch

REQUESTS = 500
CONCURRENCY = 50
TIMEOUT = 20.0
VIEWS = "support.django_project.views"
POOL = "django-project-pool"  # the names of the project pool's threads


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> django_project.Project:
    return django_project.setup(tmp_path_factory.mktemp("django"))


class WithLifespan:
    """Django's ASGI app, which refuses lifespan scopes, behind a lifespan answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
        else:
            await self.app(scope, receive, send)


@dataclass
class Running:
    url: str
    watch: ThreadWatch | None = None


@pytest.fixture(scope="module")
def waitress_server(project: django_project.Project) -> Iterator[Running]:
    # Outside Django: what each server thread sees before and after a request.
    watch = ThreadWatch(get_wsgi_application())
    with running_wsgi(watch, probe="/probe") as url:
        watch.probes.clear()
        yield Running(url, watch)


@pytest.fixture(scope="module")
def uvicorn_server(project: django_project.Project) -> Iterator[Running]:
    with running_asgi(WithLifespan(get_asgi_application())) as url:
        yield Running(url)


@pytest.fixture(params=["waitress", "uvicorn"])
def server(request: pytest.FixtureRequest) -> Running:
    running: Running = request.getfixturevalue(f"{request.param}_server")
    return running


@pytest.fixture(autouse=True)
def _no_lines_left() -> Iterator[None]:
    logs.taken()
    yield
    logs.taken()


# -- the load ----------------------------------------------------------------------


@dataclass
class Planned:
    """One request: what the client sends, and what it must get back."""

    path: str
    token: str
    request_id: str
    user: django_project.User | None

    def headers(self, project: django_project.Project) -> dict[str, str]:
        headers = {"X-Token": self.token, "X-Request-ID": self.request_id}
        if self.user is not None:
            headers["Cookie"] = f"{project.cookie}={self.user.session}"
        return headers

    @property
    def user_shown(self) -> str:
        """The user as the log format shows it: the primary key, or "-"."""
        return "-" if self.user is None else str(self.user.pk)


def plan(project: django_project.Project, paths: list[str], count: int) -> list[Planned]:
    run = uuid.uuid4().hex[:8]
    return [
        Planned(
            path=paths[n % len(paths)],
            token=f"{run}-{n}",
            request_id=f"req-{run}-{n}",
            user=project.users[n % len(project.users)],
        )
        for n in range(count)
    ]


async def fire(url: str, project: django_project.Project, planned: list[Planned]) -> list[Any]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=TIMEOUT) as client:

        async def one(item: Planned) -> httpx.Response:
            async with gate:
                return await client.get(item.path, headers=item.headers(project))

        return await asyncio.gather(*(one(item) for item in planned))


def expected_body(item: Planned) -> Any:
    user = None if item.user is None else item.user.pk
    if item.path in {"/stream", "/astream"}:
        return "".join(f"{part} {item.request_id} {user}\n" for part in range(2))
    seen = {"id": item.request_id, "user": user}
    return {"token": item.token, **seen, "pool": seen}


def body_of(item: Planned, response: httpx.Response) -> Any:
    return response.text if item.path in {"/stream", "/astream"} else response.json()


LINES = {
    "/work": ["start", "in pool", "end"],
    "/awork": ["start", "in pool", "end"],
    "/stream": ["start", "streaming", "streaming"],
    "/astream": ["start", "streaming", "streaming"],
}


def split(line: logs.Line) -> tuple[str, str]:
    """What a view's line says ("in pool"), and the token it names."""
    what, token = line.message.rsplit(" ", 1)
    return what, token


def check(planned: list[Planned], responses: list[httpx.Response]) -> None:
    for item, response in zip(planned, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.headers.get_list("x-request-id") == [item.request_id]
        assert body_of(item, response) == expected_body(item)

    lines = [line for line in logs.taken() if line.logger == VIEWS]
    by_token = {item.token: item for item in planned}
    assert Counter(split(line) for line in lines) == Counter(
        (what, item.token) for item in planned for what in LINES[item.path]
    )
    mixups = [
        line
        for line in lines
        if (line.request_id, line.user)
        != (by_token[split(line)[1]].request_id, by_token[split(line)[1]].user_shown)
    ]
    assert mixups == []


def test_waitress_requests_never_see_each_others_request_or_user(
    project: django_project.Project, waitress_server: Running
):
    # Sync views in waitress's threads; async views in the event loop Django
    # starts for each under WSGI; a body streamed after the view returned.
    planned = plan(project, ["/work", "/awork", "/stream"], REQUESTS)
    responses = asyncio.run(fire(waitress_server.url, project, planned))
    check(planned, responses)
    watch = waitress_server.watch
    assert watch is not None
    assert watch.violations == []
    assert len(watch.threads_served) > 1, "the load must spread over several threads"


def test_uvicorn_requests_never_see_each_others_request_or_user(
    project: django_project.Project, uvicorn_server: Running
):
    # Async views in uvicorn's loop; sync views in the thread Django runs
    # them in; an async body streamed after the view returned.
    planned = plan(project, ["/work", "/awork", "/astream"], REQUESTS)
    responses = asyncio.run(fire(uvicorn_server.url, project, planned))
    check(planned, responses)


# -- no query for requests that never log ------------------------------------------


def get(running: Running, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(base_url=running.url, timeout=TIMEOUT) as client:
        return client.get(path, headers=headers or {})


def test_waitress_a_logged_in_request_that_never_logs_makes_no_query(
    project: django_project.Project, waitress_server: Running
):
    cookie = {"Cookie": f"{project.cookie}={project.users[0].session}"}
    with counting_queries() as quiet:
        assert get(waitress_server, "/quiet", cookie).status_code == 200
    with counting_queries() as logging:
        assert get(waitress_server, "/work", {**cookie, "X-Token": "t"}).status_code == 200
    assert quiet == []
    # The same count sees the session's and the user's queries when a line is logged.
    assert any("django_session" in sql for sql in logging)
    assert any("auth_user" in sql for sql in logging)


def test_uvicorn_a_request_without_a_session_makes_no_query(
    project: django_project.Project, uvicorn_server: Running
):
    cookie = {"Cookie": f"{project.cookie}={project.users[0].session}"}
    with counting_queries() as anonymous:
        response = get(uvicorn_server, "/quiet")
    with counting_queries() as logged_in:
        assert get(uvicorn_server, "/quiet", cookie).status_code == 200
    assert response.status_code == 200
    assert anonymous == []
    # Under ASGI the user is read as the request starts, when it has a session.
    assert any("django_session" in sql for sql in logged_in)
    assert any("auth_user" in sql for sql in logged_in)


# -- the rest of the request --------------------------------------------------------


@pytest.mark.parametrize("path", ["/update", "/aupdate"])
def test_update_request_holds_for_the_rest_of_that_request_only(
    project: django_project.Project, server: Running, path: str
):
    # Requests that change their user, mixed with requests that don't, on
    # the same threads: the change never reaches another request.
    planned = plan(project, [path, "/work"], 100)
    responses = asyncio.run(fire(server.url, project, planned))
    lines = [line for line in logs.taken() if line.logger == VIEWS]
    for item, response in zip(planned, responses, strict=True):
        assert response.status_code == 200, response.text
        changed = f"changed-{item.token}"
        mine = [
            (split(line)[0], line.request_id, line.user)
            for line in lines
            if split(line)[1] == item.token
        ]
        if item.path == path:
            assert response.json()["user"] == changed
            assert response.json()["pool"] == {"id": item.request_id, "user": changed}
            assert mine == [
                ("before", item.request_id, item.user_shown),
                ("after", item.request_id, changed),
                ("in pool", item.request_id, changed),
            ]
        else:
            assert response.json() == expected_body(item)
            assert all(
                (request_id, user) == (item.request_id, item.user_shown)
                for _, request_id, user in mine
            )


def test_the_user_is_read_in_the_pool_when_the_pool_logs_first(
    project: django_project.Project, waitress_server: Running
):
    planned = plan(project, ["/pool-first"], 20)
    with opened_connections() as opened:
        responses = asyncio.run(fire(waitress_server.url, project, planned))
    for item, response in zip(planned, responses, strict=True):
        assert response.json() == expected_body(item)
    lines = logs.taken()
    assert sorted((line.request_id, line.user, line.message) for line in lines) == sorted(
        (item.request_id, item.user_shown, f"in pool {item.token}") for item in planned
    )
    # The lookup queried from the pool's threads, and closed what it opened
    # there: Django closes only the connections of the request's thread.
    in_pool = [connection for thread, connection in opened if thread.startswith(POOL)]
    assert in_pool != []
    assert [connection for connection in in_pool if connection.connection is not None] == []


# -- the request ID header ----------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        [("X-Request-ID", "one"), ("X-Request-ID", "two")],
        [("X-Request-ID", "<script>alert(1)</script>")],
        [("X-Request-ID", "x" * 129)],
    ],
    ids=["two headers", "not an ID", "too long"],
)
def test_a_refused_request_id_is_replaced_echoed_and_reported(
    project: django_project.Project, server: Running, sent: list[tuple[str, str]]
):
    cookie = ("Cookie", f"{project.cookie}={project.users[7].session}")
    headers = [*sent, ("X-Token", "refused"), cookie]
    with recording(WARNINGS_LOGGER) as recorder, httpx.Client(base_url=server.url) as client:
        response = client.get("/work", headers=headers, timeout=TIMEOUT)
    echoed = response.headers.get_list("x-request-id")
    assert len(echoed) == 1
    assert FRESH_ID.fullmatch(echoed[0])
    assert response.json()["id"] == echoed[0]
    (warning,) = recorder.of(WARNINGS_LOGGER)
    assert warning.request_id == echoed[0]
    assert warning.user == project.users[7].pk
    shown = sent[0][1] if len(sent) == 1 else None
    assert "Refused the X-Request-ID header" in warning.message
    if shown is not None:
        assert shown_in_log(shown) in warning.message
    assert [(line.request_id, line.user) for line in logs.taken()] == [
        (echoed[0], str(project.users[7].pk))
    ] * 3


def test_a_request_without_an_id_gets_a_fresh_one(project: django_project.Project, server: Running):
    response = get(server, "/work", {"X-Token": "fresh"})
    (echoed,) = response.headers.get_list("x-request-id")
    assert FRESH_ID.fullmatch(echoed)
    assert response.json() == {
        "token": "fresh",
        "id": echoed,
        "user": None,
        "pool": {"id": echoed, "user": None},
    }
    assert {(line.request_id, line.user) for line in logs.taken()} == {(echoed, "-")}


def test_djangos_own_error_line_carries_the_request(
    project: django_project.Project, server: Running
):
    user = project.users[3]
    headers = {"X-Request-ID": "req-fail", "Cookie": f"{project.cookie}={user.session}"}
    response = get(server, "/fail", headers)
    assert response.status_code == 500
    assert response.headers.get_list("x-request-id") == ["req-fail"]
    (line,) = [line for line in logs.taken() if line.logger == "django.request"]
    assert (line.request_id, line.user) == ("req-fail", str(user.pk))
    assert line.message.startswith("Internal Server Error: /fail")
