"""Backend "thread": values belong to the OS thread and die with it."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from contextual import ContextStore


class Payload:
    """A value that can be weakly referenced, to watch when it is freed."""


def test_other_threads_never_see_values_while_the_owner_is_alive(make_store):
    store = make_store("thread")
    written = threading.Event()
    checked = threading.Event()
    seen: dict[str, object] = {}

    def owner() -> None:
        store["secret"] = "owner"
        written.set()
        seen["owner in order"] = checked.wait(timeout=10)
        seen["owner"] = dict(store)

    def other() -> None:
        seen["other in order"] = written.wait(timeout=10)
        seen["other"] = dict(store)
        store["secret"] = "other"
        checked.set()

    threads = [threading.Thread(target=owner), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {
        "owner in order": True,
        "other in order": True,
        "owner": {"secret": "owner"},
        "other": {},
    }
    assert dict(store) == {}


def test_many_threads_each_keep_their_own_value(make_store):
    store = make_store("thread")
    count = 8
    barrier = threading.Barrier(count)
    seen: dict[int, object] = {}

    def worker(i: int) -> None:
        store["i"] = i
        barrier.wait(timeout=10)  # everybody has written
        seen[i] = store["i"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {i: i for i in range(count)}


def test_tasks_on_one_thread_share_the_values(make_store):
    store = make_store("thread")

    async def writer() -> None:
        store["v"] = "from task"

    async def main() -> object:
        await asyncio.create_task(writer())
        return store["v"]

    assert asyncio.run(main()) == "from task"


def test_values_are_freed_when_the_thread_exits(make_store):
    store = make_store("thread")
    refs: list[weakref.ref[Payload]] = []

    def worker() -> None:
        value = Payload()
        refs.append(weakref.ref(value))
        store["payload"] = value

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    del thread
    gc.collect()
    assert refs[0]() is None
    assert "payload" not in store


def test_values_are_freed_when_the_store_is_dropped(unique_name):
    value = Payload()
    ref = weakref.ref(value)
    store = ContextStore(unique_name, backend="thread")
    store["payload"] = value
    del value, store
    gc.collect()
    assert ref() is None


def test_scope_values_are_freed_with_the_thread(make_store, run_in_new_thread):
    store = make_store("thread")
    refs: list[weakref.ref[Payload]] = []

    def worker() -> None:
        value = Payload()
        refs.append(weakref.ref(value))
        with store.scope(payload=value):
            pass
        store["again"] = value

    run_in_new_thread(worker)
    gc.collect()
    assert refs[0]() is None


def test_a_new_store_never_shows_a_dead_store_s_values(unique_name):
    # CPython reuses the memory of a freed object at once, so a new store
    # often gets the dead one's id(). Its values must not come back with it.
    ids = set()
    for attempt in range(200):
        store = ContextStore(f"{unique_name}.{attempt}", backend="thread")
        assert dict(store) == {}, f"attempt {attempt} saw a dead store's values"
        store["leftover"] = attempt
        ids.add(id(store))
        del store
    if len(ids) == 200:  # pragma: no cover - depends on the allocator
        pytest.skip("this interpreter never reused an id(), so there was nothing to see")


@contextmanager
def saving_garbage() -> Iterator[list[object]]:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        del gc.garbage[:]
        found: list[object] = []
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        del gc.garbage[:]


def _create_and_miss(backend: str, name: str) -> None:
    store = ContextStore(name, backend=backend)  # type: ignore[arg-type]
    # Plain try/except, not contextlib.suppress: the test is about what a
    # bare miss leaves behind, with nothing else on the stack.
    try:  # noqa: SIM105
        store["missing"]
    except KeyError:
        pass
    try:  # noqa: SIM105
        store.missing  # noqa: B018
    except AttributeError:
        pass
    store.get("missing")
    store["present"] = 1
    with store.scope(temp=2):
        pass


@pytest.mark.parametrize("backend", ["context", "thread"])
def test_creating_a_store_and_missing_a_key_leaves_no_cyclic_garbage(backend, unique_name):
    with saving_garbage() as garbage:
        _create_and_miss(backend, unique_name)
    assert garbage == []


@pytest.mark.parametrize("backend", ["context", "thread"])
def test_a_store_is_freed_by_reference_counting_alone(backend, unique_name):
    gc.disable()
    try:
        store = ContextStore(unique_name, backend=backend)  # type: ignore[arg-type]
        store["x"] = 1
        ref = weakref.ref(store)
        del store
        assert ref() is None
    finally:
        gc.enable()


def test_context_backend_values_live_as_long_as_their_context(make_store):
    store = make_store("context")
    value = Payload()
    ref = weakref.ref(value)
    ctx = contextvars.copy_context()
    ctx.run(store.__setitem__, "payload", value)
    del value
    gc.collect()
    assert ref() is not None  # the context still holds it
    assert "payload" not in store
    del ctx
    gc.collect()
    assert ref() is None


def test_scope_values_are_freed_after_the_scope_exits(store):
    value = Payload()
    ref = weakref.ref(value)
    scope = store.scope(payload=value)
    with scope:
        pass
    del value
    gc.collect()
    # The scope object keeps its own arguments, nothing else.
    assert ref() is not None
    del scope
    gc.collect()
    assert ref() is None
