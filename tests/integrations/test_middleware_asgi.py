"""The ASGI middleware, called in-process with hand-written receive and send."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from contextual import ContextExecutor, ContextStore, get_current_user, get_request_id
from contextual.integrations._headers import on_request_opened
from contextual.integrations.asgi import RequestContextMiddleware
from support.middleware import FRESH_ID, WARNINGS_LOGGER, recording, shown_in_log

Message = dict[str, Any]
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def http_scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def websocket_scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {**http_scope(*headers), "type": "websocket", "scheme": "ws", "subprotocols": []}


class Client:
    """The server side of one connection: what the app receives, what it sent."""

    def __init__(self, incoming: Iterable[Message] = ({"type": "http.request", "body": b""},)):
        self.incoming = list(incoming)
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        await asyncio.sleep(0)
        if self.incoming:
            return self.incoming.pop(0)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        await asyncio.sleep(0)
        self.sent.append(message)

    def headers(self, kind: str = "http.response.start") -> list[tuple[bytes, bytes]]:
        (start,) = [message for message in self.sent if message["type"] == kind]
        return [tuple(pair) for pair in start.get("headers", [])]  # type: ignore[misc]

    def header(self, name: bytes, kind: str = "http.response.start") -> list[bytes]:
        return [value for key, value in self.headers(kind) if key == name]


def seeing_app(seen: list[Any], headers: list[Any] | None = None) -> App:
    """An app that reports the request ID and user it sees."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((get_request_id(), get_current_user()))
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": headers or []})
        await asyncio.sleep(0)
        seen.append((get_request_id(), get_current_user()))
        await send({"type": "http.response.body", "body": str(get_request_id()).encode()})

    return app


def call(app: Any, scope: dict[str, Any], client: Client | None = None) -> Client:
    client = client or Client()

    async def main() -> None:
        await app(scope, client.receive, client.send)
        assert get_request_id() is None, "the request must be closed after the app"

    asyncio.run(main())
    return client


# -- the incoming ID -------------------------------------------------------------


@pytest.mark.parametrize("request_id", [b"abc", b"r-42", b"A.b_c:d-e", b"0" * 128])
def test_a_valid_incoming_id_is_kept_and_echoed(request_id):
    seen: list[Any] = []
    with recording(WARNINGS_LOGGER) as recorder:
        client = call(
            RequestContextMiddleware(seeing_app(seen)), http_scope((b"x-request-id", request_id))
        )
    assert seen == [(request_id.decode(), None)] * 2
    assert client.header(b"x-request-id") == [request_id]
    assert client.sent[1]["body"] == request_id
    assert recorder.lines == []


def test_the_header_name_is_read_whatever_its_case():
    seen: list[Any] = []
    call(RequestContextMiddleware(seeing_app(seen)), http_scope((b"X-Request-ID", b"r-1")))
    assert seen[0] == ("r-1", None)


def test_a_missing_id_is_generated_silently():
    seen: list[Any] = []
    with recording(WARNINGS_LOGGER) as recorder:
        client = call(RequestContextMiddleware(seeing_app(seen)), http_scope())
    request_id = seen[0][0]
    assert FRESH_ID.fullmatch(request_id)
    assert client.header(b"x-request-id") == [request_id.encode()]
    assert recorder.lines == []


def test_a_scope_without_headers_gets_a_new_id():
    seen: list[Any] = []
    scope = http_scope()
    del scope["headers"]
    call(RequestContextMiddleware(seeing_app(seen)), scope)
    assert FRESH_ID.fullmatch(seen[0][0])


BAD_IDS = {
    "crlf": [b"abc\r\nX-Injected: yes"],
    "lf": [b"abc\nfake log line"],
    "nul": [b"abc\x00"],
    "control": [b"abc\x01def"],
    "tab": [b"abc\tdef"],
    "del": [b"abc\x7f"],
    "non_ascii_latin1": [b"caf\xe9"],
    "non_ascii_utf8": ["café".encode()],
    "next_line": [b"abc\x85def"],
    "too_long": [b"a" * 129],
    "empty": [b""],
    "space": [b"abc def"],
    "comma": [b"first,second"],
    "several_values": [b"first", b"second"],
    "several_empty_values": [b"", b""],
}


@pytest.mark.parametrize("values", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_a_bad_incoming_id_is_replaced_and_logged_once(values):
    seen: list[Any] = []
    scope = http_scope(*[(b"x-request-id", value) for value in values])
    with recording(WARNINGS_LOGGER) as recorder:
        client = call(RequestContextMiddleware(seeing_app(seen)), scope)
    request_id = seen[0][0]
    assert FRESH_ID.fullmatch(request_id)
    assert client.header(b"x-request-id") == [request_id.encode()]
    (warning,) = recorder.lines
    assert warning.level == logging.WARNING
    assert warning.request_id == request_id
    shown = ", ".join(value.decode("latin-1") for value in values)
    assert shown_in_log(shown) in warning.message
    assert len(warning.message.splitlines()) == 1
    assert warning.message.isascii()
    assert warning.message.isprintable()
    if len(values) > 1:
        assert f"{len(values)} values" in warning.message


def test_several_values_are_refused_even_when_each_one_is_valid():
    seen: list[Any] = []
    scope = http_scope((b"x-request-id", b"a"), (b"x-request-id", b"a"))
    call(RequestContextMiddleware(seeing_app(seen), validator=lambda _: True), scope)
    assert FRESH_ID.fullmatch(seen[0][0])


def test_the_logged_value_is_escaped_and_cut_at_64_characters():
    bad = b"\r\n" + b"x" * 200
    with recording(WARNINGS_LOGGER) as recorder:
        call(RequestContextMiddleware(seeing_app([])), http_scope((b"x-request-id", bad)))
    (warning,) = recorder.lines
    assert "'\\r\\n" + "x" * 62 + "'..." in warning.message
    assert "x" * 63 not in warning.message


# -- the echo ----------------------------------------------------------------------


def test_the_echo_keeps_every_other_header_repeated_ones_included():
    headers = [(b"set-cookie", b"a=1"), (b"content-type", b"text/plain"), (b"set-cookie", b"b=2")]
    app_headers = list(headers)
    client = call(
        RequestContextMiddleware(seeing_app([], app_headers)),
        http_scope((b"x-request-id", b"r-1")),
    )
    assert client.headers() == [*headers, (b"x-request-id", b"r-1")]
    assert app_headers == headers, "the app's own list must not change"


def test_the_echo_replaces_only_the_apps_own_request_id_header():
    headers = [[b"set-cookie", b"a=1"], [b"x-request-id", b"by-app"], [b"set-cookie", b"b=2"]]
    client = call(
        RequestContextMiddleware(seeing_app([], headers)), http_scope((b"x-request-id", b"r-1"))
    )
    assert client.headers() == [
        (b"set-cookie", b"a=1"),
        (b"x-request-id", b"r-1"),
        (b"set-cookie", b"b=2"),
    ]


def test_the_echo_does_not_change_the_apps_message():
    messages: list[Message] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = {"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]}
        messages.append(message)
        await send(message)
        await send({"type": "http.response.body", "body": b""})

    client = call(RequestContextMiddleware(app), http_scope((b"x-request-id", b"r-1")))
    assert messages[0]["headers"] == [(b"a", b"1")]
    assert client.sent[0]["status"] == 200
    assert client.sent[0]["headers"] == [(b"a", b"1"), (b"x-request-id", b"r-1")]


def test_the_echo_adds_headers_to_a_start_message_without_any():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})

    client = call(RequestContextMiddleware(app), http_scope((b"x-request-id", b"r-1")))
    assert client.headers() == [(b"x-request-id", b"r-1")]


def test_the_body_and_other_messages_pass_untouched():
    sent: list[Message] = [
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "http.response.body", "body": b"a", "more_body": True},
        {"type": "http.response.body", "body": b"b"},
    ]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        for message in sent:
            await send(message)

    client = call(RequestContextMiddleware(app), http_scope())
    assert client.sent[1] is sent[1]
    assert client.sent[2] is sent[2]


def test_no_echo_when_echo_is_false():
    client = call(
        RequestContextMiddleware(seeing_app([], [(b"set-cookie", b"a=1")]), echo=False),
        http_scope((b"x-request-id", b"r-1")),
    )
    assert client.headers() == [(b"set-cookie", b"a=1")]


def test_the_header_name_is_configurable():
    seen: list[Any] = []
    client = call(
        RequestContextMiddleware(seeing_app(seen), header="X-Correlation-ID"),
        http_scope((b"x-correlation-id", b"c-1"), (b"x-request-id", b"r-1")),
    )
    assert seen[0] == ("c-1", None)
    assert client.header(b"x-correlation-id") == [b"c-1"]
    assert client.header(b"x-request-id") == []


# -- when the request closes ---------------------------------------------------------


def test_an_app_that_raises_closes_the_request():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert get_request_id() == "r-1"
        raise ValueError("boom")

    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            await RequestContextMiddleware(app)(
                http_scope((b"x-request-id", b"r-1")), Client().receive, Client().send
            )
        assert get_request_id() is None

    asyncio.run(main())


def test_a_client_disconnect_closes_the_request():
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # A streaming app: reads until the client goes away, then stops.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive())["type"] != "http.disconnect":
            seen.append(get_request_id())
        seen.append(get_request_id())

    client = Client([{"type": "http.request", "body": b"a", "more_body": True}] * 3)
    call(RequestContextMiddleware(app), http_scope((b"x-request-id", b"r-1")), client)
    assert seen == ["r-1"] * 4


def test_a_send_that_fails_after_a_disconnect_closes_the_request():
    class GoneClient(Client):
        async def send(self, _message: Message) -> None:
            raise OSError("client disconnected")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def main() -> None:
        client = GoneClient([])
        with pytest.raises(OSError, match="client disconnected"):
            await RequestContextMiddleware(app)(http_scope(), client.receive, client.send)
        assert get_request_id() is None

    asyncio.run(main())


def test_a_cancelled_app_closes_the_request():
    started = asyncio.Event()
    after_cancel: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    async def serve() -> None:
        client = Client()
        try:
            await RequestContextMiddleware(app)(
                http_scope((b"x-request-id", b"r-1")), client.receive, client.send
            )
        except asyncio.CancelledError:
            after_cancel.append(get_request_id())
            raise

    async def main() -> None:
        task = asyncio.create_task(serve())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert after_cancel == [None]


# -- thread stores -------------------------------------------------------------------


def writing_app(store: ContextStore, value: str, seen: list[Any]) -> App:
    """An app that reports what ``store`` held when it began, then writes ``value`` in it."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(store.get("tenant"))
        store["tenant"] = value
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(store.get("tenant"))
        await send({"type": "http.response.body", "body": b""})

    return app


def test_a_propagating_thread_store_is_put_back_at_the_end_of_the_app_call(unique_name):
    store = ContextStore(unique_name, backend="thread")
    seen: list[Any] = []
    wrapped = RequestContextMiddleware(writing_app(store, "acme", seen))

    async def main() -> None:
        await wrapped(http_scope(), Client().receive, Client().send)
        seen.append(store.get("tenant"))
        await wrapped(http_scope(), Client().receive, Client().send)

    asyncio.run(main())
    assert seen == [None, "acme", None, None, "acme"]
    assert dict(store) == {}


def test_a_thread_store_is_put_back_when_the_app_raises(unique_name):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        store["tenant"] = "acme"
        raise ValueError("boom")

    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            await RequestContextMiddleware(app)(http_scope(), Client().receive, Client().send)
        assert store["tenant"] == "before"

    asyncio.run(main())


def test_a_thread_store_is_put_back_when_the_app_is_cancelled(unique_name):
    store = ContextStore(unique_name, backend="thread")
    started = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        store["tenant"] = "acme"
        started.set()
        await asyncio.Event().wait()

    async def main() -> Any:
        task = asyncio.create_task(
            RequestContextMiddleware(app)(http_scope(), Client().receive, Client().send)
        )
        await started.wait()
        assert store["tenant"] == "acme", "the loop's thread shares the app's write"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return dict(store)

    assert asyncio.run(main()) == {}


def test_a_non_propagating_thread_store_keeps_what_the_app_wrote(unique_name):
    connections = ContextStore(unique_name, backend="thread", propagate=False)
    seen: list[Any] = []
    wrapped = RequestContextMiddleware(writing_app(connections, "conn-1", seen))
    call(wrapped, http_scope())
    call(wrapped, http_scope())
    assert seen == [None, "conn-1", "conn-1", "conn-1"]


class HeldApp:
    """Each request (``/<tenant>``) records the tenant it finds, writes its own, then waits.

    ``wrote[tenant]`` is set once it has written; it answers once
    ``go[tenant]`` is set.
    """

    def __init__(self, store: ContextStore, *tenants: str) -> None:
        self.store = store
        self.found: dict[str, Any] = {}
        self.wrote = {tenant: asyncio.Event() for tenant in tenants}
        self.go = {tenant: asyncio.Event() for tenant in tenants}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        tenant = scope["path"].strip("/")
        self.found[tenant] = self.store.get("tenant")
        self.store["tenant"] = tenant
        self.wrote[tenant].set()
        await self.go[tenant].wait()
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})

    def start(self, wrapped: App, tenant: str) -> asyncio.Task[None]:
        client = Client()
        scope = {**http_scope(), "path": f"/{tenant}", "raw_path": f"/{tenant}".encode()}
        return asyncio.create_task(wrapped(scope, client.receive, client.send))


@pytest.mark.parametrize(("first", "last"), [("globex", "acme"), ("acme", "globex")])
def test_overlapping_requests_leave_thread_stores_as_before_the_first_began(
    unique_name, first, last
):
    store = ContextStore(unique_name, backend="thread")
    app = HeldApp(store, "globex", "acme", "initech")
    wrapped = RequestContextMiddleware(app)

    async def main() -> list[Any]:
        store["tenant"] = "before"
        tasks = {}
        for tenant in ("globex", "acme"):  # globex begins first, acme while it is open
            tasks[tenant] = app.start(wrapped, tenant)
            await app.wrote[tenant].wait()
        app.go[first].set()
        await tasks[first]
        held = [store.get("tenant")]
        app.go[last].set()
        await tasks[last]
        held.append(store.get("tenant"))
        app.go["initech"].set()
        await app.start(wrapped, "initech")
        return held

    held = asyncio.run(main())
    assert app.found == {"globex": "before", "acme": "globex", "initech": "before"}
    assert held == ["acme", "before"], "nothing is put back while a request is open"


def test_an_overlapping_request_cancelled_is_counted_off(unique_name):
    store = ContextStore(unique_name, backend="thread")
    app = HeldApp(store, "globex", "acme")
    wrapped = RequestContextMiddleware(app)

    async def main() -> Any:
        store["tenant"] = "before"
        globex = app.start(wrapped, "globex")
        await app.wrote["globex"].wait()
        acme = app.start(wrapped, "acme")
        await app.wrote["acme"].wait()
        globex.cancel()
        with pytest.raises(asyncio.CancelledError):
            await globex
        assert store["tenant"] == "acme", "acme is still open"
        app.go["acme"].set()
        await acme
        return store.get("tenant")

    assert asyncio.run(main()) == "before"
    assert app.found == {"globex": "before", "acme": "globex"}


def test_concurrent_requests_on_one_loop_each_see_their_own():
    mismatches: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        expected = dict(scope["headers"])[b"x-request-id"].decode()
        for _ in range(5):
            if (get_request_id(), get_current_user()) != (expected, expected.upper()):
                mismatches.append(expected)
            await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    middleware = RequestContextMiddleware(
        app, get_user=lambda scope: dict(scope["headers"])[b"x-request-id"].decode().upper()
    )

    async def one(n: int) -> list[bytes]:
        client = Client()
        await middleware(
            http_scope((b"x-request-id", f"r-{n}".encode())), client.receive, client.send
        )
        assert get_request_id() is None
        return client.header(b"x-request-id")

    async def main() -> list[list[bytes]]:
        return await asyncio.gather(*(one(n) for n in range(100)))

    echoed = asyncio.run(main())
    assert echoed == [[f"r-{n}".encode()] for n in range(100)]
    assert mismatches == []


def test_tasks_and_a_context_executor_in_the_app_see_the_request():
    seen: list[Any] = []

    def in_pool() -> tuple[Any, Any]:
        return get_request_id(), get_current_user()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        with ContextExecutor(max_workers=1) as pool:
            seen.append(await loop.run_in_executor(pool, in_pool))

        async def child() -> tuple[Any, Any]:
            return get_request_id(), get_current_user()

        seen.append(await asyncio.create_task(child()))
        await send({"type": "http.response.start", "status": 200, "headers": []})

    call(
        RequestContextMiddleware(app, get_user=lambda _: "ada"),
        http_scope((b"x-request-id", b"r-1")),
    )
    assert seen == [("r-1", "ada")] * 2


# -- websocket ---------------------------------------------------------------------


def test_a_websocket_sees_the_request_and_accept_echoes_the_id():
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "headers": [(b"set-cookie", b"a=1")]})
        while (message := await receive())["type"] == "websocket.receive":
            seen.append(get_request_id())
            await send({"type": "websocket.send", "text": f"{message['text']} {get_request_id()}"})
        seen.append(get_request_id())

    client = Client(
        [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "one"},
            {"type": "websocket.receive", "text": "two"},
            {"type": "websocket.disconnect", "code": 1000},
        ]
    )
    call(RequestContextMiddleware(app), websocket_scope((b"x-request-id", b"ws-1")), client)
    assert client.headers("websocket.accept") == [
        (b"set-cookie", b"a=1"),
        (b"x-request-id", b"ws-1"),
    ]
    assert [m.get("text") for m in client.sent[1:]] == ["one ws-1", "two ws-1"]
    assert seen == ["ws-1"] * 3


def test_a_websocket_accept_without_headers_gets_the_echo():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    client = call(
        RequestContextMiddleware(app),
        websocket_scope((b"x-request-id", b"ws-1")),
        Client([{"type": "websocket.connect"}]),
    )
    assert client.headers("websocket.accept") == [(b"x-request-id", b"ws-1")]


def test_a_websocket_denial_response_echoes_the_id():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"no"})

    client = call(
        RequestContextMiddleware(app),
        websocket_scope((b"x-request-id", b"ws-1")),
        Client([{"type": "websocket.connect"}]),
    )
    assert client.headers("websocket.http.response.start") == [(b"x-request-id", b"ws-1")]


def test_a_bad_websocket_id_is_replaced_and_logged_once():
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        seen.append(get_request_id())
        await send({"type": "websocket.accept"})

    with recording(WARNINGS_LOGGER) as recorder:
        client = call(
            RequestContextMiddleware(app),
            websocket_scope((b"x-request-id", b"a\r\nb")),
            Client([{"type": "websocket.connect"}]),
        )
    assert FRESH_ID.fullmatch(seen[0])
    assert client.headers("websocket.accept") == [(b"x-request-id", seen[0].encode())]
    (warning,) = recorder.lines
    assert warning.request_id == seen[0]


# -- other scopes ------------------------------------------------------------------


def test_lifespan_passes_through_untouched():
    seen: list[Any] = []
    client = Client([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope, receive, send, get_request_id()))
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    with recording(WARNINGS_LOGGER) as recorder:
        asyncio.run(
            RequestContextMiddleware(app, get_user=lambda _: 1 / 0)(
                scope, client.receive, client.send
            )
        )
    ((seen_scope, receive, send, request_id),) = seen
    assert seen_scope is scope
    assert receive == client.receive
    assert send == client.send
    assert request_id is None
    assert [m["type"] for m in client.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert recorder.lines == []


def test_an_unknown_scope_type_passes_through_untouched():
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(get_request_id())

    asyncio.run(RequestContextMiddleware(app)({"type": "custom"}, Client().receive, Client().send))
    assert seen == [None]


# -- get_user, validator, generator ---------------------------------------------------


def test_get_user_sees_the_scope_and_sets_the_user():
    seen: list[Any] = []
    middleware = RequestContextMiddleware(seeing_app(seen), get_user=lambda scope: scope["user"])
    call(middleware, {**http_scope((b"x-request-id", b"r-1")), "user": "ada"})
    assert seen == [("r-1", "ada")] * 2


def test_get_user_raising_is_logged_and_the_request_goes_on_without_a_user():
    seen: list[Any] = []

    def get_user(scope: Any) -> str:
        raise LookupError("no such session")

    with recording("contextual.integrations") as recorder:
        client = call(
            RequestContextMiddleware(seeing_app(seen), get_user=get_user),
            http_scope((b"x-request-id", b"r-1")),
        )
    assert client.sent[0]["status"] == 200
    assert seen == [("r-1", None)] * 2
    (error,) = recorder.lines
    assert error.logger == "contextual.integrations.asgi"
    assert error.level == logging.ERROR
    assert error.request_id == "r-1"
    assert isinstance(error.exc_info[1], LookupError)


def test_a_custom_validator_and_generator_are_used():
    seen: list[Any] = []
    middleware = RequestContextMiddleware(
        seeing_app(seen), validator=lambda v: v.startswith("ok"), generator=lambda: "generated"
    )
    call(middleware, http_scope((b"x-request-id", b"ok 1")))
    call(middleware, http_scope((b"x-request-id", b"bad")))
    assert [request_id for request_id, _ in seen[::2]] == ["ok 1", "generated"]


def test_a_header_that_is_not_a_field_name_is_refused():
    with pytest.raises(ValueError, match="HTTP field name"):
        RequestContextMiddleware(seeing_app([]), header="X Request")


def test_a_header_in_the_environ_spelling_is_refused_with_the_header_form():
    with pytest.raises(ValueError, match="WSGI environ") as raised:
        RequestContextMiddleware(seeing_app([]), header="HTTP_X_REQUEST_ID")
    assert "pass the header's own name: header='X-Request-ID'" in str(raised.value)


def test_request_hooks_run_inside_each_http_request_and_websocket():
    seen: list[Any] = []
    remove = on_request_opened(lambda request_id: seen.append((request_id, get_request_id())))
    try:
        call(RequestContextMiddleware(seeing_app([])), http_scope((b"x-request-id", b"r-1")))
        call(RequestContextMiddleware(seeing_app([])), websocket_scope((b"x-request-id", b"r-2")))
    finally:
        remove()
    call(RequestContextMiddleware(seeing_app([])), http_scope((b"x-request-id", b"r-3")))
    assert seen == [("r-1", "r-1"), ("r-2", "r-2")]


def test_the_module_exports_the_middleware_alone_documented():
    from contextual.integrations import asgi  # noqa: PLC0415 (the module itself is under test)

    defined = {
        name
        for name, obj in vars(asgi).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == asgi.__name__
    }
    assert asgi.__all__ == sorted(defined) == ["RequestContextMiddleware"]
    assert "versionadded" in (RequestContextMiddleware.__doc__ or "")
    assert "versionadded" in (asgi.__doc__ or "")


@pytest.mark.parametrize(
    ("value", "valid"),
    [("r-1", True), ("a" * 128, True), ("a" * 129, False), ("", False), ("r\n1", False)],
)
def test_the_default_check_as_a_function(value, valid):
    from contextual._propagation.wire import is_valid_request_id  # noqa: PLC0415

    assert is_valid_request_id(value) is valid


def test_an_async_get_user_is_refused_at_construction():
    async def get_user(scope: Any) -> str:  # pragma: no cover - never called
        return "ada"

    with pytest.raises(TypeError, match="get_user must be a plain function"):
        RequestContextMiddleware(seeing_app([]), get_user=get_user)


def test_a_get_user_returning_an_awaitable_is_reported_and_ignored(caplog):
    class AsyncLookup:
        async def __call__(self, scope: Any) -> str:  # noqa: ARG002  # pragma: no cover - closed unawaited
            return "ada"

    seen: list[Any] = []
    call(
        RequestContextMiddleware(seeing_app(seen), get_user=AsyncLookup()),
        http_scope((b"x-request-id", b"r-1")),
    )
    assert seen[0] == ("r-1", None)
    assert "get_user raised" in caplog.text
    assert "returned an awaitable" in caplog.text


@pytest.mark.parametrize("made", ["bad\r\nid", "", 42])
def test_a_generator_that_returns_an_unsafe_id_is_replaced(made, caplog):
    seen: list[Any] = []
    call(RequestContextMiddleware(seeing_app(seen), generator=lambda: made), http_scope())
    assert FRESH_ID.fullmatch(seen[0][0])
    assert "generator returned" in caplog.text
    assert "\r\n" not in caplog.text


def test_a_generator_that_raises_is_replaced(caplog):
    def broken() -> str:
        raise RuntimeError("no entropy")

    seen: list[Any] = []
    call(RequestContextMiddleware(seeing_app(seen), generator=broken), http_scope())
    assert FRESH_ID.fullmatch(seen[0][0])
    assert "generator raised" in caplog.text
