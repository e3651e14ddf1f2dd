"""install_httpx() and install_requests() with real clients against a real local server.

The server (uvicorn, on loopback) echoes the headers each request arrived
with, so the tests see exactly what went over the wire.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.util.retry import Retry

from contextual import ContextStore, request_context
from contextual.integrations.http import install_httpx, install_requests
from support.http_servers import TIMEOUT, forget_reports, running_asgi, serve_lifespan
from support.middleware import WARNINGS_LOGGER, recording

USER = {"contextual.request": ["user_id"]}
TENANT = ContextStore("tests.http_clients.tenant", defaults={"tenant": None})


@pytest.fixture(autouse=True)
def _fresh_reports() -> Iterator[None]:
    forget_reports()
    yield
    forget_reports()


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer /echo with the request's headers as JSON; /redirect sends there."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if scope["path"] == "/redirect":
        await send(
            {"type": "http.response.start", "status": 307, "headers": [(b"location", b"/echo")]}
        )
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [[key.decode("latin-1"), value.decode("latin-1")] for key, value in scope["headers"]]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(headers).encode()})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_asgi(echo) as base:
        yield base


def carried(response: httpx.Response | requests.Response) -> dict[str, list[str]]:
    """The request-ID and Baggage headers the server received, by lowercase name."""
    seen: dict[str, list[str]] = {"x-request-id": [], "baggage": []}
    for key, value in response.json():
        if key.lower() in seen:
            seen[key.lower()].append(value)
    return seen


# -- httpx -------------------------------------------------------------------------


def test_httpx_sends_the_request_id_and_the_allowed_user(url):
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        install_httpx(client, allow=USER)
        with request_context(request_id="r-1", user_id="ada"), TENANT.scope(tenant="acme"):
            response = client.get("/echo")
    assert carried(response) == {
        "x-request-id": ["r-1"],
        "baggage": ["contextual.request|user_id=ada"],
    }


def test_httpx_sends_nothing_but_the_request_id_by_default(url):
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        install_httpx(client)
        with request_context(request_id="r-2", user_id="ada"), TENANT.scope(tenant="acme"):
            response = client.get("/echo")
    assert carried(response) == {"x-request-id": ["r-2"], "baggage": []}


def test_httpx_outside_a_request_sends_nothing(url):
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        install_httpx(client, allow=USER)
        response = client.get("/echo")
    assert carried(response) == {"x-request-id": [], "baggage": []}


def test_httpx_merges_into_a_baggage_header_of_the_call(url):
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        install_httpx(client, allow=["tests.http_clients.tenant"])
        with TENANT.scope(tenant="acme"):
            response = client.get("/echo", headers={"Baggage": "userId=42"})
    assert carried(response)["baggage"] == ["userId=42,tests.http_clients.tenant|tenant=acme"]


def test_httpx_carries_the_context_through_redirects(url):
    with httpx.Client(base_url=url, timeout=TIMEOUT, follow_redirects=True) as client:
        install_httpx(client, allow=USER)
        with request_context(request_id="r-3", user_id="ada"):
            response = client.get("/redirect")
    assert response.history[0].status_code == 307
    assert carried(response) == {
        "x-request-id": ["r-3"],
        "baggage": ["contextual.request|user_id=ada"],
    }


def test_async_httpx_requests_each_carry_their_own_task_s_request(url):
    count = 20

    async def main() -> list[httpx.Response]:
        opened = 0
        all_open = asyncio.Event()

        async def one(n: int, client: httpx.AsyncClient) -> httpx.Response:
            nonlocal opened
            with request_context(request_id=f"r-{n}", user_id=f"user-{n}"):
                opened += 1
                if opened == count:
                    all_open.set()
                await all_open.wait()  # every request is open before any is sent
                return await client.get("/echo")

        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            install_httpx(client, allow=USER)
            return await asyncio.gather(*(one(n, client) for n in range(count)))

    responses = asyncio.run(main())
    assert [carried(response) for response in responses] == [
        {"x-request-id": [f"r-{n}"], "baggage": [f"contextual.request|user_id=user-{n}"]}
        for n in range(count)
    ]


def test_async_httpx_follows_redirects_with_the_context(url):
    async def main() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            install_httpx(client)
            with request_context(request_id="r-4"):
                return await client.get("/redirect", follow_redirects=True)

    assert carried(asyncio.run(main()))["x-request-id"] == ["r-4"]


def test_installing_on_httpx_keeps_other_hooks_and_replaces_its_own(url):
    seen: list[str] = []
    with httpx.Client(
        base_url=url,
        timeout=TIMEOUT,
        event_hooks={"request": [lambda request: seen.append(request.url.path)]},
    ) as client:
        install_httpx(client)
        install_httpx(client, allow=USER, header="Correlation-ID")
        assert len(client.event_hooks["request"]) == 2
        with request_context(request_id="r-5", user_id="ada"):
            response = client.get("/echo")
    assert seen == ["/echo"]
    assert dict(response.json())["correlation-id"] == "r-5"
    assert carried(response) == {
        "x-request-id": [],
        "baggage": ["contextual.request|user_id=ada"],
    }
    assert "AllowList" in repr(client.event_hooks["request"][1])


def test_install_httpx_refuses_what_is_not_an_httpx_client():
    with pytest.raises(TypeError, match=r"install_httpx takes an httpx\.Client"):
        install_httpx(requests.Session())  # type: ignore[arg-type]


# -- requests ----------------------------------------------------------------------


def test_requests_sends_the_request_id_and_the_allowed_user(url):
    with requests.Session() as session:
        install_requests(session, allow=USER)
        with request_context(request_id="r-6", user_id="ada"):
            response = session.get(f"{url}/echo", timeout=TIMEOUT)
    assert carried(response) == {
        "x-request-id": ["r-6"],
        "baggage": ["contextual.request|user_id=ada"],
    }


def test_requests_sends_nothing_but_the_request_id_by_default(url):
    with requests.Session() as session:
        install_requests(session)
        with request_context(request_id="r-7", user_id="ada"), TENANT.scope(tenant="acme"):
            response = session.get(f"{url}/echo", timeout=TIMEOUT)
        outside = session.get(f"{url}/echo", timeout=TIMEOUT)
    assert carried(response) == {"x-request-id": ["r-7"], "baggage": []}
    assert carried(outside) == {"x-request-id": [], "baggage": []}


def test_requests_carries_the_context_through_redirects(url):
    with requests.Session() as session:
        install_requests(session, allow=USER)
        with request_context(request_id="r-8", user_id="ada"):
            response = session.get(f"{url}/redirect", timeout=TIMEOUT)
    assert response.history[0].status_code == 307
    assert carried(response) == {
        "x-request-id": ["r-8"],
        "baggage": ["contextual.request|user_id=ada"],
    }


def test_requests_from_threads_each_carry_their_own_request(url):
    count = 8
    all_open = threading.Barrier(count, timeout=TIMEOUT)

    def one(n: int, session: requests.Session) -> requests.Response:
        with request_context(request_id=f"r-{n}", user_id=f"user-{n}"):
            all_open.wait()  # every request is open before any is sent
            return session.get(f"{url}/echo", timeout=TIMEOUT)

    with requests.Session() as session, ThreadPoolExecutor(count) as pool:
        install_requests(session, allow=USER)
        responses = list(pool.map(one, range(count), [session] * count))
    assert [carried(response) for response in responses] == [
        {"x-request-id": [f"r-{n}"], "baggage": [f"contextual.request|user_id=user-{n}"]}
        for n in range(count)
    ]


class ClosingAdapter(HTTPAdapter):
    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def test_installing_on_requests_wraps_mounted_adapters_once(url):
    custom = ClosingAdapter(max_retries=2)
    with requests.Session() as session:
        session.mount("http://127.0.0.1", custom)
        mounted = dict(session.adapters)
        install_requests(session)
        install_requests(session, allow=USER)
        assert session.adapters == mounted, "the adapters themselves stay mounted"
        assert session.get_adapter(f"{url}/echo") is custom
        wrapped: Any = custom.send
        assert wrapped.send.__func__ is HTTPAdapter.send, "wrapped once, not twice"
        assert "for <" in repr(wrapped)
        with request_context(request_id="r-9", user_id="ada"):
            response = session.get(f"{url}/echo", timeout=TIMEOUT)
    assert carried(response)["baggage"] == ["contextual.request|user_id=ada"]
    assert custom.closed, "closing the session closes the adapters"


def test_the_adapters_keep_their_type_and_attributes():
    with requests.Session() as session:
        retry = Retry(total=3)
        session.mount("https://", HTTPAdapter(max_retries=retry))
        install_requests(session, allow=USER)
        adapter: Any = session.get_adapter("https://example.com")
        assert isinstance(adapter, BaseAdapter)
        assert isinstance(adapter, HTTPAdapter)
        assert adapter.max_retries is retry
        assert adapter.poolmanager is not None
        assert adapter.proxy_manager == {}
        adapter.init_poolmanager(2, 2)
        assert adapter.get_connection_with_tls_context is not None


class SlottedAdapter:
    __slots__ = ()

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_install_requests_refuses_adapters_it_cannot_wrap():
    with requests.Session() as session:
        session.adapters["odd://"] = object()  # type: ignore[assignment]
        with pytest.raises(TypeError, match=r"has none\. Mount requests transport adapters only"):
            install_requests(session)
        session.adapters["odd://"] = SlottedAdapter()
        with pytest.raises(TypeError, match="its instances take no new attributes"):
            install_requests(session)


def test_install_requests_refuses_what_is_not_a_session():
    with (
        httpx.Client() as client,
        pytest.raises(TypeError, match=r"install_requests takes a requests\.Session"),
    ):
        install_requests(client)  # type: ignore[arg-type]


def test_problems_are_reported_where_the_request_was_sent(url):
    with (
        recording(WARNINGS_LOGGER) as recorder,
        requests.Session() as session,
    ):
        install_requests(session, allow=["tests.http_clients.tenant"])
        with request_context(request_id="r-10"), TENANT.scope(tenant=["not", "a", "str"]):
            response = session.get(f"{url}/echo", timeout=TIMEOUT)
    assert carried(response) == {"x-request-id": ["r-10"], "baggage": []}
    (line,) = recorder.lines
    assert line.request_id == "r-10"
    assert "'tests.http_clients.tenant|tenant'" in line.message
