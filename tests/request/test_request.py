"""request_context(): one request's ID and user, for a block, a call, its tasks and its workers."""

from __future__ import annotations

import asyncio
import pickle
import re
import threading

import pytest

from contextual import (
    ContextExecutor,
    RequestContext,
    ScopeError,
    current_request,
    get_current_user,
    get_request_id,
    new_request_id,
    request_context,
)
from contextual.testing import empty_stores


def test_outside_any_request_everything_is_none():
    assert current_request() is None
    assert get_request_id() is None
    assert get_current_user() is None


def test_request_context_sets_and_restores():
    with request_context(request_id="r-1", user_id="ada", tenant="t1") as request:
        assert request == RequestContext("r-1", "ada", {"tenant": "t1"})
        assert current_request() is request
        assert get_request_id() == "r-1"
        assert get_current_user() == "ada"
        assert request.extra["tenant"] == "t1"
    assert current_request() is None


def test_a_request_id_is_generated_when_none_is_given():
    with request_context() as first, request_context() as second:
        pass
    assert re.fullmatch(r"[0-9a-f]{32}", first.request_id)
    assert first.request_id != second.request_id
    assert re.fullmatch(r"[0-9a-f]{32}", new_request_id())


def test_the_request_is_frozen_and_its_extra_read_only():
    with request_context(request_id="r", flag=True) as request:
        with pytest.raises(AttributeError):
            request.request_id = "other"  # type: ignore[misc]
        with pytest.raises(TypeError):
            request.extra["flag"] = False  # type: ignore[index]


def test_nesting_restores_the_outer_request_also_on_error():
    seen = []

    def inner() -> None:
        with request_context(request_id="inner"):
            seen.append((get_request_id(), get_current_user()))
            raise KeyError("boom")

    with request_context(request_id="outer", user_id="ada"):
        with pytest.raises(KeyError):
            inner()
        assert seen == [("inner", None)]
        assert get_request_id() == "outer"
        assert get_current_user() == "ada"
    assert get_request_id() is None


def test_as_a_decorator_every_call_opens_its_own_request():
    @request_context(user_id="cron")
    def job() -> tuple[str | None, object]:
        return get_request_id(), get_current_user()

    (first_id, user), (second_id, _) = job(), job()
    assert user == "cron"
    assert first_id != second_id
    assert get_request_id() is None


def test_as_a_decorator_of_coroutine_functions():
    @request_context(request_id="fixed")
    async def handle() -> str | None:
        await asyncio.sleep(0)
        return get_request_id()

    async def main() -> list[str | None]:
        return list(await asyncio.gather(handle(), handle()))

    assert asyncio.run(main()) == ["fixed", "fixed"]


def test_async_with_and_concurrent_tasks_keep_their_own_request():
    async def handle(i: int) -> tuple[str | None, str | None]:
        async with request_context(request_id=f"r-{i}"):
            await asyncio.sleep(0)
            inner = await asyncio.create_task(_read_id())
            return get_request_id(), inner

    async def main() -> list[tuple[str | None, str | None]]:
        return list(await asyncio.gather(*(handle(i) for i in range(5))))

    assert asyncio.run(main()) == [(f"r-{i}", f"r-{i}") for i in range(5)]


async def _read_id() -> str | None:
    return get_request_id()


def test_the_request_follows_work_into_a_context_executor():
    with ContextExecutor(max_workers=2) as pool, request_context(request_id="r-pool", user_id="u"):
        assert pool.submit(lambda: (get_request_id(), get_current_user())).result() == (
            "r-pool",
            "u",
        )


def test_a_new_thread_does_not_see_the_request(run_in_new_thread):
    with request_context(request_id="r-main"):
        assert run_in_new_thread(get_request_id) is None


def test_the_request_pickles_for_other_processes():
    with request_context(request_id="r-p", user_id=7, tags=["a"]) as request:
        copy = pickle.loads(pickle.dumps(request))  # noqa: S301 (our own data)
    assert copy == request
    assert copy.extra == {"tags": ["a"]}


@pytest.mark.parametrize("bad", ["", 42, b"r-1"])
def test_a_bad_request_id_is_refused(bad):
    with pytest.raises(TypeError, match="request_id must be a non-empty str"):
        request_context(request_id=bad)


def test_one_object_serves_one_block_at_a_time():
    opened = request_context(request_id="r")
    with opened:
        with pytest.raises(ScopeError, match="already open"):
            opened.__enter__()
        assert get_request_id() == "r"
    with pytest.raises(ScopeError, match="without being entered"):
        opened.__exit__(None, None, None)


def test_getters_survive_an_emptied_request_store():
    with empty_stores():
        assert current_request() is None
        assert get_request_id() is None
        assert get_current_user() is None


def test_concurrent_threads_each_see_their_own_request():
    count = 6
    barrier = threading.Barrier(count)
    seen: dict[int, object] = {}

    def handle(i: int) -> None:
        with request_context(request_id=f"t-{i}", user_id=i):
            barrier.wait(timeout=10)
            seen[i] = (get_request_id(), get_current_user())

    threads = [threading.Thread(target=handle, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {i: (f"t-{i}", i) for i in range(count)}


def test_decorating_generator_functions_is_refused():
    def gen():  # pragma: no cover - never called
        yield 1

    async def agen():  # pragma: no cover - never called
        yield 1

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="can't decorate the generator function"):
            request_context()(fn)


def test_decorating_an_object_with_an_async_call():
    class Handler:
        async def __call__(self) -> str | None:
            await asyncio.sleep(0)
            return get_request_id()

    assert asyncio.run(request_context(request_id="r-obj")(Handler())()) == "r-obj"
