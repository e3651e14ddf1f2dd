"""Context across services, and the middleware's baggage option.

First two real services on loopback: A (ASGI, uvicorn) receives requests
with an ID and a user, and calls B (WSGI under waitress, or ASGI under
uvicorn) with httpx from inside each request. B's log lines must carry A's
request ID and user, B must never set a key its allow-list refuses, and by
default nothing but the request ID leaves A. Then the middleware's
``baggage=`` option in-process, WSGI and ASGI, for what real clients can't
send.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contextual import ContextExecutor, ContextStore, get_current_user, get_request_id
from contextual.integrations import asgi, wsgi
from support.http_servers import TIMEOUT, forget_reports, running_asgi, running_wsgi
from support.http_service_apps import (
    A_LOGGER,
    B_LINES,
    B_LOGGER,
    ROLE,
    TENANT,
    AsgiServiceB,
    ServiceB,
    service_a,
)
from support.middleware import FRESH_ID, WARNINGS_LOGGER, ContextRecorder, recording

CONCURRENCY = 10


@pytest.fixture(autouse=True)
def _fresh_reports() -> Iterator[None]:
    forget_reports()
    yield
    forget_reports()


@pytest.fixture(scope="module")
def executor() -> Iterator[ContextExecutor]:
    with ContextExecutor(max_workers=4, thread_name_prefix="tests-http-pool") as pool:
        yield pool


@pytest.fixture(scope="module")
def a_url() -> Iterator[str]:
    with running_asgi(service_a()) as url:
        yield url


@pytest.fixture(scope="module")
def wsgi_b(executor: ContextExecutor) -> Iterator[str]:
    with running_wsgi(ServiceB(executor), threads=4) as url:
        yield url


@pytest.fixture(scope="module")
def asgi_b(executor: ContextExecutor) -> Iterator[str]:
    with running_asgi(AsgiServiceB(executor)) as url:
        yield url


@pytest.fixture(params=["wsgi", "asgi"])
def b_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_b")
    return url


def call_a(
    a_url: str, b_url: str, route: str, count: int
) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Send ``count`` requests to A, CONCURRENCY at a time; return what was sent and answered."""
    run = uuid.uuid4().hex[:8]
    sent = [
        {
            "X-Request-ID": f"req-{run}-{n}",
            "X-User": f"user-{n % 7}",
            "X-Tenant": f"tenant {n % 3} café",
            "X-Token": f"{run}-{n}",
            "X-Target": b_url,
        }
        for n in range(count)
    ]

    async def main() -> list[httpx.Response]:
        gate = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=a_url, timeout=TIMEOUT) as client:

            async def one(headers: dict[str, str]) -> httpx.Response:
                async with gate:
                    # X-Tenant goes as UTF-8: httpx encodes str headers so.
                    return await client.get(route, headers=_encoded(headers))

            return await asyncio.gather(*(one(headers) for headers in sent))

    responses = asyncio.run(main())
    for response in responses:
        assert response.status_code == 200, response.text
    return sent, [response.json() for response in responses]


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(key.encode(), value.encode()) for key, value in headers.items()]


def _tenant(headers: dict[str, str]) -> str:
    # A reads the header as latin-1, as servers hand it over.
    return headers["X-Tenant"].encode().decode("latin-1")


def check_b_lines(recorder: ContextRecorder, expected: dict[str, tuple[str, str | None]]) -> None:
    """Every line B logged carries the request ID and user of the A request it serves."""
    lines = recorder.of(B_LOGGER)
    tokens = Counter(line.message.rsplit(" ", 1)[1] for line in lines)
    assert tokens == dict.fromkeys(expected, len(B_LINES))
    mixups = [
        line
        for line in lines
        if (line.request_id, line.user) != expected[line.message.rsplit(" ", 1)[1]]
    ]
    assert mixups == []


# -- two services ------------------------------------------------------------------


def test_b_logs_with_a_s_request_id_and_user(a_url, b_url):
    with recording(A_LOGGER, B_LOGGER, WARNINGS_LOGGER) as recorder:
        sent, answers = call_a(a_url, b_url, "/call-all", 60)
    expected = {}
    for headers, answer in zip(sent, answers, strict=True):
        request_id, user = headers["X-Request-ID"], headers["X-User"]
        assert answer["a"] == {"id": request_id, "user": user}
        b = answer["b"]
        assert b["token"] == headers["X-Token"]
        assert (b["id"], b["user"], b["tenant"]) == (request_id, user, _tenant(headers))
        assert b["pool"] == {"id": request_id, "user": user, "tenant": _tenant(headers)}
        expected[headers["X-Token"]] = (request_id, user)
    check_b_lines(recorder, expected)
    assert len(recorder.of(A_LOGGER)) == 2 * len(sent)
    assert recorder.of(WARNINGS_LOGGER) == []


def test_b_never_sets_a_key_its_allow_list_refuses(a_url, b_url):
    sent, answers = call_a(a_url, b_url, "/call-all", 5)
    for headers, answer in zip(sent, answers, strict=True):
        b = answer["b"]
        assert "tests.http_services.role|role=admin" in b["received"]["baggage"], "A sent it"
        assert b["role"] is None, "B refused it"
        assert b["received"]["x-request-id"] == headers["X-Request-ID"]


def test_by_default_nothing_but_the_request_id_leaves_a(a_url, b_url):
    with recording(B_LOGGER) as recorder:
        sent, answers = call_a(a_url, b_url, "/call-default", 20)
    expected = {}
    for headers, answer in zip(sent, answers, strict=True):
        b = answer["b"]
        assert b["received"] == {"x-request-id": headers["X-Request-ID"], "baggage": None}
        assert (b["id"], b["user"], b["tenant"], b["role"]) == (
            headers["X-Request-ID"],
            None,
            None,
            None,
        )
        expected[headers["X-Token"]] = (headers["X-Request-ID"], None)
    check_b_lines(recorder, expected)


def test_b_s_threads_hold_nothing_after_its_requests(a_url, wsgi_b):
    call_a(a_url, wsgi_b, "/call-all", 40)
    with httpx.Client(base_url=wsgi_b, timeout=TIMEOUT) as client:
        probes = [client.get("/probe").json() for _ in range(8)]
    assert probes == [{"id": None, "tenant": None, "role": None}] * 8


@pytest.mark.parametrize(
    ("baggage", "kinds"),
    [
        (
            "tests.http_services.tenant|tenant=ok,,bad member;,;x=y,"
            "tests.http_services.tenant|long=" + "x" * 5000,
            2,  # malformed members, a member too long
        ),
        (",".join(["tests.http_services.tenant|tenant=ok"] + ["k=v"] * 300), 1),
        ("tests.http_services.tenant|tenant=ok," + "\\" * 12_000, 1),
        (
            (
                "contextual.request|user_id=mallory%0Ar-999%20admin%20logged%20in,"
                "tests.http_services.tenant|tenant=ok"
            ),
            1,
        ),
        (
            # U+202E, right-to-left override: the log line would read "adminadmin".
            "contextual.request|user_id=admin%E2%80%AEnimda,tests.http_services.tenant|tenant=ok",
            1,
        ),
    ],
    ids=["malformed", "too many", "too big", "control characters", "bidi override"],
)
def test_hostile_baggage_never_fails_b(wsgi_b, asgi_b, baggage, kinds):
    with recording(WARNINGS_LOGGER) as recorder:
        for url in (wsgi_b, asgi_b):
            response = httpx.get(
                f"{url}/work",
                headers={"X-Request-ID": "r-hostile", "baggage": baggage},
                timeout=TIMEOUT,
            )
            assert response.status_code == 200
            assert (response.json()["id"], response.json()["tenant"]) == ("r-hostile", "ok")
    # Once per kind of problem in the process, which serves both B's.
    assert len(recorder.lines) == kinds
    assert all(line.user is None for line in recorder.lines)
    for line in recorder.lines:
        assert line.request_id == "r-hostile", "logged inside the request"
        assert len(line.message.splitlines()) == 1


# -- the middleware's baggage option, in process -----------------------------------

USER = {"contextual.request": ["user_id"]}
THREAD = ContextStore("tests.http_services.thread", backend="thread", defaults={"x": None})


def environ(**headers: str) -> dict[str, Any]:
    return {"PATH_INFO": "/", **{f"HTTP_{name.upper()}": value for name, value in headers.items()}}


def seen_here() -> tuple[Any, ...]:
    return (get_request_id(), get_current_user(), TENANT.get("tenant"), ROLE.get("role"))


def wsgi_serve(middleware: Any, env: dict[str, Any]) -> list[Any]:
    """Serve one request through ``middleware(app)`` as a WSGI server does; return what it saw.

    What the app saw when called, in its body, and after the close.
    """
    seen: list[Any] = []

    def inner(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(seen_here())
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            seen.append(seen_here())
            yield b"ok"

        return body()

    body = middleware(inner)(env, lambda *_: None)
    assert list(body) == [b"ok"]
    body.close()
    seen.append(seen_here())
    return seen


def test_wsgi_restores_allowed_baggage_for_the_request_and_its_body():
    def app(inner: Any) -> Any:
        return wsgi.RequestContextMiddleware(
            inner, baggage=USER | {"tests.http_services.tenant": True}
        )

    baggage = "contextual.request|user_id=ada,tests.http_services.tenant|tenant=acme%20inc"
    with TENANT.scope(tenant="server's own"):
        seen = wsgi_serve(app, environ(x_request_id="r-1", baggage=baggage))
    assert seen == [
        ("r-1", "ada", "acme inc", None),
        ("r-1", "ada", "acme inc", None),
        (None, None, "server's own", None),
    ]


def test_wsgi_ignores_baggage_by_default():
    seen = wsgi_serve(
        wsgi.RequestContextMiddleware,
        environ(x_request_id="r-2", baggage="contextual.request|user_id=ada"),
    )
    assert seen[0] == ("r-2", None, None, None)


def test_wsgi_never_takes_the_request_id_from_baggage():
    def app(inner: Any) -> Any:
        return wsgi.RequestContextMiddleware(inner, baggage={"contextual.request": True})

    seen = wsgi_serve(app, environ(baggage="contextual.request|request_id=forged"))
    assert FRESH_ID.fullmatch(seen[0][0])


def test_wsgi_restores_thread_backend_stores_too():
    seen: list[Any] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(THREAD.x)
        start_response("200 OK", [])
        return [b""]

    app = wsgi.RequestContextMiddleware(inner, baggage=["tests.http_services.thread"])
    body = app(environ(baggage="tests.http_services.thread|x=1"), lambda *_: None)
    body.close()  # type: ignore[attr-defined]
    assert (seen, THREAD.x) == (["1"], None)


@pytest.mark.parametrize(
    ("get_user", "user"),
    [(lambda _: "from-auth", "from-auth"), (lambda _: None, "ada"), (None, "ada")],
    ids=["get_user wins", "get_user gives None", "no get_user"],
)
def test_the_carried_user_serves_when_get_user_gives_none(get_user, user):
    def app(inner: Any) -> Any:
        return wsgi.RequestContextMiddleware(inner, get_user=get_user, baggage=USER)

    seen = wsgi_serve(app, environ(baggage="contextual.request|user_id=ada"))
    assert seen[0][1] == user


def test_a_failing_get_user_means_no_user_even_with_baggage():
    def failing(_: Any) -> str:
        raise RuntimeError

    def app(inner: Any) -> Any:
        return wsgi.RequestContextMiddleware(inner, get_user=failing, baggage=USER)

    with recording("contextual.integrations.wsgi"):
        seen = wsgi_serve(app, environ(baggage="contextual.request|user_id=ada"))
    assert seen[0][1] is None


def test_baggage_problems_are_logged_inside_the_request():
    def app(inner: Any) -> Any:
        return wsgi.RequestContextMiddleware(inner, baggage=USER)

    with recording(WARNINGS_LOGGER) as recorder:
        seen = wsgi_serve(
            app, environ(x_request_id="r-3", baggage="bad,contextual.request|user_id=ada")
        )
        wsgi_serve(app, environ(x_request_id="r-4", baggage="bad"))
    assert seen[0][:2] == ("r-3", "ada")
    (line,) = recorder.lines
    assert (line.request_id, line.user) == ("r-3", "ada")
    assert "'bad'" in line.message


def test_a_raising_log_filter_leaves_no_request_open():
    class Refusing(logging.Filter):
        def filter(self, _record: logging.LogRecord) -> bool:
            raise RuntimeError("refused")

    app = wsgi.RequestContextMiddleware(lambda *_: [b""], baggage=USER)
    refusing = Refusing()
    logger = logging.getLogger(WARNINGS_LOGGER)
    logger.addFilter(refusing)
    try:
        with pytest.raises(RuntimeError, match="refused"):
            app(environ(baggage="bad"), lambda *_: None)
    finally:
        logger.removeFilter(refusing)
    assert get_request_id() is None


def test_a_key_named_self_is_restored_and_never_fails_the_request():
    seen: list[Any] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(TENANT.get("self"))
        start_response("200 OK", [])
        return [b""]

    app = wsgi.RequestContextMiddleware(inner, baggage=["tests.http_services.tenant"])
    app(environ(baggage="tests.http_services.tenant|self=x"), lambda *_: None).close()  # type: ignore[attr-defined]
    assert (seen, TENANT.get("self")) == (["x"], None)


def test_a_bad_allow_list_is_refused_at_construction():
    with pytest.raises(TypeError, match="allow takes store names"):
        wsgi.RequestContextMiddleware(lambda *_: [], baggage="contextual.request")
    with pytest.raises(TypeError, match="allow takes store names"):
        asgi.RequestContextMiddleware(lambda *_: None, baggage="contextual.request")  # type: ignore[arg-type,return-value]


def asgi_call(middleware: Any, scope: dict[str, Any]) -> list[Any]:
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(seen_here())
        await asyncio.sleep(0)
        seen.append(seen_here())

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            pass

        with TENANT.scope(tenant="server's own"):
            await middleware(inner)(scope, receive, send)
            seen.append(seen_here())

    asyncio.run(main())
    return seen


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_asgi_restores_allowed_baggage_for_the_request(kind):
    def app(inner: Any) -> Any:
        return asgi.RequestContextMiddleware(
            inner, baggage=USER | {"tests.http_services.tenant": ["tenant"]}
        )

    scope = {
        "type": kind,
        "headers": [
            (b"x-request-id", b"r-5"),
            (b"Baggage", b"contextual.request|user_id=ada"),
            (b"accept", b"*/*"),
            (
                b"baggage",
                b"tests.http_services.tenant|tenant=acme,tests.http_services.role|role=admin",
            ),
        ],
    }
    assert asgi_call(app, scope) == [
        ("r-5", "ada", "acme", None),
        ("r-5", "ada", "acme", None),
        (None, None, "server's own", None),
    ]


def test_asgi_ignores_baggage_by_default():
    scope = {"type": "http", "headers": [(b"baggage", b"contextual.request|user_id=ada")]}
    seen = asgi_call(asgi.RequestContextMiddleware, scope)
    assert seen[0][1:] == (None, "server's own", None)


def test_asgi_with_baggage_still_reads_the_request_id():
    def app(inner: Any) -> Any:
        return asgi.RequestContextMiddleware(inner, header="Correlation-ID", baggage=USER)

    scope = {"type": "http", "headers": [(b"correlation-id", b"r-6")]}
    assert asgi_call(app, scope)[0] == ("r-6", None, "server's own", None)
