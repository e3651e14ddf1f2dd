"""ContextExecutor, ContextThread, to_thread: context follows work into threads."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import random
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

from contextual import (
    ContextExecutor,
    ContextThread,
    capture,
    set_default_executor,
    to_thread,
)

foreign = contextvars.ContextVar("tests.threads.foreign", default=None)


def test_a_task_sees_what_the_caller_set_before_submit(make_store, backend):
    store = make_store(backend)
    store["user"] = "ada"
    token = foreign.set("lib value")
    try:
        with ContextExecutor(max_workers=1) as pool:
            assert pool.submit(lambda: (store.get("user"), foreign.get())).result() == (
                "ada",
                "lib value",
            )
    finally:
        foreign.reset(token)


def test_plain_pool_loses_the_context_and_keeps_leftovers(make_store, backend):
    # The problem this module removes, shown with the standard executor.
    store = make_store(backend)
    store["user"] = "ada"
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(store.get, "user").result() is None
        pool.submit(store.__setitem__, "leftover", "task 1").result()
        assert pool.submit(store.get, "leftover").result() == "task 1"


def test_no_task_sees_what_the_previous_task_on_its_worker_wrote(make_store, backend):
    store = make_store(backend)
    leaks: list[tuple[int, object]] = []

    def task(i: int) -> int:
        if store.get("written") is not None or store["i"] != i or foreign.get() is not None:
            leaks.append((i, dict(store)))
        store["written"] = i
        store["i"] = "overwritten"
        foreign.set(f"task {i}")
        return i

    with ContextExecutor(max_workers=1) as pool:
        futures = []
        for i in range(1000):
            store["i"] = i  # alternating values, set in the caller before each submit
            futures.append(pool.submit(task, i))
        assert [f.result() for f in futures] == list(range(1000))
    assert leaks == []
    assert store["i"] == 999
    assert "written" not in store
    assert foreign.get() is None


def test_map_runs_every_call_in_the_caller_s_context(make_store, backend):
    store = make_store(backend)
    store["factor"] = 3
    with ContextExecutor(max_workers=2) as pool:
        assert list(pool.map(lambda x: x * store["factor"], range(5))) == [0, 3, 6, 9, 12]


def test_submit_captures_at_call_time(make_store):
    store = make_store("context")
    release = threading.Event()
    with ContextExecutor(max_workers=1) as pool:
        blocker = pool.submit(release.wait, 10)
        store["v"] = "first"
        first = pool.submit(store.get, "v")
        store["v"] = "second"
        second = pool.submit(store.get, "v")
        release.set()
        assert blocker.result() is True
        assert (first.result(), second.result()) == ("first", "second")


@pytest.fixture
def threads_inherit_context(monkeypatch):
    """Make new threads run in a copy of their starter's context.

    That is what ``sys.flags.thread_inherit_context`` does on Python 3.14
    (the default on free-threaded builds); 3.10-3.13 start threads empty.
    """
    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        inherited = contextvars.copy_context()
        run = self.run

        def run_in_inherited() -> None:
            inherited.run(run)

        self.run = run_in_inherited  # type: ignore[method-assign]
        original_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)


def test_simulated_inheritance_shows_the_problem_with_a_plain_pool(
    make_store, threads_inherit_context
):
    store = make_store("context")
    with ThreadPoolExecutor(max_workers=1) as pool:
        with store.scope(request="spawning"):
            pool.submit(lambda: None).result()
        # The worker was started inside the scope, and keeps its context.
        assert pool.submit(store.get, "request").result() == "spawning"


def test_a_worker_started_inside_a_scope_does_not_keep_its_context(
    make_store, threads_inherit_context
):
    class Payload:
        pass

    store = make_store("context")
    payload = Payload()
    ref = weakref.ref(payload)
    initializer_saw: list[object] = []
    with ContextExecutor(
        max_workers=1, initializer=lambda: initializer_saw.append(store.get("request"))
    ) as pool:
        with store.scope(request="spawning", payload=payload):
            assert pool.submit(store.get, "request").result() == "spawning"
        del payload
        for i in range(5):
            with store.scope(request=f"later-{i}"):
                assert pool.submit(
                    lambda: (store.get("request"), store.get("payload"))
                ).result() == (
                    f"later-{i}",
                    None,
                )
        assert pool.submit(store.get, "request").result() is None
        gc.collect()
        # Nothing, not even the worker thread's own context, holds the
        # spawning submit's values any more.
        assert ref() is None
    assert initializer_saw == [None]


def test_stress_many_threads_random_nested_scopes(make_store):  # noqa: C901
    ctx_store = make_store("context")
    thread_store = make_store("thread")
    submitters, per_thread = 16, 2000
    barrier = threading.Barrier(submitters)
    mismatches: list[object] = []
    errors: list[BaseException] = []

    def observe() -> tuple[dict[str, object], dict[str, object]]:
        seen = (dict(ctx_store), dict(thread_store))
        # Leave something behind, to catch any leak into the next task.
        ctx_store["leak"] = True
        thread_store["leak"] = True
        return seen

    def submitter(n: int, pool: ContextExecutor) -> None:
        rng = random.Random(n)
        try:
            barrier.wait(timeout=30)
            pending = []
            for i in range(per_thread):
                depth = rng.randint(0, 3)
                scopes = [ctx_store.scope(**{f"c{d}": (n, i, d)}) for d in range(depth)]
                scopes += [
                    thread_store.scope(**{f"t{d}": (n, i, d)}) for d in range(rng.randint(0, 2))
                ]
                for scope in scopes:
                    scope.__enter__()
                expected = (dict(ctx_store), dict(thread_store))
                pending.append((expected, pool.submit(observe)))
                for scope in reversed(scopes):
                    scope.__exit__(None, None, None)
            for expected, future in pending:
                if future.result() != expected:
                    mismatches.append((expected, future.result()))
            if dict(ctx_store) or dict(thread_store):
                mismatches.append(("caller left with", dict(ctx_store), dict(thread_store)))
        except BaseException as exc:
            errors.append(exc)

    with ContextExecutor(max_workers=4) as pool:
        threads = [threading.Thread(target=submitter, args=(n, pool)) for n in range(submitters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert mismatches == []


# -- ContextThread ------------------------------------------------------------


def test_context_thread_carries_its_starter_s_context(make_store, backend):
    store = make_store(backend)
    store["user"] = "starter"
    seen: list[object] = []

    def target() -> None:
        seen.append(store.get("user"))
        store["user"] = "thread"

    thread = ContextThread(target=target)
    thread.start()
    thread.join()
    assert seen == ["starter"]
    assert store["user"] == "starter"


def test_context_thread_captures_at_start_not_at_construction(make_store):
    store = make_store("thread")
    seen: list[object] = []
    thread = ContextThread(target=lambda: seen.append(store.get("v")))
    store["v"] = "at start"
    thread.start()
    thread.join()
    assert seen == ["at start"]


def test_context_thread_subclass_run_override_is_carried_too(make_store):
    store = make_store("context")

    class Worker(ContextThread):
        def __init__(self) -> None:
            super().__init__()
            self.seen: object = None

        def run(self) -> None:
            self.seen = store.get("user")

    with store.scope(user="ada"):
        worker = Worker()
        worker.start()
    worker.join()
    assert worker.seen == "ada"
    assert "run" not in vars(worker)


def test_context_thread_cannot_start_twice(make_store):
    thread = ContextThread(target=lambda: None)
    thread.start()
    thread.join()
    with pytest.raises(RuntimeError, match="once"):
        thread.start()
    assert "run" not in vars(thread)


# -- asyncio --------------------------------------------------------------------


def test_to_thread_carries_both_backends(make_store):
    ctx_store = make_store("context")
    thread_store = make_store("thread")

    async def main() -> tuple[object, object, object]:
        ctx_store["user"] = "ada"
        thread_store["conn"] = "c1"
        result = await to_thread(
            lambda x: (ctx_store.get("user"), thread_store.get("conn"), x), "arg"
        )
        thread_store["conn"] = "c2"
        return result

    assert asyncio.run(main()) == ("ada", "c1", "arg")


def test_plain_asyncio_to_thread_loses_thread_stores(make_store):
    thread_store = make_store("thread")

    async def main() -> object:
        thread_store["conn"] = "c1"
        return await asyncio.to_thread(thread_store.get, "conn")

    assert asyncio.run(main()) is None


def test_propagating_default_executor_carries_both_backends(make_store):
    ctx_store = make_store("context")
    thread_store = make_store("thread")

    async def handle(i: int) -> tuple[object, object]:
        ctx_store["i"] = i
        thread_store["i"] = i
        loop = asyncio.get_running_loop()
        via_executor = await loop.run_in_executor(
            None, lambda: (ctx_store.get("i"), thread_store.get("i"))
        )
        via_to_thread = await asyncio.to_thread(lambda: (ctx_store.get("i"), thread_store.get("i")))
        assert via_executor == via_to_thread
        return via_executor

    async def main() -> list[tuple[object, object]]:
        executor = set_default_executor(max_workers=2)
        assert isinstance(executor, ContextExecutor)
        return [await handle(i) for i in range(3)]

    assert asyncio.run(main()) == [(0, 0), (1, 1), (2, 2)]


def test_set_default_executor_needs_a_loop():
    with pytest.raises(RuntimeError):
        set_default_executor()
    loop = asyncio.new_event_loop()
    try:
        executor = set_default_executor(loop, max_workers=1)
        assert loop.run_until_complete(loop.run_in_executor(None, lambda: 42)) == 42
        assert isinstance(executor, ContextExecutor)
    finally:
        loop.close()


def test_capture_inside_a_task_carries_that_task_s_values(make_store):
    store = make_store("context")

    async def child(i: int) -> object:
        store["task"] = i
        snapshot = capture()
        return await asyncio.to_thread(snapshot.run, store.get, "task")

    async def main() -> list[object]:
        return list(await asyncio.gather(*(child(i) for i in range(3))))

    assert asyncio.run(main()) == [0, 1, 2]


def test_a_second_start_leaves_the_running_thread_alone(make_store):
    store = make_store("context")
    store["v"] = "starter"
    entered, release = threading.Event(), threading.Event()
    seen: list[object] = []

    def target() -> None:
        entered.set()
        release.wait(timeout=10)
        seen.append(store.get("v"))

    thread = ContextThread(target=target)
    thread.start()
    assert entered.wait(timeout=10)
    with pytest.raises(RuntimeError, match="once"):
        thread.start()
    release.set()
    thread.join()
    assert seen == ["starter"]
    assert "run" not in vars(thread)


def test_a_start_that_fails_leaves_no_wrapper_behind(monkeypatch):
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    thread = ContextThread(target=lambda: None)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        thread.start()
    assert "run" not in vars(thread)
