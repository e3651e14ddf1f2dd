"""The Django middleware in-process: its settings, the user, the request's span, streaming.

Requests go through Django's own handlers, with the test project's
settings (tests/support/django_project): ``django.test.Client`` runs the
sync handler, ``AsyncClient`` the async one, each building the middleware
stack from ``settings.MIDDLEWARE`` under whatever ``override_settings``
says. Where a test needs to see the request around the view, it calls the
middleware with a request from Django's ``RequestFactory`` and its own
``get_response``, as the middleware before it would.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application
from django.db import connections
from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory, override_settings

from contextual import (
    ContextStore,
    current_request,
    get_current_user,
    get_request_id,
    update_request,
)
from contextual.integrations import django as integration
from contextual.integrations.django import RequestContextMiddleware
from support import django_project
from support.django_project import logs
from support.middleware import WARNINGS_LOGGER, recording

SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
CONTEXTUAL = "contextual.integrations.django.RequestContextMiddleware"
OPTIONS = "support.django_project.options"
DJANGO_LOGGER = "contextual.integrations.django"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> django_project.Project:
    return django_project.setup(tmp_path_factory.mktemp("django"))


@pytest.fixture(autouse=True)
def _clean(project: django_project.Project) -> Iterator[None]:
    logs.taken()
    yield
    logs.taken()
    # The test clients keep the connections of this thread and of the
    # thread where Django runs sync code for async requests.
    connections.close_all()
    asyncio.run(sync_to_async(connections.close_all)())


def logged_in(project: django_project.Project, n: int, client: Any = None) -> Any:
    client = Client() if client is None else client
    client.cookies[project.cookie] = project.users[n].session
    return client


def views_lines() -> list[tuple[str, str, str]]:
    return [
        (line.request_id, line.user, line.message)
        for line in logs.taken()
        if line.logger == "support.django_project.views"
    ]


def ok(request: Any) -> HttpResponse:
    return HttpResponse("ok")


# -- the settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            ["HEADER", "X-Request-ID"],
            (
                r"settings.CONTEXTUAL must be a dict of the request-context middleware's options, "
                r"such as \{'HEADER': 'X-Request-ID'\}; got list \['HEADER', 'X-Request-ID'\]\."
            ),
        ),
        (
            {"HEDAER": "X-Request-ID", "echo": False, 3: None},
            (
                r"settings.CONTEXTUAL has keys the request-context middleware doesn't know: "
                r"'3', 'HEDAER' \(did you mean 'HEADER'\?\), 'echo' \(did you mean 'ECHO'\?\)\. "
                r"Its keys are BAGGAGE, ECHO, GENERATOR, GET_USER, HEADER, VALIDATOR\."
            ),
        ),
        (
            {"HEADER": "HTTP_X_REQUEST_ID"},
            (
                r"settings.CONTEXTUAL\['HEADER'\]: header='HTTP_X_REQUEST_ID' is the WSGI "
                r"environ \(Django request.META\) spelling; pass the header's own name: "
                r"header='X-Request-ID'"
            ),
        ),
        (
            {"HEADER": "X Request ID"},
            r"settings.CONTEXTUAL\['HEADER'\]: header must be an HTTP field name",
        ),
        (
            {"ECHO": "yes"},
            r"settings.CONTEXTUAL\['ECHO'\]: must be True or False, got str 'yes'\.",
        ),
        (
            {"GET_USER": f"{OPTIONS}.nope"},
            (
                rf"settings.CONTEXTUAL\['GET_USER'\]: can't import '{OPTIONS}.nope' \(.*\)\. "
                r"Give a function, or the dotted path of one, such as 'myproject.logs.get_user'\."
            ),
        ),
        (
            {"GET_USER": "username"},
            r"settings.CONTEXTUAL\['GET_USER'\]: can't import 'username' \(.*\)\.",
        ),
        (
            {"GET_USER": 42},
            r"settings.CONTEXTUAL\['GET_USER'\]: get_user must be callable or None, got int 42\.",
        ),
        (
            {"GET_USER": f"{OPTIONS}.awaited"},
            (
                r"settings.CONTEXTUAL\['GET_USER'\]: must be a plain function, got the coroutine "
                r"function <function awaited at .*>: nothing can await it where it runs \(in a "
                r"log call, on the sync path\)\."
            ),
        ),
        (
            {"VALIDATOR": True},
            r"settings.CONTEXTUAL\['VALIDATOR'\]: validator must be callable or None",
        ),
        (
            {"GENERATOR": None},
            r"settings.CONTEXTUAL\['GENERATOR'\]: must be a function, got None\.",
        ),
        (
            {"BAGGAGE": 42},
            r"settings.CONTEXTUAL\['BAGGAGE'\]: ",
        ),
    ],
    ids=[
        "not a dict",
        "unknown keys",
        "META spelling",
        "not a header",
        "echo",
        "no such function",
        "not a dotted path",
        "not callable",
        "coroutine function",
        "validator",
        "generator",
        "baggage",
    ],
)
def test_a_wrong_setting_is_refused_naming_it(setting: Any, message: str):
    with override_settings(CONTEXTUAL=setting), pytest.raises(ImproperlyConfigured, match=message):
        RequestContextMiddleware(ok)


def test_a_wrong_setting_stops_the_application_at_startup():
    with (
        override_settings(CONTEXTUAL={"ECHO": 1}),
        pytest.raises(ImproperlyConfigured, match=r"CONTEXTUAL\['ECHO'\]"),
    ):
        get_wsgi_application()


def test_without_the_setting_every_option_has_its_default(project: django_project.Project):
    with override_settings():
        del settings.CONTEXTUAL
        response = logged_in(project, 1).get("/work", headers={"X-Request-ID": "r-defaults"})
    assert response.headers["X-Request-ID"] == "r-defaults"
    assert response.json()["user"] == project.users[1].pk


def test_options_are_taken_from_their_dotted_paths(project: django_project.Project):
    options = {
        "HEADER": "X-Correlation-ID",
        "GET_USER": f"{OPTIONS}.username",
        "VALIDATOR": f"{OPTIONS}.starts_with_ok",
        "GENERATOR": f"{OPTIONS}.numbered",
    }
    with override_settings(CONTEXTUAL=options):
        client = logged_in(project, 2)
        kept = client.get("/work", headers={"X-Correlation-ID": "ok-1", "X-Token": "kept"})
        with recording(WARNINGS_LOGGER) as recorder:
            made = client.get("/work", headers={"X-Correlation-ID": "r-2", "X-Token": "made"})
    assert kept.headers["X-Correlation-ID"] == "ok-1"
    assert "X-Request-ID" not in kept.headers
    assert kept.json()["user"] == "user-02"
    assert made.headers["X-Correlation-ID"].startswith("gen-")
    assert made.json()["id"] == made.headers["X-Correlation-ID"]
    (warning,) = recorder.lines
    assert warning.message.startswith("Refused the X-Correlation-ID header")


def test_options_may_be_the_functions_themselves(project: django_project.Project):
    with override_settings(CONTEXTUAL={"GET_USER": lambda user: f"<{user.get_username()}>"}):
        response = logged_in(project, 3).get("/work")
    assert response.json()["user"] == "<user-03>"


@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_echo_off_sends_no_header(client: Any):
    with override_settings(CONTEXTUAL={"ECHO": False}):
        response = client().get("/work", headers={"X-Request-ID": "r-quiet"})
        if asyncio.iscoroutine(response):
            response = asyncio.run(response)
    assert response.json()["id"] == "r-quiet"
    assert "X-Request-ID" not in response.headers


def test_the_echo_replaces_a_header_the_view_set():
    def view(request: Any) -> HttpResponse:
        response = HttpResponse("ok")
        response["x-request-id"] = "from the view"
        return response

    request = RequestFactory().get("/", headers={"X-Request-ID": "r-1"})
    with override_settings(CONTEXTUAL={"GET_USER": None}):
        response = RequestContextMiddleware(view)(request)
    assert list(response.items()) == [
        ("Content-Type", "text/html; charset=utf-8"),
        ("X-Request-ID", "r-1"),
    ]


def test_baggage_allowed_by_the_setting_is_set_for_the_request(unique_name: str):
    tenant = ContextStore(unique_name)
    seen = []

    def view(request: Any) -> HttpResponse:
        seen.append((tenant.get("name"), get_current_user()))
        return HttpResponse("ok")

    baggage = f"{unique_name}|name=acme,contextual.request|user_id=carol"
    request = RequestFactory().get("/", HTTP_BAGGAGE=baggage)
    allow = {unique_name: True, "contextual.request": ["user_id"]}
    with override_settings(CONTEXTUAL={"BAGGAGE": allow, "GET_USER": None}):
        RequestContextMiddleware(view)(request)
        RequestContextMiddleware(view)(RequestFactory().get("/"))
    assert seen == [("acme", "carol"), (None, None)]
    assert tenant.get("name") is None


# -- the user ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/work", "/awork"])
def test_the_user_is_the_logged_in_users_primary_key(project: django_project.Project, path: str):
    response = logged_in(project, 4).get(path, headers={"X-Request-ID": "r-4", "X-Token": "t"})
    user = project.users[4].pk
    assert response.json() == {
        "token": "t",
        "id": "r-4",
        "user": user,
        "pool": {"id": "r-4", "user": user},
    }
    assert views_lines() == [
        ("r-4", str(user), f"{what} t") for what in ("start", "in pool", "end")
    ]


@pytest.mark.parametrize("path", ["/work", "/awork"])
def test_an_anonymous_request_has_no_user(path: str):
    response = Client().get(path, headers={"X-Request-ID": "r-anon"})
    assert response.json()["user"] is None
    assert {user for _, user, _ in views_lines()} == {"-"}


@pytest.mark.parametrize("path", ["/work", "/awork"])
def test_the_async_handler_reads_the_user_too(project: django_project.Project, path: str):
    client = logged_in(project, 5, AsyncClient())
    response = asyncio.run(client.get(path, headers={"X-Request-ID": "r-5", "X-Token": "t"}))
    user = project.users[5].pk
    assert response.json()["user"] == user
    assert response.headers["X-Request-ID"] == "r-5"
    assert views_lines() == [
        ("r-5", str(user), f"{what} t") for what in ("start", "in pool", "end")
    ]


def test_the_user_is_read_once_the_first_line_is_logged(project: django_project.Project):
    from django.contrib.auth.models import User  # noqa: PLC0415 (needs the configured project)

    seen: list[Any] = []

    def view(request: Any) -> HttpResponse:
        seen.append(current_request())
        logging.getLogger("support.django_project.views").info("first")
        seen.append(current_request())
        return HttpResponse("ok")

    request = RequestFactory().get("/")
    request.user = User.objects.get(pk=project.users[6].pk)
    reads = []
    with override_settings(CONTEXTUAL={"GET_USER": lambda user: reads.append(user) or user.pk}):
        RequestContextMiddleware(view)(request)
    assert reads == [request.user]
    assert [request.user_id for request in seen] == [project.users[6].pk] * 2
    assert views_lines() == [(seen[0].request_id, str(project.users[6].pk), "first")]


def test_a_user_lookup_that_raises_is_logged_and_the_request_goes_on(
    project: django_project.Project,
):
    with (
        override_settings(CONTEXTUAL={"GET_USER": f"{OPTIONS}.failing"}),
        recording(DJANGO_LOGGER) as recorder,
    ):
        response = logged_in(project, 7).get("/work", headers={"X-Request-ID": "r-7"})
    assert response.status_code == 200
    assert response.json()["user"] is None
    (line,) = recorder.lines
    assert line.message == "Reading request.user raised; the request goes on with no user."
    assert line.request_id == "r-7"
    assert isinstance(line.exc_info[1], LookupError)
    assert {user for _, user, _ in views_lines()} == {"-"}


def test_an_async_user_lookup_that_raises_is_logged_and_the_request_goes_on(
    project: django_project.Project,
):
    client = logged_in(project, 8, AsyncClient())
    with (
        override_settings(CONTEXTUAL={"GET_USER": f"{OPTIONS}.failing"}),
        recording(DJANGO_LOGGER) as recorder,
    ):
        response = asyncio.run(client.get("/awork", headers={"X-Request-ID": "r-8"}))
    assert response.json()["user"] is None
    (line,) = recorder.lines
    assert line.message == "Reading request.user raised; the request goes on with no user."
    assert line.request_id == "r-8"
    assert isinstance(line.exc_info[1], LookupError)


@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_without_authentication_middleware_the_request_says_where_to_put_it(client: Any):
    def get() -> Any:
        response = client().get("/quiet")
        return asyncio.run(response) if asyncio.iscoroutine(response) else response

    with (
        override_settings(MIDDLEWARE=[SESSION, CONTEXTUAL]),
        pytest.raises(ImproperlyConfigured) as raised,
    ):
        get()
    assert str(raised.value) == (
        "contextual.integrations.django.RequestContextMiddleware reads request.user, and no "
        "middleware before it has set it. Put it after "
        "'django.contrib.auth.middleware.AuthenticationMiddleware' in settings.MIDDLEWARE, "
        "or set settings.CONTEXTUAL['GET_USER'] to None to log no user."
    )


@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_get_user_none_needs_no_authentication_middleware(client: Any):
    with override_settings(MIDDLEWARE=[CONTEXTUAL], CONTEXTUAL={"GET_USER": None}):
        response = client().get("/awork", headers={"X-Request-ID": "r-none"})
        if asyncio.iscoroutine(response):
            response = asyncio.run(response)
    assert response.json()["id"] == "r-none"
    assert response.json()["user"] is None


def test_an_async_request_without_a_session_is_read_with_auser():
    seen = []

    async def auser() -> Any:
        return type("Someone", (), {"is_authenticated": True, "pk": "someone"})()

    async def view(request: Any) -> HttpResponse:
        seen.append(get_current_user())
        return HttpResponse("ok")

    request = AsyncRequestFactory().get("/")
    request.auser = auser  # no session: set by something other than Django's sessions
    asyncio.run(RequestContextMiddleware(view)(request))
    assert seen == ["someone"]


def test_a_lookup_in_a_pool_thread_leaves_that_threads_own_connection_open(
    project: django_project.Project,
):
    response = logged_in(project, 11).get("/pool-queries-first", headers={"X-Token": "t"})
    user = project.users[11].pk
    assert response.json()["pool"] == {"id": response.json()["id"], "user": user, "kept open": True}
    assert views_lines() == [(response.json()["id"], str(user), "in pool t")]


def test_update_request_from_a_view_holds_for_the_rest_of_the_request(
    project: django_project.Project,
):
    response = logged_in(project, 9).get("/update", headers={"X-Request-ID": "r-9", "X-Token": "t"})
    assert response.json()["user"] == "changed-t"
    assert views_lines() == [
        ("r-9", str(project.users[9].pk), "before t"),
        ("r-9", "changed-t", "after t"),
        ("r-9", "changed-t", "in pool t"),
    ]
    assert get_current_user() is None


# -- what sees the request -----------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_the_request_closes_when_the_middleware_returns(is_async: bool):
    seen = []

    def view(request: Any) -> HttpResponse:
        seen.append(get_request_id())
        return HttpResponse("ok")

    request = RequestFactory().get("/", headers={"X-Request-ID": "r-1"})
    with override_settings(CONTEXTUAL={"GET_USER": None}):
        if is_async:
            middleware = RequestContextMiddleware(sync_to_async(view))
            assert iscoroutinefunction(middleware)
            response = asyncio.run(middleware(request))
        else:
            middleware = RequestContextMiddleware(view)
            assert not iscoroutinefunction(middleware)
            response = middleware(request)
    assert seen == ["r-1"]
    assert response.headers["X-Request-ID"] == "r-1"
    assert get_request_id() is None
    assert current_request() is None


def test_thread_stores_are_back_as_they_were_when_the_request_began(unique_name: str):
    store = ContextStore(unique_name, backend="thread")
    store["kept"] = "before"

    def view(request: Any) -> HttpResponse:
        store["kept"] = "during"
        store["left"] = "behind"
        return HttpResponse("ok")

    with override_settings(CONTEXTUAL={"GET_USER": None}):
        RequestContextMiddleware(view)(RequestFactory().get("/"))
    assert dict(store) == {"kept": "before"}


def test_a_view_that_raises_closes_the_request():
    def view(request: Any) -> HttpResponse:
        raise KeyError(get_request_id())

    with override_settings(CONTEXTUAL={"GET_USER": None}), pytest.raises(KeyError, match="r-1"):
        RequestContextMiddleware(view)(RequestFactory().get("/", headers={"X-Request-ID": "r-1"}))
    assert get_request_id() is None


def test_the_request_of_django_errors_is_on_its_log_line(project: django_project.Project):
    client = logged_in(project, 10, Client(raise_request_exception=False))
    response = client.get("/fail", headers={"X-Request-ID": "r-fail"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "r-fail"
    (line,) = [line for line in logs.taken() if line.logger == "django.request"]
    assert (line.request_id, line.user) == ("r-fail", str(project.users[10].pk))


# -- streaming -------------------------------------------------------------------------


def test_a_streamed_body_runs_in_the_request_as_the_view_left_it():
    steps = []

    def body() -> Iterator[bytes]:
        for _ in range(2):
            steps.append((get_request_id(), get_current_user(), threading.get_ident()))
            yield b"part"

    def view(request: Any) -> StreamingHttpResponse:
        update_request(user_id="set by the view")
        return StreamingHttpResponse(body())

    with override_settings(CONTEXTUAL={"GET_USER": None}):
        response = RequestContextMiddleware(view)(
            RequestFactory().get("/", headers={"X-Request-ID": "r-s"})
        )
    assert get_request_id() is None
    assert b"".join(response) == b"partpart"
    here = threading.get_ident()
    assert steps == [("r-s", "set by the view", here)] * 2
    assert get_request_id() is None


def test_an_async_streamed_body_runs_in_the_request_as_the_view_left_it():
    steps = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(2):
            await asyncio.sleep(0)
            steps.append((get_request_id(), get_current_user()))
            yield b"part"

    async def view(request: Any) -> StreamingHttpResponse:
        update_request(user_id="set by the view")
        return StreamingHttpResponse(body())

    async def serve() -> bytes:
        response = await RequestContextMiddleware(view)(
            AsyncRequestFactory().get("/", headers={"X-Request-ID": "r-a"})
        )
        assert get_request_id() is None
        parts = [part async for part in response]
        assert get_request_id() is None
        return b"".join(parts)

    with override_settings(CONTEXTUAL={"GET_USER": None}):
        assert asyncio.run(serve()) == b"partpart"
    assert steps == [("r-a", "set by the view")] * 2


def test_a_cancelled_async_body_step_is_cancelled_in_the_request():
    started = asyncio.Event
    seen = []

    async def serve() -> None:
        waiting = started()

        async def body() -> AsyncIterator[bytes]:
            try:
                waiting.set()
                await asyncio.Event().wait()  # until cancelled
                yield b"never"
            except asyncio.CancelledError:
                seen.append(get_request_id())
                raise

        async def view(request: Any) -> StreamingHttpResponse:
            return StreamingHttpResponse(body())

        response = await RequestContextMiddleware(view)(
            AsyncRequestFactory().get("/", headers={"X-Request-ID": "r-c"})
        )
        task = asyncio.create_task(anext(aiter(response)))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with override_settings(CONTEXTUAL={"GET_USER": None}):
        asyncio.run(serve())
    assert seen == ["r-c"]


def test_a_file_response_is_sent_as_it_is():
    def view(request: Any) -> FileResponse:
        return FileResponse(Path(__file__).open("rb"))

    with override_settings(CONTEXTUAL={"GET_USER": None}):
        response = RequestContextMiddleware(view)(RequestFactory().get("/"))
    try:
        # Still a file, which a WSGI server's file_wrapper can send.
        assert response.file_to_stream is not None
        assert b"".join(response.streaming_content) == Path(__file__).read_bytes()
    finally:
        response.close()


# -- the module --------------------------------------------------------------------


def test_import_without_django_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "contextual.integrations.django")
    monkeypatch.setitem(sys.modules, "django.conf", None)
    with pytest.raises(ImportError, match=r"needs Django.*pip install 'contextual\[django\]'"):
        importlib.import_module("contextual.integrations.django")


def test_importing_contextual_does_not_import_django():
    code = "import sys, contextual, contextual.integrations; print('django' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_the_middleware_serves_both_kinds_of_stack():
    assert RequestContextMiddleware.sync_capable is True
    assert RequestContextMiddleware.async_capable is True
    assert integration.__all__ == ["RequestContextMiddleware"]
