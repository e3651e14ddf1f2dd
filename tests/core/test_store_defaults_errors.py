"""A defaults factory that raises: the error names its store wherever it surfaces.

One broken store must not look like a bug of whatever read it. A
``propagate=True`` ``"thread"`` store is read by every capture(), so its
broken factory stops every submit, thread start and to_thread in the thread
that captures; the error has to say which store, and the process must work
again once that store is gone.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import pickle
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest

import contextual
from contextual import (
    ContextExecutor,
    ContextProcessPoolExecutor,
    ContextStore,
    ContextThread,
    Snapshot,
    StoreDefaultsError,
    capture,
)
from support import process as support

START_METHOD = next(
    m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()
)


def _divide_by_zero() -> dict[str, object]:
    return {"ratio": 1 / 0}


class Broken:
    """Holds the only reference to a store whose defaults factory raises."""

    def __init__(self, name: str, backend: str, factory: Callable[[], object]) -> None:
        self.name = name
        self.store: ContextStore | None = ContextStore(
            name,
            backend=backend,  # type: ignore[arg-type]
            defaults=factory,  # type: ignore[arg-type]
        )

    def drop(self) -> None:
        """Let the store go, and check that nothing else kept it alive."""
        ref = weakref.ref(self.store)
        self.store = None
        gc.collect()
        assert ref() is None


@pytest.fixture
def break_store(unique_name: str) -> Iterator[Callable[..., Broken]]:
    made: list[Broken] = []

    def make(backend: str = "thread", factory: Callable[[], object] = _divide_by_zero) -> Broken:
        made.append(Broken(f"{unique_name}.{len(made)}", backend, factory))
        return made[-1]

    yield make
    for broken in made:
        broken.store = None
    gc.collect()


@pytest.fixture(autouse=True)
def _clean_support_stores() -> Iterator[None]:
    yield
    for store in (support.request, support.connection, support.local_only):
        store.clear()


def _refusal(call: Callable[[], object]) -> tuple[str, BaseException | None]:
    """Return the message and the cause of the StoreDefaultsError that ``call`` raises.

    The error itself is dropped here: its traceback holds the frames that
    held the store, and the tests check that the store can be collected.
    """
    with pytest.raises(StoreDefaultsError) as info:
        call()
    return str(info.value), info.value.__cause__


def _assert_names(broken: Broken, message: str, cause: BaseException | None) -> None:
    assert f"store {broken.name!r}" in message
    assert "ZeroDivisionError: division by zero" in message
    assert "Fix the factory" in message
    assert isinstance(cause, ZeroDivisionError)


def test_first_read_names_the_store_and_chains_the_factory_s_error(break_store, backend):
    broken = break_store(backend)
    store = broken.store
    assert store is not None
    _assert_names(broken, *_refusal(lambda: store["ratio"]))


def test_a_factory_s_lookup_error_never_reads_as_a_missing_key(break_store, backend):
    def missing_setting() -> dict[str, object]:
        raise KeyError("SETTING")

    def missing_attribute() -> dict[str, object]:
        raise AttributeError("settings")

    for factory in (missing_setting, missing_attribute):
        store = break_store(backend, factory).store
        # Unwrapped, the KeyError would read as "no such key", and the
        # AttributeError would make getattr() return its default.
        _, cause = _refusal(lambda: store.get("x"))  # noqa: B023 (called at once)
        assert isinstance(cause, (KeyError, AttributeError))
        _refusal(lambda: getattr(store, "x", None))  # noqa: B023 (called at once)
        _refusal(lambda: hasattr(store, "x"))  # noqa: B023 (called at once)


def test_a_base_exception_from_the_factory_passes_through_unwrapped(break_store, backend):
    class Stop(BaseException):
        pass

    def stop() -> dict[str, object]:
        raise Stop

    store = break_store(backend, stop).store
    with pytest.raises(Stop):
        store.get("x")


def test_capture_names_a_broken_thread_store_until_it_is_gone(break_store, make_store):
    healthy = make_store("thread")
    healthy["k"] = "v"
    broken = break_store()
    _assert_names(broken, *_refusal(capture))
    broken.drop()
    assert capture().run(healthy.get, "k") == "v"


def test_capture_never_runs_a_context_store_s_factory(break_store):
    # Capturing copies the Context; the factory runs on the first read in
    # the work, and raises there.
    broken = break_store("context")
    snapshot = capture()
    store = broken.store
    assert store is not None
    _assert_names(broken, *_refusal(lambda: snapshot.run(store.get, "ratio")))


def test_context_executor_submit_names_the_store_and_queues_nothing(break_store, make_store):
    healthy = make_store("thread")
    healthy["k"] = "submitted"
    ran: list[object] = []
    with ContextExecutor(max_workers=1) as pool:
        broken = break_store()
        _assert_names(broken, *_refusal(lambda: pool.submit(ran.append, "refused")))
        _assert_names(broken, *_refusal(lambda: pool.map(ran.append, ["refused"])))
        broken.drop()
        assert pool.submit(healthy.get, "k").result(timeout=10) == "submitted"
    assert ran == []


def test_context_thread_start_names_the_store_and_can_start_later(break_store, make_store):
    healthy = make_store("thread")
    healthy["k"] = "starter's"
    seen: list[object] = []
    thread = ContextThread(target=lambda: seen.append(healthy.get("k")))
    broken = break_store()
    _assert_names(broken, *_refusal(thread.start))
    assert not thread.is_alive()
    assert "run" not in vars(thread)
    broken.drop()
    # The refused start left the thread unstarted: this start carries the context.
    thread.start()
    thread.join()
    assert seen == ["starter's"]


def test_to_thread_names_the_store(break_store, make_store):
    healthy = make_store("thread")
    healthy["k"] = "caller's"
    ran: list[object] = []

    async def main() -> object:
        return await contextual.to_thread(healthy.get, "k")

    broken = break_store()
    _assert_names(broken, *_refusal(lambda: asyncio.run(contextual.to_thread(ran.append, 1))))
    broken.drop()
    assert asyncio.run(main()) == "caller's"
    assert ran == []


def test_process_pool_submit_names_the_store_and_sends_nothing(break_store):
    context = multiprocessing.get_context(START_METHOD)
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        first = pool.submit(support.write_then_look, "first").result(timeout=60)
        broken = break_store()
        _assert_names(broken, *_refusal(lambda: pool.submit(support.write_then_look, "refused")))
        broken.drop()
        support.request["user"] = "after the error"
        after = pool.submit(support.write_then_look, "after").result(timeout=60)
    assert after["pid"] == first["pid"]
    assert after["request"] == {"user": "after the error"}
    # The worker's own store holds what the last task that ran there wrote.
    assert after["local_only"] == {"left_by": "first"}


def test_from_dict_leaves_a_broken_thread_store_to_fail_where_it_is_read(break_store):
    data = {"format": 1, "stores": {}}
    broken = break_store()
    # The snapshot starts the store fresh: its factory runs, and fails, only
    # where work in the snapshot reads it.
    rebuilt = Snapshot.from_dict(data)
    _assert_names(broken, *_refusal(lambda: rebuilt.run(len, broken.store)))
    broken.drop()
    assert Snapshot.from_dict(data).run(support.connection.get, "k", "fresh") == "fresh"


def test_to_dict_leaves_out_a_context_store_whose_factory_never_ran(break_store):
    # Its factory never ran in the captured Context, so to_dict() has
    # nothing of it to send and doesn't run it: the receiver's defaults serve.
    broken = break_store("context")
    data = capture().to_dict()
    assert broken.name not in data["stores"]


def test_a_retried_factory_that_succeeds_clears_the_error(break_store, backend):
    attempts: list[int] = []

    def flaky() -> dict[str, object]:
        attempts.append(1)
        if len(attempts) == 1:
            return _divide_by_zero()
        return {"ratio": 2}

    store = break_store(backend, flaky).store
    _refusal(lambda: store["ratio"])
    assert store["ratio"] == 2


def test_the_error_survives_pickling_back_from_a_worker_process():
    error = StoreDefaultsError("the defaults() factory of store 'x' raised ...")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own data)
    assert type(copy) is StoreDefaultsError
    assert str(copy) == str(error)


def test_a_thread_with_a_broken_store_does_not_break_other_threads(break_store):
    # The factory runs per thread: a thread where it succeeded captures fine.
    ready, go = threading.Event(), threading.Event()
    results: list[object] = []

    def only_in_worker_thread() -> dict[str, object]:
        if threading.current_thread().name != "healthy":
            return _divide_by_zero()
        return {}

    broken = break_store("thread", only_in_worker_thread)

    def worker() -> None:
        store = broken.store
        assert store is not None
        results.append(dict(store))
        ready.set()
        go.wait(timeout=10)
        results.append(capture().run(store.get, "ratio", "no ratio"))

    thread = threading.Thread(target=worker, name="healthy")
    thread.start()
    assert ready.wait(timeout=10)
    _refusal(capture)
    go.set()
    thread.join()
    assert results == [{}, "no ratio"]
