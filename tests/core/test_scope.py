"""store.scope(): set values for a block or a call, and always restore."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import gc
import pickle
import threading
import weakref

import pytest

from contextual import ContextStore, ContextualError, ScopeError, StoreScope


def test_scope_sets_values_inside_and_restores_outside(store):
    store["user"] = "outer"
    with store.scope(user="inner", role="admin") as inside:
        assert inside is store
        assert dict(store) == {"user": "inner", "role": "admin"}
    assert dict(store) == {"user": "outer"}


def test_store_scope_is_made_by_the_store_only(store):
    with pytest.raises(TypeError, match=r"store\.scope"):
        StoreScope()


def test_scope_returns_a_store_scope(store):
    scope = store.scope(b=2, a=1)
    assert isinstance(scope, StoreScope)
    assert repr(scope) == f"<StoreScope of {store!r} keys=['a', 'b']>"


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


def test_scope_takes_keys_that_name_store_members_in_a_mapping(store):
    # By item, any str key is a key; store.name stays the store's name.
    with store.scope({"get": "g", "name": "n"}, other=1):
        assert store["get"] == "g"
        assert store["name"] == "n"
        assert store["other"] == 1
        assert store.name != "n"
    assert "get" not in store
    assert "other" not in store


@pytest.mark.parametrize("member", ["name", "get", "items", "scope", "backend", "__class__"])
def test_a_scope_keyword_that_names_a_store_member_is_refused(store, member):
    with pytest.raises(
        TypeError, match=rf"keyword '{member}' names .* store\.scope\(\{{'{member}': \.\.\.\}}\)"
    ):
        store.scope(**{member: "x"})
    assert member not in store


def test_scope_refuses_a_mapping_with_a_non_str_key(store):
    with pytest.raises(TypeError, match=r"non-str key 1"):
        store.scope({1: "x"})


def test_a_scope_object_can_be_reused_after_it_exits(store):
    scope = store.scope(a=1)
    with scope:
        assert store["a"] == 1
    with scope:
        assert store["a"] == 1
    assert "a" not in store


def test_a_scope_object_can_be_entered_again_while_active(store):
    scope = store.scope(level="inner")
    store["level"] = "outer"
    with scope:
        store["written"] = 1
        with scope:
            assert store["level"] == "inner"
            store["level"] = "changed"
        assert dict(store) == {"level": "inner", "written": 1}
    assert dict(store) == {"level": "outer"}


def test_one_scope_object_shared_by_concurrent_threads(make_store, backend):
    store = make_store(backend)
    shared = store.scope(role="admin")
    count = 6
    barrier = threading.Barrier(count)
    seen: dict[int, object] = {}

    def work(i: int) -> None:
        store["i"] = i
        with shared:
            store["inside"] = i
            barrier.wait(timeout=10)  # every thread is inside the same scope object
            seen[i] = dict(store)
        seen[-i - 1] = dict(store)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(count):
        assert seen[i] == {"i": i, "role": "admin", "inside": i}
        assert seen[-i - 1] == {"i": i}


def test_exiting_a_scope_that_was_not_entered_is_refused(store):
    scope = store.scope(a=1)
    store["kept"] = True
    with pytest.raises(ScopeError, match="exited without being entered"):
        scope.__exit__(None, None, None)
    assert dict(store) == {"kept": True}


def test_scope_error_is_a_runtime_error_and_a_contextual_error():
    assert issubclass(ScopeError, RuntimeError)
    assert issubclass(ScopeError, ContextualError)


def test_a_second_exit_is_harmless(store):
    scope = store.scope(a=1)
    with scope:
        pass
    store["after"] = 1
    scope.__exit__(None, None, None)
    assert dict(store) == {"after": 1}


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


def test_interleaved_decorated_coroutines_leave_a_thread_store_clean(make_store):
    # On a "thread" store, coroutines on one loop share values while they
    # overlap (that is threading.local); when they end in the other order
    # than they started, nothing of either may stay behind.
    store = make_store("thread")
    store["request"] = None
    first_in, second_in, first_may_end = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @store.scope(request="A")
    async def handle_a() -> None:
        first_in.set()
        await first_may_end.wait()

    @store.scope(request="B")
    async def handle_b() -> object:
        await first_in.wait()
        second_in.set()
        first_may_end.set()
        await asyncio.sleep(0)  # handle_a ends while this scope is still open
        await asyncio.sleep(0)
        return store["request"]

    async def main() -> object:
        _, seen_by_b = await asyncio.gather(handle_a(), handle_b())
        return seen_by_b

    assert asyncio.run(main()) == "B"
    assert dict(store) == {"request": None}


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


def test_decorates_an_object_with_an_async_call(store):
    class Handler:
        async def __call__(self) -> object:
            await asyncio.sleep(0)
            return store["job"]

    handler = store.scope(job="callable")(Handler())
    assert asyncio.run(handler()) == "callable"
    assert "job" not in store


def test_a_sync_function_returning_a_coroutine_is_refused_with_advice(store):
    async def body() -> object:  # pragma: no cover - closed before it runs
        return store["job"]

    @store.scope(job="lost")
    def wrapper() -> object:
        return body()

    with pytest.raises(TypeError, match=r"returned a coroutine.*Decorate the 'async def'"):
        wrapper()
    assert "job" not in store


# -- exits that run somewhere else --------------------------------------------


def test_async_generator_closed_by_another_task_that_inherited_the_scope(make_store):
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
        seen["main.after"] = dict(store)

    asyncio.run(main())
    assert seen == {
        "first": "generator",
        # The closer task was created while the generator's scope was open
        # in main, so it inherited the scope, and closing the generator there
        # undoes it there, without a token error...
        "closer.before": {"user": "generator"},
        "closer.after": {},
        # ...but no exit elsewhere can reach main's context: like a plain
        # ContextVar, main keeps the value of a generator that never ended
        # in it.
        "main.after": {"user": "generator"},
    }


def test_exit_in_an_unrelated_context_changes_nothing_there(make_store):
    store = make_store("context")
    store["user"] = "outer"
    unrelated = contextvars.copy_context()  # taken before the scope existed
    entered = contextvars.copy_context()
    scope = store.scope(user="scoped", extra=1)
    entered.run(scope.__enter__)
    assert entered.run(lambda: dict(store)) == {"user": "scoped", "extra": 1}

    def exit_elsewhere() -> object:
        store.update(user="scoped", extra=1)  # equal values, but this context's own
        scope.__exit__(None, None, None)
        return dict(store)

    assert unrelated.run(exit_elsewhere) == {"user": "scoped", "extra": 1}
    assert entered.run(lambda: dict(store)) == {"user": "scoped", "extra": 1}
    assert dict(store) == {"user": "outer"}


def test_generator_closed_in_another_thread_changes_nothing_there(make_store, backend):
    store = make_store(backend)
    store["user_id"] = 42

    def gen():
        with store.scope(user_id=0):
            yield store["user_id"]
            yield "never reached"  # pragma: no cover

    running = gen()
    assert next(running) == 0
    seen = {}

    def close_here() -> None:
        store["user_id"] = 0  # the very object the scope set: small ints are shared
        running.close()
        seen["other"] = dict(store)

    thread = threading.Thread(target=close_here)
    thread.start()
    thread.join()
    # The other thread never saw the scope: it keeps its own value, and
    # never receives the entering thread's 42.
    assert seen == {"other": {"user_id": 0}}
    # The entering thread is out of reach of a close that ran elsewhere.
    assert store["user_id"] == 0


@pytest.mark.parametrize("order", ["first-in-first-out", "last-in-first-out"])
def test_generators_closed_in_either_order_leave_nothing_behind(store, order):
    store["base"] = "kept"

    def holding(**values):
        with store.scope(**values):
            store[f"written_by_{next(iter(values))}"] = True
            yield
            yield  # pragma: no cover

    one, two = holding(a=1), holding(b=2)
    next(one)
    next(two)
    assert dict(store) == {
        "base": "kept",
        "a": 1,
        "written_by_a": True,
        "b": 2,
        "written_by_b": True,
    }
    first, second = (one, two) if order == "first-in-first-out" else (two, one)
    first.close()
    remaining = {"a": 1, "written_by_a": True} if first is two else {"b": 2, "written_by_b": True}
    assert dict(store) == {"base": "kept", **remaining}
    second.close()
    assert dict(store) == {"base": "kept"}


def test_out_of_order_exit_keeps_what_later_scopes_changed(store):
    store.update(user="outer", lang="en")
    outer = store.scope(user="a", role="reader")
    middle = store.scope(role="writer")
    inner = store.scope(user="c")
    outer.__enter__()
    store["lang"] = "fr"  # written inside outer only
    middle.__enter__()
    store["note"] = "middle"
    inner.__enter__()
    assert dict(store) == {"user": "c", "lang": "fr", "role": "writer", "note": "middle"}

    outer.__exit__(None, None, None)
    # outer's own changes are gone; middle's and inner's stay.
    assert dict(store) == {"user": "c", "lang": "en", "role": "writer", "note": "middle"}
    inner.__exit__(None, None, None)
    # inner restores its entry state, now without outer's user="a".
    assert dict(store) == {"user": "outer", "lang": "en", "role": "writer", "note": "middle"}
    middle.__exit__(None, None, None)
    assert dict(store) == {"user": "outer", "lang": "en"}


def test_out_of_order_exit_restores_keys_deleted_inside(store):
    store.update(a=1, b=2)
    outer, inner = store.scope(), store.scope(c=3)
    outer.__enter__()
    del store["a"]
    inner.__enter__()
    outer.__exit__(None, None, None)
    assert dict(store) == {"b": 2, "c": 3, "a": 1}
    inner.__exit__(None, None, None)
    assert dict(store) == {"a": 1, "b": 2}


def test_scope_exit_with_a_never_written_context_and_factory_defaults(make_store):
    calls = []
    store = make_store("context", defaults=lambda: calls.append(1) or {"d": "default"})

    def inside() -> object:
        with store.scope(a=1):
            assert dict(store) == {"d": "default", "a": 1}
        return dict(store)

    assert contextvars.copy_context().run(inside) == {"d": "default"}
    assert calls == [1]


def test_exit_in_a_context_that_inherited_the_scope_restores_its_entry_state(make_store):
    store = make_store("context")
    store["user"] = "outer"
    scope = store.scope(user="scoped", role="admin")
    entered = contextvars.copy_context()
    entered.run(scope.__enter__)
    child = entered.run(contextvars.copy_context)

    def exit_in_child() -> object:
        store["written_in_child"] = True  # inside the inherited scope
        scope.__exit__(None, None, None)
        return dict(store)

    assert child.run(exit_in_child) == {"user": "outer"}
    assert entered.run(lambda: dict(store)) == {"user": "scoped", "role": "admin"}


def test_a_key_named_self_can_be_scoped(store):
    with store.scope(self="value"):
        assert store["self"] == "value"
    assert "self" not in store


def test_interleaved_calls_of_a_scope_decorated_coroutine_each_undo_their_own(make_store):
    # Two calls of one decorated coroutine function on one thread's
    # "thread" store: their entries interleave, and each call's exit must
    # undo that call's entry, not the other's.
    store = make_store("thread", defaults={"user": None})
    a_wrote, b_wrote, a_exited = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen = {}

    @store.scope(user="x")
    async def call(name: str) -> None:
        store[name] = name
        if name == "a":
            a_wrote.set()
            await b_wrote.wait()
        else:
            b_wrote.set()
            await a_exited.wait()
            seen["b at its end"] = dict(store)

    async def main() -> None:
        first = asyncio.create_task(call("a"))
        await a_wrote.wait()
        second = asyncio.create_task(call("b"))
        await first
        a_exited.set()
        await second

    asyncio.run(main())
    assert seen["b at its end"] == {"user": "x", "b": "b"}
    assert dict(store) == {"user": None}


def test_a_snapshot_taken_inside_a_scope_does_not_keep_the_store_alive(unique_name):
    store = ContextStore(unique_name)
    with store.scope(k=1):
        snapshot = contextvars.copy_context()
    ref = weakref.ref(store)
    del store
    gc.collect()
    assert ref() is None
    assert snapshot is not None


def test_values_inside_a_scope_pickle_and_copy_as_plain_dicts(store):
    with store.scope(k=1):
        pickled = pickle.loads(pickle.dumps(store.snapshot().copy()))  # noqa: S301 (our own data)
        for made in (pickled, copy.copy(store._get())):
            assert made == {"k": 1}
            assert type(made) is dict
