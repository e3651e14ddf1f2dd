"""update_request(): the user and extras for the rest of a request; users read on first use."""

from __future__ import annotations

import asyncio
import io
import logging
import pickle
import threading

import pytest

from contextual import (
    ContextExecutor,
    ContextFilter,
    ContextualError,
    NoRequestError,
    capture,
    current_request,
    get_current_user,
    get_request_id,
    request_context,
    update_request,
)
from contextual._request.request import REQUEST_STORE, Deferred, open_request, resolved
from contextual.integrations.http import inject
from contextual.integrations.loguru import patch_context
from contextual.integrations.structlog import add_context


def _agree() -> tuple[object, object]:
    request = current_request()
    assert request is not None
    return get_current_user(), request.user_id


def test_update_request_sets_the_user_every_reader_agrees_on():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(request_id)s %(user_id)s %(message)s"))
    handler.addFilter(ContextFilter())
    log = logging.getLogger("tests.update_request.agree")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    with request_context(request_id="r-1"):
        log.info("before login")
        request = update_request(user_id="ada")
        assert request.user_id == "ada"
        assert _agree() == ("ada", "ada")
        log.info("after login")
    assert stream.getvalue().splitlines() == ["r-1 - before login", "r-1 ada after login"]


def test_update_request_is_undone_when_the_request_closes():
    with request_context(request_id="r-1", user_id="ada"):
        with request_context(request_id="r-2"):
            update_request(user_id="bob", plan="pro")
            assert _agree() == ("bob", "bob")
        assert _agree() == ("ada", "ada")
        request = current_request()
        assert request is not None
        assert dict(request.extra) == {}
    assert current_request() is None
    assert get_current_user() is None


def test_update_request_merges_extras_and_keeps_the_user_and_id():
    with request_context(request_id="r-1", user_id="ada", region="eu"):
        first = update_request(plan="pro")
        second = update_request(region="us")
        assert first.user_id == "ada"
        assert dict(first.extra) == {"region": "eu", "plan": "pro"}
        assert dict(second.extra) == {"region": "us", "plan": "pro"}
        assert get_request_id() == "r-1"
        assert current_request() == second
        with pytest.raises(TypeError):
            second.extra["plan"] = "free"  # type: ignore[index]


def test_update_request_to_no_user():
    with request_context(request_id="r-1", user_id="ada"):
        update_request(user_id=None)
        assert _agree() == (None, None)


def test_update_request_outside_a_request_says_where_requests_open():
    with pytest.raises(NoRequestError, match=r"with request_context\(\.\.\.\)") as caught:
        update_request(user_id="ada")
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, ContextualError)
    assert get_current_user() is None
    assert REQUEST_STORE["user_id"] is None


def test_update_request_in_pooled_work_stays_there():
    with request_context(request_id="r-1", user_id="ada"), ContextExecutor(1) as pool:
        inside = pool.submit(lambda: (update_request(user_id="bob"), _agree())[1]).result()
        assert inside == ("bob", "bob")
        assert _agree() == ("ada", "ada")


def test_update_request_in_a_child_task_stays_there():
    async def main() -> tuple[object, object]:
        with request_context(request_id="r-1", user_id="ada"):
            child = await asyncio.create_task(_child())
            assert child == ("bob", "bob")
            return _agree()

    async def _child() -> tuple[object, object]:
        update_request(user_id="bob")
        return _agree()

    assert asyncio.run(main()) == ("ada", "ada")


def test_work_handed_over_before_the_update_keeps_the_old_user():
    with request_context(request_id="r-1", user_id="ada"):
        snapshot = capture()
        update_request(user_id="bob")
        assert snapshot.run(_agree) == ("ada", "ada")
        assert capture().run(_agree) == ("bob", "bob")


# -- Deferred: a user looked up on first read ---------------------------------------


class _Lookup:
    """Counts its calls; returns the user it was made with."""

    def __init__(self, user: object) -> None:
        self.user = user
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.user


def test_a_deferred_user_is_looked_up_only_when_read_and_once():
    lookup = _Lookup("ada")
    with open_request("r-1", Deferred(lookup)):
        assert lookup.calls == 0
        assert get_current_user() == "ada"
        assert _agree() == ("ada", "ada")
        assert lookup.calls == 1
    assert lookup.calls == 1


def test_a_request_that_never_reads_its_deferred_user_never_looks_it_up():
    lookup = _Lookup("ada")
    with open_request("r-1", Deferred(lookup)):
        assert get_request_id() == "r-1"
    assert lookup.calls == 0


def test_a_deferred_user_is_read_by_the_log_filter():
    lookup = _Lookup("ada")
    record = logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)
    with open_request("r-1", Deferred(lookup)):
        ContextFilter().filter(record)
    assert (record.request_id, record.user_id) == ("r-1", "ada")


def test_a_deferred_user_travels_as_the_user_itself():
    with open_request("r-1", Deferred(_Lookup("ada"))):
        data = capture().to_dict()
        request = current_request()
        raw = REQUEST_STORE["request"]
    assert data["stores"]["contextual.request"]["user_id"] == "ada"
    assert request is not None
    assert pickle.loads(pickle.dumps(raw)) == request  # noqa: S301 (our own bytes)
    assert pickle.loads(pickle.dumps(Deferred(_Lookup("bob")))) == "bob"  # noqa: S301


class _WatchedLock:
    """An RLock that tells, by an Event, when a second thread starts to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: int | None = None
        self.waiting = threading.Event()

    def __enter__(self) -> None:
        if self._owner is not None and self._owner != threading.get_ident():
            self.waiting.set()
        self._lock.acquire()
        self._owner = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()


def test_threads_reading_a_deferred_user_at_once_look_it_up_once():
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(threading.get_ident())
        started.set()
        assert release.wait(10)
        return "ada"

    user = Deferred(slow)
    watched = _WatchedLock()
    user._lock = watched  # type: ignore[assignment]
    seen: list[object] = []

    def read() -> None:
        seen.append(user.get())

    first = threading.Thread(target=read)
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=read)
    second.start()
    assert watched.waiting.wait(10)  # the second reader waits for the first's lookup
    release.set()
    first.join(10)
    second.join(10)
    assert seen == ["ada", "ada"]
    assert len(calls) == 1
    assert repr(user) == "<Deferred user: 'ada'>"


def test_a_read_from_inside_the_lookup_sees_no_user_instead_of_recursing():
    inner: list[object] = []

    def lookup() -> str:
        inner.append(get_current_user())  # the lookup's own log line, say
        return "ada"

    with open_request("r-1", Deferred(lookup)):
        assert get_current_user() == "ada"
    assert inner == [None]


def test_a_failing_lookup_raises_to_the_reader_runs_again_and_never_fails_a_log_line():
    calls = []

    def lookup() -> str:
        calls.append(1)
        if len(calls) == 1:
            msg = "database down"
            raise OSError(msg)
        return "ada"

    user = Deferred(lookup)
    assert repr(user) == "<Deferred user: pending>"
    record = logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)
    with open_request("r-1", user):
        ContextFilter().filter(record)
        assert record.user_id == "-"
        assert get_current_user() == "ada"
    assert len(calls) == 2
    assert resolved(user) == "ada"
    assert resolved("bob") == "bob"


@pytest.mark.parametrize(
    "make",
    [
        ContextFilter,
        lambda: ContextFilter(defaults={"tenant": "-"}),
        lambda: ContextFilter(["contextual.request"]),
        lambda: ContextFilter(sources=[dict]),
    ],
    ids=["request fields", "with defaults", "request store", "with a source"],
)
def test_every_path_of_the_filter_reads_a_deferred_user(make):
    record = logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)
    with open_request("r-1", Deferred(_Lookup("ada"))):
        make().filter(record)
    assert (record.request_id, record.user_id) == ("r-1", "ada")


def test_structlog_and_loguru_read_a_deferred_user():
    event: dict[str, object] = {}
    with open_request("r-1", Deferred(_Lookup("ada"))):
        add_context()(None, "info", event)
        record: dict[str, object] = {"extra": {}}
        patch_context(["contextual.request"])(record)
    assert event == {"request_id": "r-1", "user_id": "ada"}
    assert record["extra"] == {"request_id": "r-1", "user_id": "ada"}


def test_a_deferred_user_is_looked_up_to_send_it_only_when_it_is_allowed_to_travel():
    lookup = _Lookup("ada")
    with open_request("r-1", Deferred(lookup)):
        headers: dict[str, str] = {}
        inject(headers)
        assert lookup.calls == 0
        assert "baggage" not in headers
        inject(headers, allow={"contextual.request": ["user_id"]})
        assert lookup.calls == 1
    assert headers["baggage"] == "contextual.request|user_id=ada"


def test_a_failing_deferred_user_never_fails_a_send_nor_a_pool_payload():
    def lookup() -> str:
        msg = "database down"
        raise OSError(msg)

    with open_request("r-1", Deferred(lookup)):
        headers: dict[str, str] = {}
        inject(headers, allow={"contextual.request": ["user_id"]})
        data = capture().to_dict()
        raw = REQUEST_STORE["request"]
    assert headers == {"X-Request-ID": "r-1"}
    assert data["stores"]["contextual.request"]["user_id"] is None
    assert pickle.loads(pickle.dumps(raw)).user_id is None  # noqa: S301 (our own bytes)


@pytest.mark.parametrize("refused", ["request_id", "extra"])
def test_update_request_refuses_a_new_id_or_an_extra_mapping(refused):
    with request_context(request_id="r-1"):
        with pytest.raises(TypeError, match=rf"doesn't take {refused}=.*nested request_context"):
            update_request(**{refused: "r-2"})
        assert get_request_id() == "r-1"
        request = current_request()
        assert request is not None
        assert dict(request.extra) == {}
