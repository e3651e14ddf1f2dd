"""Backend "context": values follow contextvars semantics exactly."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading

import pytest


def test_tasks_each_see_their_own_values_and_the_parent_is_unchanged(make_store):
    store = make_store("context")
    seen: dict[str, object] = {}

    async def child(name: str, ready: asyncio.Barrier | None) -> None:
        seen[f"{name}.inherited"] = store["shared"]
        store["own"] = name
        store["shared"] = f"changed by {name}"
        # Every task has written before any reads back, so a shared dict
        # would show up as a foreign value here.
        await ready_wait(ready)
        seen[f"{name}.own"] = store["own"]
        seen[f"{name}.shared"] = store["shared"]

    async def main() -> None:
        store["shared"] = "parent"
        barrier = make_barrier(3)
        await asyncio.gather(*(child(n, barrier) for n in ("a", "b", "c")))
        seen["parent"] = dict(store)

    asyncio.run(main())
    for name in ("a", "b", "c"):
        assert seen[f"{name}.inherited"] == "parent"
        assert seen[f"{name}.own"] == name
        assert seen[f"{name}.shared"] == f"changed by {name}"
    assert seen["parent"] == {"shared": "parent"}


def make_barrier(parties: int) -> asyncio.Barrier | None:
    # asyncio.Barrier is 3.11+; on 3.10 an Event-based rendezvous does the same.
    if sys.version_info >= (3, 11):
        return asyncio.Barrier(parties)
    return _Rendezvous(parties)  # type: ignore[return-value]


class _Rendezvous:
    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.event.set()
        await self.event.wait()


async def ready_wait(barrier: asyncio.Barrier | None) -> None:
    assert barrier is not None
    await barrier.wait()


def test_child_delete_and_clear_do_not_reach_the_parent(make_store):
    store = make_store("context")
    seen = {}

    async def deleter() -> None:
        del store["user"]
        seen["deleter"] = dict(store)

    async def clearer() -> None:
        store.clear()
        seen["clearer"] = dict(store)

    async def main() -> None:
        store.update(user="ada", lang="en")
        await asyncio.create_task(deleter())
        await asyncio.create_task(clearer())
        seen["parent"] = dict(store)

    asyncio.run(main())
    assert seen == {
        "deleter": {"lang": "en"},
        "clearer": {},
        "parent": {"user": "ada", "lang": "en"},
    }


def test_parent_writes_after_task_creation_do_not_reach_the_task(make_store):
    store = make_store("context")
    seen = {}

    async def child(started: asyncio.Event, go: asyncio.Event) -> None:
        started.set()
        await go.wait()
        seen["child"] = store.get("v")

    async def main() -> None:
        store["v"] = "before"
        started, go = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(child(started, go))
        await started.wait()
        store["v"] = "after"
        go.set()
        await task

    asyncio.run(main())
    assert seen == {"child": "before"}


def test_attribute_writes_follow_tasks_too(make_store):
    store = make_store("context")

    async def child() -> str:
        store.user = "child"
        return str(store.user)

    async def main() -> tuple[str, object]:
        store.user = "parent"
        got = await asyncio.create_task(child())
        return got, store.user

    assert asyncio.run(main()) == ("child", "parent")


def test_context_run_isolates_writes(make_store):
    store = make_store("context")
    store["v"] = 1
    ctx = contextvars.copy_context()

    def inside() -> object:
        store["v"] = 2
        return store["v"]

    assert ctx.run(inside) == 2
    assert store["v"] == 1
    assert ctx.run(lambda: store["v"]) == 2


def test_snapshot_taken_in_a_task_is_that_task_s_values(make_store):
    store = make_store("context")

    async def child() -> object:
        store["v"] = "child"
        return store.snapshot()

    async def main() -> tuple[object, object]:
        store["v"] = "parent"
        snap = await asyncio.create_task(child())
        return dict(snap), store.snapshot()["v"]  # type: ignore[call-overload]

    assert asyncio.run(main()) == ({"v": "child"}, "parent")


@pytest.mark.skipif(
    bool(getattr(sys.flags, "thread_inherit_context", 0)),
    reason="this interpreter copies the starter's context into new threads",
)
def test_new_thread_starts_from_the_defaults(make_store):
    store = make_store("context", defaults={"user": None})
    store["user"] = "main"
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(store))
    thread.start()
    thread.join()
    assert seen == {"user": None}
    assert store["user"] == "main"


def test_callable_defaults_run_once_per_context(make_store):
    calls = []
    store = make_store("context", defaults=lambda: calls.append(1) or {"n": len(calls)})

    async def child() -> object:
        return store["n"]

    async def main() -> list[object]:
        # The parent never touched the store, so each task's context is
        # fresh and runs the factory once; repeated reads don't rerun it.
        results = await asyncio.gather(child(), child())
        return [*results, store["n"], store["n"]]

    results = asyncio.run(main())
    assert sorted(results[:2]) == [1, 2]
    assert results[2:] == [3, 3]
    assert len(calls) == 3


def test_callable_defaults_initialised_in_parent_are_inherited(make_store):
    calls = []
    store = make_store("context", defaults=lambda: calls.append(1) or {"n": len(calls)})

    async def main() -> list[object]:
        first = store["n"]
        inherited = await asyncio.create_task(_read(store, "n"))
        return [first, inherited]

    assert asyncio.run(main()) == [1, 1]
    assert len(calls) == 1


async def _read(store, key):
    return store[key]
