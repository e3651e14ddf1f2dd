"""RequestOpener, which every request middleware opens its requests with, called directly.

The user a framework gives, the thread stores put back when a request
closes, the hooks run as it opens, and the header names it refuses. The
WSGI and ASGI middleware tests show the same through each middleware; the
server tests under waitress and uvicorn.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from contextual import (
    ContextStore,
    current_request,
    get_current_user,
    get_request_id,
    new_request_id,
    request_context,
)
from contextual.integrations import _headers, http
from contextual.integrations._carrier import AllowList
from contextual.integrations._headers import (
    RequestOpener,
    check_header_name,
    on_request_opened,
)
from support.http_servers import forget_reports
from support.middleware import WARNINGS_LOGGER, recording

USER_LOGGER = logging.getLogger("tests.request_opener")


def opener(
    get_user: Callable[[Any], Any] | None = None, baggage: AllowList | None = None
) -> RequestOpener[Any]:
    return RequestOpener(
        "X-Request-ID", get_user, None, new_request_id, USER_LOGGER, baggage=baggage
    )


def opened_request(
    the_opener: RequestOpener[Any],
    values: tuple[str, ...] = ("r-1",),
    baggage: tuple[str, ...] = (),
    *,
    user: Any = None,
    during: Callable[[], object] = lambda: None,
) -> Any:
    """Open a request, call ``during`` in it, close it; return what ``during`` returned."""
    request, _ = the_opener.open(values, {}, baggage, user=user)
    try:
        return during()
    finally:
        request.__exit__(None, None, None)


@pytest.fixture
def register() -> Iterator[Callable[[Callable[[str], object]], Callable[[], None]]]:
    """Register request hooks for one test; every one still registered goes at its end."""
    removers: list[Callable[[], None]] = []

    def add(hook: Callable[[str], object]) -> Callable[[], None]:
        remove = on_request_opened(hook)
        removers.append(remove)
        return remove

    yield add
    for remove in removers:
        remove()
    assert _headers._hooks.called == ()


@pytest.fixture(autouse=True)
def _fresh_reports() -> Iterator[None]:
    forget_reports()
    yield
    forget_reports()


# -- the user ------------------------------------------------------------------------


def test_the_user_given_is_the_request_user_without_get_user():
    seen = opened_request(
        opener(), user="ada", during=lambda: (get_current_user(), current_request())
    )
    assert seen[0] == "ada"
    assert seen[1].user_id == "ada"


def test_no_user_given_and_no_get_user_means_no_user():
    assert opened_request(opener(), during=get_current_user) is None


def test_get_user_wins_over_the_user_given():
    seen = opened_request(opener(lambda _: "grace"), user="ada", during=get_current_user)
    assert seen == "grace"


def test_the_user_given_is_used_when_get_user_returns_none():
    seen = opened_request(opener(lambda _: None), user="ada", during=get_current_user)
    assert seen == "ada"


def test_a_get_user_that_raises_means_no_user_even_with_a_user_given():
    def get_user(_: Any) -> str:
        raise LookupError("no session")

    with recording(USER_LOGGER.name) as recorder:
        seen = opened_request(opener(get_user), user="ada", during=get_current_user)
    assert seen is None
    (line,) = recorder.lines
    assert isinstance(line.exc_info[1], LookupError)


BAGGAGE_USER = ("contextual.request|user_id=carol",)
ALLOW_USER = AllowList({"contextual.request": ["user_id"]})


def test_the_user_given_wins_over_the_baggage_user():
    seen = opened_request(
        opener(baggage=ALLOW_USER), baggage=BAGGAGE_USER, user="ada", during=get_current_user
    )
    assert seen == "ada"


def test_without_a_user_given_the_baggage_user_is_the_request_user():
    seen = opened_request(opener(baggage=ALLOW_USER), baggage=BAGGAGE_USER, during=get_current_user)
    assert seen == "carol"


# -- thread stores put back ------------------------------------------------------------


def test_a_propagating_thread_store_is_put_back_when_the_request_closes(unique_name):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"

    def write() -> None:
        store["tenant"] = "acme"
        store["added"] = 1

    opened_request(opener(), during=write)
    assert dict(store) == {"tenant": "before"}


def test_a_thread_store_put_back_is_the_same_values_the_request_found(unique_name):
    # Inside an open scope: the values carry the scope's record, which must
    # survive for the scope's own exit to work.
    store = ContextStore(unique_name, backend="thread")
    with store.scope(tenant="outer"):

        def write() -> None:
            store["tenant"] = "acme"

        opened_request(opener(), during=write)
        assert dict(store) == {"tenant": "outer"}
    assert dict(store) == {}


def test_a_thread_store_with_a_defaults_factory_runs_it_again_after_the_request(unique_name):
    made: list[int] = []

    def defaults() -> dict[str, Any]:
        made.append(1)
        return {"items": []}

    store = ContextStore(unique_name, backend="thread", defaults=defaults)

    def write() -> None:
        store["items"].append("acme")

    opened_request(opener(), during=write)
    assert store["items"] == []
    assert len(made) == 2, "once in the request, once after it: never the request's list"


def test_a_non_propagating_thread_store_keeps_what_the_request_wrote(unique_name):
    connections = ContextStore(unique_name, backend="thread", propagate=False)

    def connect() -> None:
        connections["connection"] = "conn-1"

    opened_request(opener(), during=connect)
    assert connections["connection"] == "conn-1"


def test_a_context_store_is_left_to_the_callers_context(unique_name):
    # RequestOpener puts back thread stores only: the middleware runs each
    # request in a context of its own, which takes care of the rest.
    store = ContextStore(unique_name)

    def write() -> None:
        store["tenant"] = "acme"

    opened_request(opener(), during=write)
    assert store["tenant"] == "acme"


def test_a_thread_store_collected_before_the_request_is_skipped(unique_name):
    kept = ContextStore(unique_name, backend="thread")
    gone = ContextStore(f"{unique_name}.gone", backend="thread")
    del gone
    gc.collect()
    # The registry lists the collected store until its next change.
    assert any(ref() is None for ref in _headers.REGISTRY.view.carried_by_thread)
    kept["tenant"] = "before"

    def write() -> None:
        kept["tenant"] = "acme"

    opened_request(opener(), during=write)
    assert kept["tenant"] == "before"


def test_a_thread_store_from_baggage_is_put_back_after_the_request(unique_name):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"
    allow = AllowList({unique_name: ["tenant"]})

    def read_then_write() -> Any:
        seen = store["tenant"]
        store["tenant"] = "changed"
        return seen

    seen = opened_request(
        opener(baggage=allow), baggage=(f"{unique_name}|tenant=acme",), during=read_then_write
    )
    assert seen == "acme"
    assert store["tenant"] == "before"


def test_a_request_that_fails_to_open_puts_thread_stores_back(unique_name):
    store = ContextStore(unique_name, backend="thread")

    def get_user(_: Any) -> str:
        store["tenant"] = "acme"
        return "ada"

    def refuse(record: logging.LogRecord) -> bool:
        raise RuntimeError("filter bug")

    logger = logging.getLogger(WARNINGS_LOGGER)
    logger.addFilter(refuse)
    try:
        with pytest.raises(RuntimeError, match="filter bug"):
            opener(get_user).open(("bad\n",), {})
    finally:
        logger.removeFilter(refuse)
    assert get_request_id() is None
    assert dict(store) == {}


def test_a_request_closed_from_another_thread_leaves_that_threads_stores_alone(
    unique_name, run_in_new_thread
):
    # As the WSGI middleware opens and closes a request: in its own context.
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"
    context = contextvars.copy_context()
    request, _ = context.run(opener().open, ("r-1",), {})
    store["tenant"] = "acme"

    def close_there() -> Any:
        store["tenant"] = "theirs"
        context.run(request.__exit__, None, None, None)
        return store["tenant"], context.run(get_request_id)

    assert run_in_new_thread(close_there) == ("theirs", None)
    assert store["tenant"] == "acme", "only the opening thread could put it back"


def test_the_opened_request_is_a_context_manager_that_closes_it(unique_name):
    store = ContextStore(unique_name, backend="thread")
    request, request_id = opener().open(("r-1",), {})
    with request:
        store["tenant"] = "acme"
        assert get_request_id() == request_id == "r-1"
    assert get_request_id() is None
    assert dict(store) == {}


class Overlapping:
    """Requests of one ``overlapping`` opener, each in a context of its own, as tasks are."""

    def __init__(self) -> None:
        self.opener: RequestOpener[Any] = RequestOpener(
            "X-Request-ID", None, None, new_request_id, USER_LOGGER, overlapping=True
        )
        self.requests: dict[str, tuple[contextvars.Context, Any]] = {}

    def open(self, request_id: str) -> None:
        context = contextvars.copy_context()
        request, _ = context.run(self.opener.open, (request_id,), {})
        self.requests[request_id] = (context, request)

    def close(self, request_id: str) -> None:
        context, request = self.requests.pop(request_id)
        context.run(request.__exit__, None, None, None)


@pytest.mark.parametrize("order", [("r-b", "r-a"), ("r-a", "r-b")])
def test_overlapping_requests_put_thread_stores_back_once_the_last_closes(unique_name, order):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"
    requests = Overlapping()
    requests.open("r-b")
    store["tenant"] = "globex"
    requests.open("r-a")
    found_by_a = store["tenant"]
    store["tenant"] = "acme"
    requests.close(order[0])
    after_one = store["tenant"]
    requests.close(order[1])
    assert (found_by_a, after_one) == ("globex", "acme"), "nothing put back while one is open"
    assert store["tenant"] == "before"


def test_overlapping_openers_share_the_threads_count_of_open_requests(unique_name):
    # Two middleware on one event loop: their requests share the thread stores.
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"
    one, other = Overlapping(), Overlapping()
    one.open("r-1")
    store["tenant"] = "globex"
    other.open("r-2")
    store["tenant"] = "acme"
    one.close("r-1")
    after_one = store["tenant"]
    other.close("r-2")
    assert (after_one, store["tenant"]) == ("acme", "before")


def test_overlapping_requests_after_others_ended_find_the_thread_as_it_is_then(unique_name):
    store = ContextStore(unique_name, backend="thread")
    requests = Overlapping()
    requests.open("r-1")
    store["tenant"] = "acme"
    requests.close("r-1")
    store["tenant"] = "between"
    requests.open("r-2")
    requests.open("r-3")
    store["tenant"] = "globex"
    requests.close("r-2")
    requests.close("r-3")
    assert store["tenant"] == "between"


def test_a_store_defined_while_overlapping_requests_are_open_is_put_back_as_found_next(
    unique_name,
):
    first = ContextStore(unique_name, backend="thread")
    first["tenant"] = "before"
    requests = Overlapping()
    requests.open("r-1")
    first["tenant"] = "acme"
    later = ContextStore(f"{unique_name}.later", backend="thread")
    later["tenant"] = "found"
    requests.open("r-2")
    later["tenant"] = "globex"
    requests.open("r-3")
    later["tenant"] = "initech"
    for request_id in ("r-1", "r-2", "r-3"):
        requests.close(request_id)
    assert first["tenant"] == "before", "as it was when the first request began"
    assert later["tenant"] == "found", "as the first request opened after it found it"


@pytest.mark.parametrize("overlapping", [False, True])
def test_a_request_that_fails_before_it_opens_puts_thread_stores_back(unique_name, overlapping):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"

    def generator() -> str:
        store["tenant"] = "acme"
        raise RuntimeError("generator bug")

    def refuse(record: logging.LogRecord) -> bool:
        raise RuntimeError("filter bug")

    failing = RequestOpener(
        "X-Request-ID", None, None, generator, USER_LOGGER, overlapping=overlapping
    )
    logger = logging.getLogger(WARNINGS_LOGGER)
    logger.addFilter(refuse)
    try:
        with pytest.raises(RuntimeError, match="filter bug"):
            failing.open((), {})
    finally:
        logger.removeFilter(refuse)
    assert get_request_id() is None
    assert store["tenant"] == "before"
    # Not left counted as open: the next request puts the thread back as it closes.
    requests = Overlapping()
    requests.open("r-1")
    store["tenant"] = "globex"
    requests.close("r-1")
    assert store["tenant"] == "before"


def test_an_overlapping_request_closed_from_another_thread_is_counted_off_there_alone(
    unique_name, run_in_new_thread
):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"
    requests = Overlapping()
    requests.open("r-1")
    requests.open("r-2")
    store["tenant"] = "acme"

    def close_there() -> Any:
        store["tenant"] = "theirs"
        requests.close("r-1")
        return store["tenant"]

    assert run_in_new_thread(close_there) == "theirs"
    assert store["tenant"] == "acme", "r-2 is still open"
    requests.close("r-2")
    assert store["tenant"] == "before"


def test_the_last_overlapping_request_closed_from_another_thread_puts_nothing_back(
    unique_name, run_in_new_thread
):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "before"
    requests = Overlapping()
    requests.open("r-1")
    store["tenant"] = "acme"

    def close_there() -> Any:
        store["tenant"] = "theirs"
        requests.close("r-1")
        return store["tenant"]

    assert run_in_new_thread(close_there) == "theirs"
    assert store["tenant"] == "acme", "only this thread could put it back"
    # Counted off all the same: the next request here finds, and leaves, "acme".
    requests.open("r-2")
    store["tenant"] = "globex"
    requests.close("r-2")
    assert store["tenant"] == "acme"


FORK_SCRIPT = """
import logging, os
from contextual import ContextStore, new_request_id
from contextual.integrations._headers import RequestOpener

store = ContextStore("forked.tenants", backend="thread")
opener = RequestOpener(
    "X-Request-ID", None, None, new_request_id, logging.getLogger("t"), overlapping=True
)
store["tenant"] = "before"
request, _ = opener.open(("r-1",), {})
store["tenant"] = "acme"
pid = os.fork()  # r-1 is open: it never closes in the child
if pid == 0:
    other, _ = opener.open(("r-2",), {})
    store["tenant"] = "globex"
    other.__exit__(None, None, None)
    os._exit(0 if store["tenant"] == "acme" else 1)
_, status = os.waitpid(pid, 0)
request.__exit__(None, None, None)
print(os.waitstatus_to_exitcode(status), store["tenant"])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_forked_child_counts_none_of_the_parents_overlapping_requests_open():
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == ["0", "before"], result.stderr


# -- hooks ---------------------------------------------------------------------------


def test_a_hook_is_called_with_the_request_id_inside_the_request(register):
    seen: list[Any] = []
    register(lambda request_id: seen.append((request_id, get_request_id(), get_current_user())))
    opened_request(opener(), user="ada")
    assert seen == [("r-1", "r-1", "ada")]


def test_a_hook_sees_the_allowed_baggage(register, unique_name):
    store = ContextStore(unique_name)
    seen: list[Any] = []
    register(lambda _: seen.append(store.get("tenant")))
    opened_request(
        opener(baggage=AllowList([unique_name])), baggage=(f"{unique_name}|tenant=acme",)
    )
    assert seen == ["acme"]


def test_hooks_run_in_order_and_one_registered_twice_runs_twice(register):
    seen: list[str] = []

    def first(_: str) -> None:
        seen.append("first")

    register(first)
    register(lambda _: seen.append("second"))
    register(first)
    opened_request(opener())
    assert seen == ["first", "second", "first"]


def test_removing_a_hook_stops_its_calls_and_removing_it_again_does_nothing(register):
    seen: list[str] = []
    remove = register(seen.append)
    opened_request(opener(), ("r-1",))
    remove()
    remove()
    opened_request(opener(), ("r-2",))
    assert seen == ["r-1"]


def test_removing_one_of_two_registrations_of_a_hook_keeps_the_other(register):
    seen: list[str] = []
    remove = register(seen.append)
    register(seen.append)
    remove()
    remove()
    opened_request(opener())
    assert seen == ["r-1"]


def test_a_raising_hook_is_logged_every_time_and_the_request_goes_on(register):
    seen: list[Any] = []

    def broken(_: str) -> None:
        raise RuntimeError("hook bug")

    register(broken)
    register(seen.append)
    with recording(WARNINGS_LOGGER) as recorder:
        opened_request(opener(), ("r-1",))
        seen.append(opened_request(opener(), ("r-2",), during=get_request_id))
    assert seen == ["r-1", "r-2", "r-2"]
    assert get_request_id() is None
    assert [(line.level, line.request_id) for line in recorder.lines] == [
        (logging.ERROR, "r-1"),
        (logging.ERROR, "r-2"),
    ]
    for line in recorder.lines:
        assert "broken" in line.message
        assert isinstance(line.exc_info[1], RuntimeError)


class Stop(BaseException):
    pass


def test_a_hook_raising_a_base_exception_closes_the_request_and_puts_stores_back(
    register, unique_name
):
    store = ContextStore(unique_name, backend="thread")

    def stop(_: str) -> None:
        store["tenant"] = "acme"
        raise Stop

    register(stop)
    with pytest.raises(Stop):
        opener(baggage=AllowList([unique_name])).open(("r-1",), {}, (f"{unique_name}|a=1",))
    assert get_request_id() is None
    assert dict(store) == {}


def test_hooks_are_called_for_requests_only_not_for_request_context(register):
    seen: list[str] = []
    register(seen.append)
    with request_context("r-9"):
        pass
    assert seen == []


def test_hooks_registered_from_many_threads_at_once_are_all_kept(register):
    count = 16
    barrier = threading.Barrier(count)
    hooks = [lambda _, i=i: i for i in range(count)]
    removers: list[Callable[[], None]] = []
    lock = threading.Lock()

    def add(hook: Callable[[str], object]) -> None:
        barrier.wait()
        remove = on_request_opened(hook)
        with lock:
            removers.append(remove)

    threads = [threading.Thread(target=add, args=(hook,)) for hook in hooks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(_headers._hooks.called, key=hooks.index) == hooks
    barrier = threading.Barrier(count)

    def remove_at_once(remove: Callable[[], None]) -> None:
        barrier.wait()
        remove()

    threads = [threading.Thread(target=remove_at_once, args=(r,)) for r in removers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _headers._hooks.called == ()


@pytest.mark.parametrize("hook", [None, "not callable", 42])
def test_a_hook_that_is_not_callable_is_refused(hook):
    with pytest.raises(TypeError, match="hook must be callable"):
        on_request_opened(hook)
    assert _headers._hooks.called == ()


def test_an_async_hook_is_refused():
    async def hook(_: str) -> None:
        pass

    with pytest.raises(TypeError, match="hook must be a plain function"):
        on_request_opened(hook)
    assert _headers._hooks.called == ()


# -- header names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "form"),
    [
        ("HTTP_X_REQUEST_ID", "X-Request-ID"),
        ("HTTP_X_CORRELATION_ID", "X-Correlation-ID"),
        ("http_x_request_id", "X-Request-ID"),
        ("HTTP_TRACEPARENT", "Traceparent"),
        ("HTTP_X-Request-Id", "X-Request-ID"),
        ("HTTP_", "X-Request-ID"),
    ],
)
def test_a_header_in_the_wsgi_environ_spelling_is_refused_with_its_header_form(given, form):
    with pytest.raises(ValueError, match="WSGI environ") as raised:
        check_header_name(given)
    assert f"header={form!r}" in str(raised.value)
    assert f"header={given!r}" in str(raised.value)


def test_the_refusal_of_the_environ_spelling_reads_in_full():
    with pytest.raises(ValueError) as raised:  # noqa: PT011 (the whole message is checked)
        check_header_name("HTTP_X_REQUEST_ID")
    assert str(raised.value) == (
        "header='HTTP_X_REQUEST_ID' is the WSGI environ (Django request.META) spelling; "
        "pass the header's own name: header='X-Request-ID'."
    )


@pytest.mark.parametrize("header", ["X-Request-ID", "HTTP-X-Request-ID", "X-HTTP_ID", "HTTPX"])
def test_header_names_that_merely_mention_http_are_kept(header):
    assert check_header_name(header) == header


def test_request_opener_refuses_the_environ_spelling():
    with pytest.raises(ValueError, match="header='X-Request-ID'"):
        RequestOpener("HTTP_X_REQUEST_ID", None, None, new_request_id, USER_LOGGER)


def test_inject_and_extract_refuse_the_environ_spelling():
    with pytest.raises(ValueError, match="header='X-Request-ID'"):
        http.inject({}, header="HTTP_X_REQUEST_ID")
    with pytest.raises(ValueError, match="header='X-Request-ID'"):
        http.extract({}, header="HTTP_X_REQUEST_ID")
