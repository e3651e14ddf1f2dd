"""capture() and Snapshot: carry context into other work, and leave nothing behind."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import pickle
import threading
import types
import weakref
from collections.abc import Generator

import pytest

from contextual import ContextStore, Snapshot, capture

foreign = contextvars.ContextVar("tests.foreign", default="unset")


def test_a_snapshot_carries_both_backends_and_foreign_context_vars(make_store, run_in_new_thread):
    ctx_store = make_store("context")
    thread_store = make_store("thread")
    ctx_store["user"] = "ada"
    thread_store["conn"] = "conn-1"
    token = foreign.set("other library")
    try:
        snapshot = capture()
    finally:
        foreign.reset(token)

    def look() -> tuple[object, object, object]:
        return ctx_store.get("user"), thread_store.get("conn"), foreign.get()

    assert run_in_new_thread(lambda: snapshot.run(look)) == ("ada", "conn-1", "other library")
    assert run_in_new_thread(look) == (None, None, "unset")


def test_the_snapshot_is_taken_at_capture_time(make_store, run_in_new_thread):
    store = make_store("thread")
    store["v"] = "at capture"
    snapshot = capture()
    store["v"] = "later"
    assert run_in_new_thread(lambda: snapshot.run(store.get, "v")) == "at capture"


def test_run_passes_arguments_and_returns_the_result(make_store):
    store = make_store()
    store["base"] = 10
    snapshot = capture()
    assert snapshot.run(lambda a, *, b: store["base"] + a + b, 1, b=2) == 13


def test_run_restores_the_running_thread_exactly(make_store, backend):
    store = make_store(backend)
    store["k"] = "captured"
    snapshot = capture()
    store["k"] = "thread's own"
    store["extra"] = 1
    token = foreign.set("running")

    def work() -> None:
        assert store["k"] == "captured"
        store["k"] = "written by the run"
        store["new"] = True
        foreign.set("changed by the run")

    snapshot.run(work)
    assert dict(store) == {"k": "thread's own", "extra": 1}
    assert foreign.get() == "running"
    foreign.reset(token)


def test_run_restores_the_thread_when_the_work_raises(make_store, backend):
    store = make_store(backend)
    snapshot = capture()
    store["k"] = "before"

    def fail() -> None:
        store["k"] = "inside"
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        snapshot.run(fail)
    assert dict(store) == {"k": "before"}


def test_runs_start_from_the_snapshot_not_from_earlier_runs(make_store, backend):
    store = make_store(backend)
    store["n"] = 0
    snapshot = capture()

    def bump() -> object:
        store["n"] += 1
        return store["n"]

    assert [snapshot.run(bump) for _ in range(3)] == [1, 1, 1]


def test_concurrent_runs_of_one_snapshot_never_see_each_other(make_store, backend):
    store = make_store(backend)
    store["owner"] = "caller"
    snapshot = capture()
    count = 8
    barrier = threading.Barrier(count)
    seen: dict[int, object] = {}

    def work(i: int) -> None:
        seen[-i - 1] = store["owner"]
        store["owner"] = i
        barrier.wait(timeout=10)  # every run has written before any reads back
        seen[i] = store["owner"]

    threads = [threading.Thread(target=snapshot.run, args=(work, i)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {**{i: i for i in range(count)}, **{-i - 1: "caller" for i in range(count)}}
    assert store["owner"] == "caller"


def test_two_snapshots_run_at_once_never_see_each_other(make_store, backend):
    store = make_store(backend)
    store["who"] = "first"
    first = capture()
    store["who"] = "second"
    second = capture()
    barrier = threading.Barrier(2)
    seen: dict[str, list[object]] = {"first": [], "second": []}

    def work(name: str) -> None:
        seen[name].append(store["who"])
        store["written_by"] = name
        barrier.wait(timeout=10)
        seen[name].append(store["written_by"])

    threads = [
        threading.Thread(target=first.run, args=(work, "first")),
        threading.Thread(target=second.run, args=(work, "second")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"first": ["first", "first"], "second": ["second", "second"]}


def test_propagate_false_stores_never_travel(make_store, backend, run_in_new_thread):
    local = make_store(backend, propagate=False, defaults={"conn": None})
    travels = make_store(backend)
    local["conn"] = "this thread's connection"
    travels["user"] = "ada"
    snapshot = capture()
    assert run_in_new_thread(lambda: snapshot.run(lambda: (local["conn"], travels["user"]))) == (
        None,
        "ada",
    )
    # In the capturing thread itself the store keeps its value around a run.
    assert snapshot.run(lambda: travels["user"]) == "ada"
    assert local["conn"] == "this thread's connection"


def test_propagate_false_context_store_with_a_factory_starts_fresh(make_store, run_in_new_thread):
    calls = []
    local = make_store(
        "context", propagate=False, defaults=lambda: calls.append(1) or {"n": len(calls)}
    )
    assert local["n"] == 1
    local["n"] = "mine"
    snapshot = capture()
    assert run_in_new_thread(lambda: snapshot.run(local.__getitem__, "n")) == 2
    assert local["n"] == "mine"


def test_propagate_false_thread_store_keeps_the_running_thread_s_values(make_store):
    local = make_store("thread", propagate=False)
    local["conn"] = "caller's"
    snapshot = capture()
    result: list[object] = []

    def worker() -> None:
        local["conn"] = "worker's"
        result.append(snapshot.run(local.get, "conn"))
        result.append(local["conn"])

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert result == ["worker's", "worker's"]


def test_scope_values_travel_and_the_snapshot_outlives_the_scope(
    make_store, backend, run_in_new_thread
):
    store = make_store(backend)
    with store.scope(request_id="r-1"):
        snapshot = capture()
    assert "request_id" not in store
    assert run_in_new_thread(lambda: snapshot.run(store.get, "request_id")) == "r-1"


def test_wrap_runs_a_function_in_the_snapshot(make_store, run_in_new_thread):
    store = make_store("thread")
    store["user"] = "ada"

    def read(suffix: str) -> str:
        """Read the user."""
        return f"{store['user']}{suffix}"

    wrapped = capture().wrap(read)
    assert wrapped.__name__ == "read"
    assert wrapped.__doc__ == "Read the user."
    assert run_in_new_thread(lambda: wrapped("!")) == "ada!"


def test_wrapped_coroutine_runs_in_the_snapshot_at_every_step(make_store):
    ctx_store = make_store("context")
    thread_store = make_store("thread")
    ctx_store["user"] = "captured"
    thread_store["conn"] = "captured"
    snapshot = capture()
    ctx_store["user"] = "caller"
    thread_store["conn"] = "caller"

    @snapshot.wrap
    async def job(gate: asyncio.Event) -> list[object]:
        seen = [ctx_store["user"], thread_store["conn"]]
        thread_store["conn"] = "written by the job"
        await gate.wait()
        seen += [ctx_store["user"], thread_store["conn"]]
        return seen

    async def other(gate: asyncio.Event, seen: list[object]) -> None:
        # Runs on the same loop thread while the job is suspended.
        seen.append(thread_store["conn"])
        gate.set()

    async def main() -> tuple[list[object], list[object], object]:
        gate = asyncio.Event()
        seen_by_other: list[object] = []
        job_task = asyncio.create_task(job(gate))
        await asyncio.sleep(0)
        await other(gate, seen_by_other)
        return await job_task, seen_by_other, thread_store["conn"]

    assert asyncio.iscoroutinefunction(job)
    seen_by_job, seen_by_other, after = asyncio.run(main())
    assert seen_by_job == ["captured", "captured", "captured", "written by the job"]
    assert seen_by_other == ["caller"]
    assert after == "caller"


def test_wrapped_coroutine_gets_exceptions_and_cancellation(make_store):
    store = make_store("context")
    store["v"] = 1
    snapshot = capture()

    @snapshot.wrap
    async def fails() -> None:
        await asyncio.sleep(0)
        raise KeyError(store["v"])

    @snapshot.wrap
    async def waits_forever(started: asyncio.Event, seen: list[object]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(store["v"])
            raise

    async def main() -> list[object]:
        with pytest.raises(KeyError):
            await fails()
        started, seen = asyncio.Event(), []
        task = asyncio.create_task(waits_forever(started, seen))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(main()) == [1]


def test_wrapped_coroutine_closed_early_runs_its_cleanup_in_the_snapshot(make_store):
    store = make_store("context")
    store["v"] = "captured"
    snapshot = capture()
    seen: list[object] = []

    @types.coroutine
    def suspend() -> Generator[str, None, None]:
        yield "suspended"

    @snapshot.wrap
    async def job() -> None:
        try:
            await suspend()
        finally:
            seen.append(store.get("v"))

    coro = job()
    assert coro.send(None) == "suspended"  # the first step, driven by hand
    store["v"] = "changed"
    coro.close()
    assert seen == ["captured"]


def test_snapshot_cannot_be_made_directly_or_pickled(make_store):
    with pytest.raises(TypeError, match="capture"):
        Snapshot()
    with pytest.raises(TypeError, match="to_dict"):
        pickle.dumps(capture())


def test_repr_names_the_thread_stores(make_store):
    store = make_store("thread", name="repr.thread.store")
    assert "repr.thread.store" in repr(capture())
    del store


def test_a_snapshot_keeps_values_alive_only_while_it_lives(make_store):
    class Payload:
        pass

    store = make_store("thread")
    value = Payload()
    ref = weakref.ref(value)
    store["payload"] = value
    snapshot = capture()
    del store["payload"], value
    gc.collect()
    assert ref() is not None
    del snapshot
    gc.collect()
    assert ref() is None


def test_wrap_an_object_with_an_async_call(make_store):
    store = make_store("context")
    store["v"] = "captured"
    snapshot = capture()
    store["v"] = "caller"

    class Handler:
        async def __call__(self) -> object:
            await asyncio.sleep(0)
            return store["v"]

    assert asyncio.run(snapshot.wrap(Handler())()) == "captured"


def test_wrap_a_function_that_returns_a_coroutine(make_store):
    store = make_store("context")
    store["v"] = "captured"
    snapshot = capture()
    store["v"] = "caller"

    async def body() -> object:
        await asyncio.sleep(0)
        return store["v"]

    def returns_coroutine() -> object:
        return body()

    assert asyncio.run(snapshot.wrap(returns_coroutine)()) == "captured"  # type: ignore[arg-type]


def test_wrap_refuses_async_generator_functions():
    async def agen():  # pragma: no cover - never iterated
        yield 1

    with pytest.raises(TypeError, match="async generator function"):
        capture().wrap(agen)


def test_a_cancelled_wrapped_coroutine_is_freed_without_the_collector(make_store):
    store = make_store("thread")
    store["v"] = 1
    snapshot = capture()

    class Payload:
        pass

    refs: list[weakref.ref[Payload]] = []

    @snapshot.wrap
    async def waits() -> None:
        payload = Payload()
        refs.append(weakref.ref(payload))
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(waits())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    gc.collect()
    gc.disable()
    try:
        asyncio.run(main())
        assert refs[0]() is None
    finally:
        gc.enable()


def test_nested_wrapped_coroutines_each_see_their_own_snapshot(make_store):
    store = make_store("context")
    store["v"] = "outer"
    outer = capture()
    store["v"] = "inner"
    inner = capture()

    @inner.wrap
    async def read_inner() -> object:
        await asyncio.sleep(0)
        return store["v"]

    @outer.wrap
    async def read_both() -> tuple[object, object, object]:
        before = store["v"]
        middle = await read_inner()
        return before, middle, store["v"]

    assert asyncio.run(read_both()) == ("outer", "inner", "outer")


def test_wrapped_coroutine_under_a_timeout(make_store):
    store = make_store("context")
    store["v"] = "captured"
    snapshot = capture()
    seen: list[object] = []

    @snapshot.wrap
    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            seen.append(store["v"])

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), timeout=0.01)

    asyncio.run(main())
    assert seen == ["captured"]


def test_capture_skips_stores_that_died_since_the_registry_last_looked(unique_name):
    for backend, propagate in (("context", False), ("thread", True)):
        store = ContextStore(f"{unique_name}.{backend}", backend=backend, propagate=propagate)  # type: ignore[arg-type]
        del store  # freed at once; the registry sweeps it on its next locked call
        assert unique_name not in repr(capture())
