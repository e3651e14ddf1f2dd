"""contextual.testing: helpers that users' own test suites rely on."""

from __future__ import annotations

import asyncio
import inspect
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from contextual import ContextualError
from contextual.testing import LeakError, empty_stores, no_leaks

# The pytester fixture: a test of a bare @no_leaks runs a real pytest on a
# small test file, since what broke was pytest's collection of it.
pytest_plugins = ["pytester"]


def test_no_leaks_passes_when_everything_is_put_back(make_store, backend):
    store = make_store(backend)
    store["kept"] = 1
    with no_leaks(), store.scope(temp=2):
        store["inside"] = 3


def test_no_leaks_names_the_store_and_the_keys(make_store, backend):
    store = make_store(backend, name=f"leaky.{backend}")
    store.update(rebound=1, removed=2, same=3)

    def leave_things_behind() -> None:
        with no_leaks(store):
            store["added"] = True
            store["rebound"] = "new"
            store["same"] = 3
            del store["removed"]

    with pytest.raises(LeakError) as info:
        leave_things_behind()
    message = str(info.value)
    assert f"'leaky.{backend}'" in message
    assert "added ['added'], removed ['removed'], rebound ['rebound']" in message
    assert "same" not in message
    assert isinstance(info.value, AssertionError)
    assert isinstance(info.value, ContextualError)


def test_no_leaks_checks_every_live_store_by_default(make_store):
    first, second = make_store("context"), make_store("thread")
    with pytest.raises(LeakError) as info, no_leaks():
        second["x"] = 1
    assert repr(second) in str(info.value)
    assert repr(first) not in str(info.value)


def test_no_leaks_lets_the_block_s_own_error_through(make_store):
    store = make_store()

    def fail() -> None:
        with no_leaks(store):
            store["leaked"] = True
            raise KeyError("original")

    with pytest.raises(KeyError, match="original"):
        fail()


def test_no_leaks_treats_an_equal_value_as_unchanged(make_store):
    store = make_store()
    store["ids"] = [1, 2]
    with no_leaks(store):
        store["ids"] = [1, 2]


def test_no_leaks_treats_a_value_that_cannot_compare_as_changed(make_store):
    class Ambiguous:
        def __eq__(self, other: object) -> bool:
            raise ValueError("ambiguous")

        __hash__ = object.__hash__

    store = make_store()
    store["v"] = Ambiguous()
    with pytest.raises(LeakError, match="rebound"), no_leaks(store):
        store["v"] = Ambiguous()


def test_no_leaks_finds_what_a_pooled_task_left_on_its_worker(make_store):
    store = make_store("thread")

    def leaky_task() -> None:
        store["request_id"] = "r-1"

    @no_leaks(store)
    def checked() -> None:
        leaky_task()

    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(LeakError, match="request_id"):
        pool.submit(checked).result()


def test_no_leaks_decorates_coroutine_functions(make_store):
    store = make_store()

    @no_leaks(store)
    async def handler() -> str:
        store["leaked"] = True
        await asyncio.sleep(0)
        return "done"

    @no_leaks(store)
    async def clean() -> str:
        async with no_leaks(store):
            return "clean"

    with pytest.raises(LeakError, match="leaked"):
        asyncio.run(handler())
    assert asyncio.run(clean()) == "clean"


def test_no_leaks_refuses_what_is_not_a_store():
    with pytest.raises(TypeError, match="expected ContextStore objects, got dict"), no_leaks({}):  # type: ignore[arg-type]
        pass  # pragma: no cover


def test_no_leaks_exit_without_entry_is_refused():
    with pytest.raises(RuntimeError, match="without being entered"):
        no_leaks().__exit__(None, None, None)


def test_empty_stores_empties_and_restores(make_store, backend):
    store = make_store(backend, defaults={"d": 0})
    other = make_store(backend)
    store["a"] = 1
    other["b"] = 2
    with empty_stores():
        assert dict(store) == {}
        assert dict(other) == {}
        store["inside"] = True
    assert dict(store) == {"d": 0, "a": 1}
    assert dict(other) == {"b": 2}


def test_empty_stores_restores_when_the_block_raises(make_store):
    store = make_store()
    store["a"] = 1
    with pytest.raises(ValueError, match="boom"), empty_stores(store):
        raise ValueError("boom")
    assert dict(store) == {"a": 1}


def test_one_no_leaks_object_serves_one_block_at_a_time(make_store):
    store = make_store()
    check = no_leaks(store)
    with check, pytest.raises(RuntimeError, match="already active"):
        check.__enter__()
    with check:  # and again afterwards
        pass


def test_empty_stores_decorates_functions_and_coroutine_functions(make_store):
    store = make_store()
    store["a"] = 1

    @empty_stores(store)
    def sync() -> dict[str, object]:
        return dict(store)

    @empty_stores(store)
    async def asynchronous() -> dict[str, object]:
        await asyncio.sleep(0)
        return dict(store)

    async def with_async_with() -> dict[str, object]:
        async with empty_stores(store):
            return dict(store)

    assert sync() == {}
    assert asyncio.run(asynchronous()) == {}
    assert asyncio.run(with_async_with()) == {}
    assert dict(store) == {"a": 1}


def test_helpers_refuse_to_decorate_generator_functions():
    def gen():  # pragma: no cover - never called
        yield 1

    for helper in (no_leaks(), empty_stores()):
        with pytest.raises(TypeError, match=r"\(\) can't decorate the generator function"):
            helper(gen)


# -- used bare, without parentheses ---------------------------------------------


def test_bare_no_leaks_returns_a_function_that_checks_every_call(make_store):
    store = make_store()

    @no_leaks
    def handler(value: str) -> str:
        store["left"] = value
        return value

    assert inspect.isfunction(handler)
    assert handler.__name__ == "handler"
    with pytest.raises(LeakError, match=r"added \['left'\]"):
        handler("behind")


def test_bare_no_leaks_decorates_coroutine_functions(make_store):
    store = make_store()

    @no_leaks
    async def clean() -> str:
        await asyncio.sleep(0)
        return "clean"

    @no_leaks
    async def leaky() -> None:
        store["left"] = "behind"

    assert inspect.iscoroutinefunction(clean)
    assert asyncio.run(clean()) == "clean"
    with pytest.raises(LeakError, match="left"):
        asyncio.run(leaky())


def test_bare_empty_stores_empties_every_store_for_each_call(make_store):
    store = make_store()
    store["a"] = 1

    @empty_stores
    def sync() -> dict[str, object]:
        return dict(store)

    @empty_stores
    async def asynchronous() -> dict[str, object]:
        return dict(store)

    assert sync() == {}
    assert asyncio.run(asynchronous()) == {}
    assert dict(store) == {"a": 1}


def test_one_store_given_is_a_store_to_check_not_a_function(make_store):
    store = make_store()
    check = no_leaks(store)
    assert isinstance(check, no_leaks)
    with pytest.raises(LeakError, match="x"), check:
        store["x"] = 1


def test_bare_no_leaks_refuses_generator_functions():
    def gen():  # pragma: no cover - never called
        yield 1

    with pytest.raises(TypeError, match=r"no_leaks\(\) can't decorate the generator function"):
        no_leaks(gen)


def test_pytest_runs_tests_decorated_with_bare_no_leaks(pytester):
    pytester.makepyfile(
        test_bare=textwrap.dedent(
            """
            import asyncio

            from contextual import ContextStore
            from contextual.testing import no_leaks

            store = ContextStore("pytester.bare")


            @no_leaks
            def test_sync(tmp_path):
                assert tmp_path.is_dir()  # fixtures still reach the test


            @no_leaks
            async def handle():
                await asyncio.sleep(0)
                return "handled"


            def test_async():
                assert asyncio.run(handle()) == "handled"


            @no_leaks
            def test_leaky():
                store["left"] = "behind"
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*LeakError: values were left behind:*"])
