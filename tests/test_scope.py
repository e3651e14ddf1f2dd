"""store.scope(): set values for a block or a call, and always restore."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from contextual import ContextualError, ScopeError, StoreScope


def test_scope_sets_values_inside_and_restores_outside(store):
    store["user"] = "outer"
    with store.scope(user="inner", role="admin") as inside:
        assert inside is store
        assert dict(store) == {"user": "inner", "role": "admin"}
    assert dict(store) == {"user": "outer"}


def test_scope_returns_a_store_scope(store):
    assert isinstance(store.scope(a=1), StoreScope)
    assert "idle" in repr(store.scope(a=1))


def test_scope_undoes_every_change_made_inside(store):
    store.update(keep=1, removed_inside=2, changed_inside=3)
    with store.scope(scoped="x"):
        store["added_inside"] = 4
        del store["removed_inside"]
        store["changed_inside"] = 30
        store.keep = 10
    assert dict(store) == {"keep": 1, "removed_inside": 2, "changed_inside": 3}


def test_clear_inside_a_scope_is_undone(make_store, backend):
    store = make_store(backend, defaults={"d": 0})
    store["a"] = 1
    with store.scope(b=2):
        store.clear()
        assert dict(store) == {}
    assert dict(store) == {"d": 0, "a": 1}


def test_nested_scopes_restore_each_level(store):
    store["level"] = 0
    with store.scope(level=1, one=True):
        with store.scope(level=2, two=True):
            store["inner_write"] = True
            assert store.snapshot() == {"level": 2, "one": True, "two": True, "inner_write": True}
        assert dict(store) == {"level": 1, "one": True}
        with store.scope(level=3):
            assert store["level"] == 3
        assert dict(store) == {"level": 1, "one": True}
    assert dict(store) == {"level": 0}


def test_scope_restores_when_the_block_raises(store):
    store["user"] = "outer"

    def fail() -> None:
        with store.scope(user="inner"):
            store["extra"] = 1
            raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        fail()
    assert dict(store) == {"user": "outer"}


def test_scope_does_not_swallow_exceptions_of_nested_levels(store):
    with pytest.raises(ValueError, match="inner"), store.scope(a=1), store.scope(b=2):
        raise ValueError("inner")
    assert dict(store) == {}


def test_empty_scope_still_restores(store):
    store["a"] = 1
    with store.scope():
        store["a"] = 2
        store["b"] = 3
    assert dict(store) == {"a": 1}


def test_scope_keys_are_invisible_to_attribute_names_restrictions(store):
    # Keyword names become keys, even ones reserved for attribute access.
    with store.scope(get="g", name="n"):
        assert store["get"] == "g"
        assert store["name"] == "n"
        assert store.name != "n"
    assert "get" not in store


def test_a_scope_object_can_be_reused_after_it_exits(store):
    scope = store.scope(a=1)
    with scope:
        assert store["a"] == 1
    with scope:
        assert store["a"] == 1
    assert "a" not in store


def test_entering_an_active_scope_again_is_refused(store):
    scope = store.scope(a=1)
    with scope:
        with pytest.raises(ScopeError, match="already active"):
            scope.__enter__()
        assert "active" in repr(scope)
        assert store["a"] == 1
    assert "a" not in store


def test_exiting_a_scope_that_was_not_entered_is_refused(store):
    scope = store.scope(a=1)
    with pytest.raises(ScopeError, match="exited without being entered"):
        scope.__exit__(None, None, None)
    assert isinstance(ScopeError("x"), (ContextualError, RuntimeError))


def test_async_with(store):
    async def main() -> tuple[object, object]:
        async with store.scope(user="async") as inside:
            during = inside["user"]
        return during, store.get("user")

    assert asyncio.run(main()) == ("async", None)


# -- decorator ----------------------------------------------------------------


def test_decorates_a_function(store):
    @store.scope(job="report")
    def run(arg: int) -> tuple[int, object]:
        """Doc of run."""
        store["inside_only"] = True
        return arg, store["job"]

    assert run(7) == (7, "report")
    assert run.__name__ == "run"
    assert run.__doc__ == "Doc of run."
    assert dict(store) == {}


def test_decorated_function_restores_when_it_raises(store):
    @store.scope(job="report")
    def run() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        run()
    assert dict(store) == {}


def test_decorates_a_coroutine_function(store):
    @store.scope(job="async")
    async def run() -> object:
        await asyncio.sleep(0)
        return store["job"]

    assert asyncio.iscoroutinefunction(run)

    async def main() -> tuple[object, object]:
        return await run(), store.get("job")

    assert asyncio.run(main()) == ("async", None)


def test_decorated_function_is_safe_in_concurrent_threads(make_store, backend):
    store = make_store(backend)
    count = 6
    barrier = threading.Barrier(count)
    seen: dict[int, object] = {}

    @store.scope(shared="decorated")
    def work(i: int) -> None:
        store["i"] = i
        barrier.wait(timeout=10)  # every call is inside its scope at once
        seen[i] = (store["shared"], store["i"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {i: ("decorated", i) for i in range(count)}


def test_decorated_coroutines_run_concurrently_in_one_loop(make_store):
    store = make_store("context")

    @store.scope(kind="task")
    async def work(i: int, gate: asyncio.Event) -> tuple[int, object]:
        store["i"] = i
        await gate.wait()
        return i, store["i"]

    async def main() -> list[tuple[int, object]]:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(work(i, gate)) for i in range(4)]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [(i, i) for i in range(4)]


def test_decorating_a_generator_function_is_refused(store):
    def gen():  # pragma: no cover - never called
        yield 1

    async def agen():  # pragma: no cover - never called
        yield 1

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="can't decorate the generator function"):
            store.scope(a=1)(fn)


def test_decorating_a_non_callable_is_refused(store):
    with pytest.raises(TypeError, match="decorates functions, got int"):
        store.scope(a=1)(5)  # type: ignore[type-var]


# -- exits that run somewhere else --------------------------------------------


def test_async_generator_closed_by_another_task_restores_by_value(make_store):
    store = make_store("context")
    seen = {}

    async def agen():
        with store.scope(user="generator"):
            yield store["user"]
            yield "never reached"  # pragma: no cover

    async def closer(gen) -> None:
        seen["closer.before"] = dict(store)
        await gen.aclose()
        seen["closer.after"] = dict(store)

    async def main() -> None:
        gen = agen()
        seen["first"] = await gen.__anext__()
        await asyncio.create_task(closer(gen))

    asyncio.run(main())
    assert seen == {
        "first": "generator",
        # The closer task was created while the generator's scope was open
        # in main, so it inherited the scope's value; closing the generator
        # from there undoes it there, without a token error.
        "closer.before": {"user": "generator"},
        "closer.after": {},
    }


def test_exit_in_another_context_leaves_unrelated_values_alone(make_store):
    store = make_store("context")
    store["user"] = "outer"
    scope = store.scope(user="scoped", extra=1)
    entered = contextvars.copy_context()
    entered.run(scope.__enter__)
    assert entered.run(lambda: dict(store)) == {"user": "scoped", "extra": 1}

    other = contextvars.copy_context()

    def exit_elsewhere() -> object:
        store["user"] = "someone else"
        store["extra"] = 1  # the very object the scope set: small ints are shared
        scope.__exit__(None, None, None)
        return dict(store)

    # "user" holds another value here, so it is left alone; "extra" holds
    # the very object the scope set, so it is undone.
    assert other.run(exit_elsewhere) == {"user": "someone else"}
    assert dict(store) == {"user": "outer"}


def test_generator_closed_in_another_thread_restores_by_value(make_store):
    store = make_store("thread")
    marker = object()

    def gen():
        with store.scope(owner=marker):
            yield store["owner"]
            yield "never reached"  # pragma: no cover

    kept, reverted = gen(), gen()
    assert next(reverted) is marker  # entered first: its entry state is empty
    assert next(kept) is marker
    seen = {}

    def close_here() -> None:
        store["owner"] = "the other thread's own value"
        kept.close()
        seen["other value"] = dict(store)
        store["owner"] = marker
        reverted.close()
        seen["same object"] = dict(store)

    thread = threading.Thread(target=close_here)
    thread.start()
    thread.join()
    assert seen == {
        # Another value is left alone; the very object the scope set is undone.
        "other value": {"owner": "the other thread's own value"},
        "same object": {},
    }
    # The entering thread is out of reach of a close that ran elsewhere.
    assert store["owner"] is marker


def test_scope_exit_with_a_never_written_context_and_factory_defaults(make_store):
    calls = []
    store = make_store("context", defaults=lambda: calls.append(1) or {"d": "default"})

    def inside() -> object:
        with store.scope(a=1):
            assert dict(store) == {"d": "default", "a": 1}
        return dict(store)

    assert contextvars.copy_context().run(inside) == {"d": "default"}
    assert calls == [1]


def test_exit_elsewhere_puts_back_the_entry_values_of_every_key_it_owns(make_store):
    store = make_store("context")
    store["user"] = "outer"
    user, role = object(), object()
    scope = store.scope(user=user, role=role)
    contextvars.copy_context().run(scope.__enter__)

    def exit_elsewhere() -> object:
        store.update(user=user, role=role, other="kept")
        scope.__exit__(None, None, None)
        return dict(store)

    assert contextvars.copy_context().run(exit_elsewhere) == {"user": "outer", "other": "kept"}
