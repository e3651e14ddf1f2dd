"""The WSGI middleware, called in-process the way a WSGI server calls it."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from contextual import (
    ContextExecutor,
    ContextStore,
    current_request,
    get_current_user,
    get_request_id,
    request_context,
)
from contextual.integrations._headers import on_request_opened
from contextual.integrations.wsgi import RequestContextMiddleware
from support.middleware import FRESH_ID, WARNINGS_LOGGER, recording, shown_in_log

Headers = list[tuple[str, str]]


def environ_with(**headers: str) -> dict[str, Any]:
    environ: dict[str, Any] = {f"HTTP_{name.upper()}": value for name, value in headers.items()}
    setup_testing_defaults(environ)
    return environ


class Server:
    """Do what a WSGI server does with one request: call, iterate, close."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: Headers | None = None
        self.seen_between_chunks: list[str | None] = []

    def start_response(
        self, status: str, headers: Headers, _exc_info: Any = None
    ) -> Callable[[bytes], object]:
        self.status, self.headers = status, headers
        return lambda _data: None

    def serve(self, app: Any, environ: dict[str, Any]) -> bytes:
        body = app(environ, self.start_response)
        try:
            chunks = []
            for chunk in body:
                chunks.append(chunk)
                self.seen_between_chunks.append(get_request_id())
            return b"".join(chunks)
        finally:
            body.close()

    def header(self, name: str) -> list[str]:
        assert self.headers is not None
        return [value for key, value in self.headers if key.lower() == name.lower()]


def seeing_app(seen: list[Any]) -> Callable[..., Iterable[bytes]]:
    """An app that reports the request ID and user it sees."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append((get_request_id(), get_current_user()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(get_request_id()).encode()]

    return app


def serve(app: Any, environ: dict[str, Any] | None = None) -> tuple[Server, bytes]:
    server = Server()
    body = server.serve(app, environ if environ is not None else environ_with())
    return server, body


# -- the incoming ID -------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id", ["abc", "r-42", "A.b_c:d-e", "0" * 128, "x", "2f1c9a5e-6f9b-4d7e"]
)
def test_a_valid_incoming_id_is_kept_and_echoed(request_id):
    seen: list[Any] = []
    with recording(WARNINGS_LOGGER) as recorder:
        server, body = serve(
            RequestContextMiddleware(seeing_app(seen)), environ_with(x_request_id=request_id)
        )
    assert seen == [(request_id, None)]
    assert body == request_id.encode()
    assert server.header("X-Request-ID") == [request_id]
    assert recorder.lines == []


def test_a_missing_id_is_generated_silently():
    seen: list[Any] = []
    with recording(WARNINGS_LOGGER) as recorder:
        server, _ = serve(RequestContextMiddleware(seeing_app(seen)))
    ((request_id, _user),) = seen
    assert FRESH_ID.fullmatch(request_id)
    assert server.header("X-Request-ID") == [request_id]
    assert recorder.lines == []


def test_every_request_gets_its_own_generated_id():
    seen: list[Any] = []
    app = RequestContextMiddleware(seeing_app(seen))
    for _ in range(20):
        serve(app)
    assert len({request_id for request_id, _ in seen}) == 20


BAD_IDS = {
    "crlf": "abc\r\nX-Injected: yes",
    "lf": "abc\nfake log line",
    "cr": "abc\rdef",
    "nul": "abc\x00",
    "control": "abc\x01def",
    "tab": "abc\tdef",
    "del": "abc\x7f",
    "escape": "\x1b[31mred",
    "non_ascii": "caf\xe9",
    "utf8_as_latin1": "caf\xc3\xa9",
    "next_line": "abc\x85def",
    "line_separator": "abc\u2028def",
    "too_long": "a" * 129,
    "empty": "",
    "several_values": "first, second",
    "space": "abc def",
    "quote": 'abc"def',
    "percent_encoded": "abc%0d%0aX-Injected:%20yes",
    "slash": "../../etc/passwd",
}


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_a_bad_incoming_id_is_replaced_and_logged_once(bad):
    seen: list[Any] = []
    with recording(WARNINGS_LOGGER) as recorder:
        server, _ = serve(
            RequestContextMiddleware(seeing_app(seen)), environ_with(x_request_id=bad)
        )
    ((request_id, _user),) = seen
    assert FRESH_ID.fullmatch(request_id)
    assert server.header("X-Request-ID") == [request_id]
    (warning,) = recorder.lines
    assert warning.level == logging.WARNING
    # Logged inside the request: the line carries the new ID.
    assert warning.request_id == request_id
    assert shown_in_log(bad) in warning.message
    assert request_id in warning.message


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_a_bad_incoming_id_cannot_forge_a_log_line(bad):
    with recording(WARNINGS_LOGGER) as recorder:
        serve(RequestContextMiddleware(seeing_app([])), environ_with(x_request_id=bad))
    (warning,) = recorder.lines
    assert len(warning.message.splitlines()) == 1
    assert warning.message.isascii()
    assert warning.message.isprintable()


def test_the_logged_value_is_escaped_and_cut_at_64_characters():
    bad = "\r\n" + "x" * 200
    with recording(WARNINGS_LOGGER) as recorder:
        serve(RequestContextMiddleware(seeing_app([])), environ_with(x_request_id=bad))
    (warning,) = recorder.lines
    assert "'\\r\\n" + "x" * 62 + "'..." in warning.message
    assert "x" * 63 not in warning.message


def test_the_logged_value_of_a_short_bad_id_is_not_marked_as_cut():
    with recording(WARNINGS_LOGGER) as recorder:
        serve(RequestContextMiddleware(seeing_app([])), environ_with(x_request_id="a\nb"))
    (warning,) = recorder.lines
    assert "'a\\nb';" in warning.message


# -- the echo ----------------------------------------------------------------------


def app_with_headers(headers: Headers) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return [b"ok"]

    return app


def test_the_echo_keeps_every_other_header_repeated_ones_included():
    headers = [("Set-Cookie", "a=1"), ("Content-Type", "text/plain"), ("Set-Cookie", "b=2")]
    app_headers = list(headers)
    server, _ = serve(
        RequestContextMiddleware(app_with_headers(app_headers)),
        environ_with(x_request_id="r-1"),
    )
    assert server.headers == [*headers, ("X-Request-ID", "r-1")]
    assert app_headers == headers, "the app's own list must not change"


def test_the_echo_replaces_only_the_apps_own_request_id_header():
    headers = [("Set-Cookie", "a=1"), ("x-request-id", "made-by-app"), ("Set-Cookie", "b=2")]
    server, _ = serve(
        RequestContextMiddleware(app_with_headers(headers)), environ_with(x_request_id="r-1")
    )
    assert server.headers == [("Set-Cookie", "a=1"), ("X-Request-ID", "r-1"), ("Set-Cookie", "b=2")]


def test_the_echo_leaves_a_single_header_when_the_app_set_it_twice():
    headers = [("X-Request-ID", "one"), ("Vary", "Accept"), ("X-Request-ID", "two")]
    server, _ = serve(
        RequestContextMiddleware(app_with_headers(headers)), environ_with(x_request_id="r-1")
    )
    assert server.headers == [("X-Request-ID", "r-1"), ("Vary", "Accept")]


def test_the_echo_is_added_to_an_error_response_started_with_exc_info():
    calls: list[tuple[str, Headers, Any]] = []

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> Any:
        calls.append((status, headers, exc_info))
        return lambda _data: None

    def fail() -> None:
        raise ValueError("boom")

    def app(environ: dict[str, Any], start: Any) -> Iterable[bytes]:
        start("200 OK", [])
        try:
            fail()
        except ValueError:
            start("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"error"]

    body = RequestContextMiddleware(app)(environ_with(x_request_id="r-1"), start_response)
    body.close()  # type: ignore[attr-defined]
    assert calls[1][0] == "500 Internal Server Error"
    assert calls[1][1] == [("Content-Type", "text/plain"), ("X-Request-ID", "r-1")]
    assert calls[1][2][0] is ValueError


def test_no_echo_when_echo_is_false():
    server, _ = serve(
        RequestContextMiddleware(app_with_headers([("Set-Cookie", "a=1")]), echo=False),
        environ_with(x_request_id="r-1"),
    )
    assert server.headers == [("Set-Cookie", "a=1")]


def test_the_header_name_is_configurable():
    seen: list[Any] = []
    app = RequestContextMiddleware(seeing_app(seen), header="X-Correlation-ID")
    server, _ = serve(app, environ_with(x_correlation_id="c-1", x_request_id="r-1"))
    assert seen == [("c-1", None)]
    assert server.header("X-Correlation-ID") == ["c-1"]
    assert server.header("X-Request-ID") == []


def test_the_write_callable_of_start_response_is_passed_back():
    written: list[bytes] = []

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> Any:
        return written.append

    def app(environ: dict[str, Any], start: Any) -> Iterable[bytes]:
        start("200 OK", [])(get_request_id().encode())  # type: ignore[union-attr]
        return []

    body = RequestContextMiddleware(app)(environ_with(x_request_id="r-1"), start_response)
    body.close()  # type: ignore[attr-defined]
    assert written == [b"r-1"]


# -- when the request closes ---------------------------------------------------------


def test_the_request_is_closed_after_the_response():
    serve(RequestContextMiddleware(seeing_app([])), environ_with(x_request_id="r-1"))
    assert get_request_id() is None
    assert current_request() is None


def test_an_app_that_raises_closes_the_request():
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        assert get_request_id() == "r-1"
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        serve(RequestContextMiddleware(app), environ_with(x_request_id="r-1"))
    assert get_request_id() is None


def test_an_app_that_raises_after_start_response_closes_the_request():
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        serve(RequestContextMiddleware(app), environ_with(x_request_id="r-1"))
    assert get_request_id() is None


def test_a_streamed_body_sees_the_request_at_every_step_and_the_server_never_holds_it():
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        for _ in range(3):
            seen.append(get_request_id())
            yield b"chunk"
        seen.append(get_request_id())

    server = Server()
    body = RequestContextMiddleware(app)(environ_with(x_request_id="r-1"), server.start_response)
    assert get_request_id() is None, "the server's own code is outside the request"
    assert b"".join(body) == b"chunk" * 3
    assert get_request_id() is None
    body.close()  # type: ignore[attr-defined]
    assert seen == ["r-1"] * 4


# -- thread stores -------------------------------------------------------------------


def writing_app(store: ContextStore, value: str) -> Callable[..., Iterable[bytes]]:
    """An app that reports what ``store`` held when it began, then writes ``value`` in it."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        found = store.get("tenant")
        store["tenant"] = value
        start_response("200 OK", [])
        return [str(found).encode()]

    return app


def test_a_propagating_thread_store_is_put_back_after_the_response(unique_name):
    store = ContextStore(unique_name, backend="thread")
    wrapped = RequestContextMiddleware(writing_app(store, "acme"))
    _, first = serve(wrapped)
    _, second = serve(wrapped)
    assert (first, second) == (b"None", b"None")
    assert dict(store) == {}


def test_a_thread_store_is_put_back_when_the_app_raises(unique_name):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        store["tenant"] = "acme"
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        serve(RequestContextMiddleware(app))
    assert store["tenant"] == "before"


def test_a_streamed_body_sees_the_thread_store_until_close_then_it_is_put_back(unique_name):
    store = ContextStore(unique_name, backend="thread")
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        store["tenant"] = "acme"
        yield b"a"
        seen.append(store.get("tenant"))
        store["tenant"] = "globex"
        yield b"b"

    body = RequestContextMiddleware(app)(environ_with(), Server().start_response)
    assert b"".join(body) == b"ab"
    seen.append(store.get("tenant"))  # the server, between the last chunk and close()
    body.close()  # type: ignore[attr-defined]
    assert seen == ["acme", "globex"]
    assert dict(store) == {}


def test_a_non_propagating_thread_store_keeps_what_the_app_wrote(unique_name):
    connections = ContextStore(unique_name, backend="thread", propagate=False)
    wrapped = RequestContextMiddleware(writing_app(connections, "conn-1"))
    _, first = serve(wrapped)
    _, second = serve(wrapped)
    assert (first, second) == (b"None", b"conn-1")


def test_a_caller_that_never_closes_the_body_leaks_nothing():
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        seen.append(get_request_id())
        return [b"ok"]

    wrapped = RequestContextMiddleware(app)
    for request_id in ("r-1", "r-2", "r-3"):
        body = wrapped(environ_with(x_request_id=request_id), Server().start_response)
        assert list(body) == [b"ok"]  # and no close(), as some test clients do
        assert get_request_id() is None
    assert seen == ["r-1", "r-2", "r-3"]


def test_the_body_close_runs_inside_the_request():
    seen_in_close: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            yield b"first"
            yield b"never sent"
        finally:
            seen_in_close.append(get_request_id())

    server = Server()
    body = RequestContextMiddleware(app)(environ_with(x_request_id="r-1"), server.start_response)
    assert next(iter(body)) == b"first"
    body.close()  # type: ignore[attr-defined]
    assert seen_in_close == ["r-1"]
    assert get_request_id() is None


def test_a_body_that_raises_while_iterated_is_closed_by_close():
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        serve(RequestContextMiddleware(app), environ_with(x_request_id="r-1"))
    assert get_request_id() is None


def test_a_body_close_that_raises_still_closes_the_request():
    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"ok"])

        def close(self) -> None:
            raise OSError("close failed")

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    with pytest.raises(OSError, match="close failed"):
        serve(RequestContextMiddleware(app), environ_with(x_request_id="r-1"))
    assert get_request_id() is None


def test_close_closes_the_apps_body_once():
    closed: list[str | None] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"ok"])

        def close(self) -> None:
            closed.append(get_request_id())

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    body = RequestContextMiddleware(app)(environ_with(x_request_id="r-1"), Server().start_response)
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert closed == ["r-1"]
    assert get_request_id() is None


def test_start_response_never_called_still_closes_the_request_at_close():
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return []

    server, body = serve(RequestContextMiddleware(app), environ_with(x_request_id="r-1"))
    assert server.status is None
    assert body == b""
    assert get_request_id() is None


def test_start_response_never_called_before_raising_closes_the_request():
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        raise ValueError("boom")
        yield b""  # pragma: no cover - a generator that raises before its first chunk

    with pytest.raises(ValueError, match="boom"):
        serve(RequestContextMiddleware(app), environ_with(x_request_id="r-1"))
    assert get_request_id() is None


def test_a_body_with_a_length_keeps_it_and_a_generator_has_none():
    listed = RequestContextMiddleware(app_with_headers([]))(environ_with(), Server().start_response)
    assert len(listed) == 1  # type: ignore[arg-type]
    listed.close()  # type: ignore[attr-defined]

    def generating(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"ok"

    generated = RequestContextMiddleware(generating)(environ_with(), Server().start_response)
    assert not hasattr(generated, "__len__")
    generated.close()  # type: ignore[attr-defined]


def test_a_nested_request_in_a_streamed_body_keeps_its_values_across_chunks():
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        with request_context(request_id="inner", user_id="bob"):
            seen.append(get_request_id())
            yield b"one"
            seen.append(get_request_id())
            yield b"two"
        seen.append(get_request_id())

    serve(RequestContextMiddleware(app), environ_with(x_request_id="outer"))
    assert seen == ["inner", "inner", "outer"]
    assert get_request_id() is None


def test_an_outer_request_comes_back_after_the_response():
    with request_context(request_id="outer"):
        serve(RequestContextMiddleware(seeing_app([])), environ_with(x_request_id="r-1"))
        assert get_request_id() == "outer"


# -- threads -----------------------------------------------------------------------


def test_a_pooled_server_thread_never_sees_another_requests_values():
    """Every 'server thread' serves many requests; each sees only its own."""
    seen_before: list[str | None] = []
    seen_after: list[str | None] = []
    mismatches: list[tuple[str, Any]] = []
    start = threading.Barrier(4, timeout=10)

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        expected = environ["HTTP_X_REQUEST_ID"]
        start_response("200 OK", [])
        for _ in range(3):
            if (get_request_id(), get_current_user()) != (expected, expected.upper()):
                mismatches.append((expected, get_request_id()))
            yield b"."

    middleware = RequestContextMiddleware(app, get_user=lambda e: e["HTTP_X_REQUEST_ID"].upper())

    def worker(n: int) -> None:
        start.wait()
        for i in range(50):
            seen_before.append(get_request_id())
            serve(middleware, environ_with(x_request_id=f"t{n}-r{i}"))
            seen_after.append(get_request_id())

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(worker, n) for n in range(4)]:
            future.result(timeout=30)
    assert mismatches == []
    assert seen_before == [None] * 200
    assert seen_after == [None] * 200


def test_a_context_executor_in_the_app_sees_the_request():
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with ContextExecutor(max_workers=1) as pool:
            seen = pool.submit(lambda: (get_request_id(), get_current_user())).result(timeout=10)
        start_response("200 OK", [])
        return [repr(seen).encode()]

    _, body = serve(
        RequestContextMiddleware(app, get_user=lambda _: "ada"), environ_with(x_request_id="r-1")
    )
    assert body == repr(("r-1", "ada")).encode()


# -- get_user, validator, generator ---------------------------------------------------


def test_get_user_sees_the_environ_and_sets_the_user():
    seen: list[Any] = []
    app = RequestContextMiddleware(
        seeing_app(seen), get_user=lambda environ: environ["REMOTE_USER"]
    )
    environ = environ_with(x_request_id="r-1")
    environ["REMOTE_USER"] = "ada"
    serve(app, environ)
    assert seen == [("r-1", "ada")]


def test_get_user_returning_none_means_no_user():
    seen: list[Any] = []
    serve(RequestContextMiddleware(seeing_app(seen), get_user=lambda _: None))
    assert seen[0][1] is None


def test_get_user_raising_is_logged_and_the_request_goes_on_without_a_user():
    seen: list[Any] = []

    def get_user(environ: dict[str, Any]) -> str:
        raise LookupError("no such session")

    with recording("contextual.integrations") as recorder:
        server, _ = serve(
            RequestContextMiddleware(seeing_app(seen), get_user=get_user),
            environ_with(x_request_id="r-1"),
        )
    assert server.status == "200 OK"
    assert seen == [("r-1", None)]
    (error,) = recorder.lines
    assert error.logger == "contextual.integrations.wsgi"
    assert error.level == logging.ERROR
    assert error.request_id == "r-1"
    assert isinstance(error.exc_info[1], LookupError)


def test_a_custom_validator_replaces_the_default_check():
    seen: list[Any] = []
    app = RequestContextMiddleware(seeing_app(seen), validator=lambda v: v.startswith("req "))
    with recording(WARNINGS_LOGGER) as recorder:
        serve(app, environ_with(x_request_id="req 1/2"))
        serve(app, environ_with(x_request_id="abc"))
    assert seen[0][0] == "req 1/2"
    assert FRESH_ID.fullmatch(seen[1][0])
    (warning,) = recorder.lines
    assert "'abc'" in warning.message


@pytest.mark.parametrize("bad", ["req\r\nX: y", "req\x01", "req \xe9", ""])
def test_a_custom_validator_cannot_let_unsafe_values_through(bad):
    seen: list[Any] = []
    app = RequestContextMiddleware(seeing_app(seen), validator=lambda _: True)
    with recording(WARNINGS_LOGGER) as recorder:
        server, _ = serve(app, environ_with(x_request_id=bad))
    assert FRESH_ID.fullmatch(seen[0][0])
    assert server.header("X-Request-ID") == [seen[0][0]]
    assert len(recorder.lines) == 1


def test_a_validator_that_raises_refuses_the_value_and_logs_once():
    def validator(value: str) -> bool:
        raise RuntimeError("validator bug")

    seen: list[Any] = []
    app = RequestContextMiddleware(seeing_app(seen), validator=validator)
    with recording("contextual.integrations") as recorder:
        server, _ = serve(app, environ_with(x_request_id="abc"))
    assert server.status == "200 OK"
    assert FRESH_ID.fullmatch(seen[0][0])
    (warning,) = recorder.lines
    assert warning.level == logging.WARNING
    assert "validator raised" in warning.message
    assert isinstance(warning.exc_info[1], RuntimeError)


def test_a_custom_generator_makes_the_new_ids():
    ids = iter(["gen-1", "gen-2"])
    seen: list[Any] = []
    app = RequestContextMiddleware(seeing_app(seen), generator=lambda: next(ids))
    serve(app)
    serve(app, environ_with(x_request_id="bad\n"))
    serve(app, environ_with(x_request_id="good"))
    assert [request_id for request_id, _ in seen] == ["gen-1", "gen-2", "good"]


@pytest.mark.parametrize("header", ["", "X Request", "X-Request-ID:", "X-Request-ID\r\n", "é"])
def test_a_header_that_is_not_a_field_name_is_refused(header):
    with pytest.raises(ValueError, match="HTTP field name"):
        RequestContextMiddleware(seeing_app([]), header=header)


@pytest.mark.parametrize(
    ("header", "form"), [("HTTP_X_REQUEST_ID", "X-Request-ID"), ("HTTP_X_TRACE_ID", "X-Trace-ID")]
)
def test_a_header_in_the_environ_spelling_is_refused_with_the_header_form(header, form):
    with pytest.raises(ValueError, match="WSGI environ") as raised:
        RequestContextMiddleware(seeing_app([]), header=header)
    assert f"pass the header's own name: header={form!r}" in str(raised.value)


def test_a_header_that_is_not_a_str_is_refused():
    with pytest.raises(ValueError, match="HTTP field name"):
        RequestContextMiddleware(seeing_app([]), header=b"X-Request-ID")  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["get_user", "validator", "generator"])
def test_options_that_are_not_callable_are_refused(option):
    with pytest.raises(TypeError, match=f"{option} must be callable"):
        RequestContextMiddleware(seeing_app([]), **{option: "not callable"})


def test_a_logging_filter_that_raises_still_closes_the_request():
    def refuse(record: logging.LogRecord) -> bool:
        raise RuntimeError("filter bug")

    logger = logging.getLogger(WARNINGS_LOGGER)
    logger.addFilter(refuse)
    try:
        with pytest.raises(RuntimeError, match="filter bug"):
            serve(RequestContextMiddleware(seeing_app([])), environ_with(x_request_id="bad\n"))
    finally:
        logger.removeFilter(refuse)
    assert get_request_id() is None


def test_request_hooks_run_inside_each_request():
    seen: list[Any] = []
    remove = on_request_opened(lambda request_id: seen.append((request_id, get_request_id())))
    try:
        serve(RequestContextMiddleware(seeing_app([])), environ_with(x_request_id="r-1"))
    finally:
        remove()
    serve(RequestContextMiddleware(seeing_app([])), environ_with(x_request_id="r-2"))
    assert seen == [("r-1", "r-1")]


def test_the_module_exports_the_middleware_alone_documented():
    from contextual.integrations import wsgi  # noqa: PLC0415 (the module itself is under test)

    defined = {
        name
        for name, obj in vars(wsgi).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == wsgi.__name__
    }
    assert wsgi.__all__ == sorted(defined) == ["RequestContextMiddleware"]
    assert "versionadded" in (RequestContextMiddleware.__doc__ or "")
    assert "versionadded" in (wsgi.__doc__ or "")
