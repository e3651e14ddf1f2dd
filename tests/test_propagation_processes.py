"""Snapshot.to_dict/from_dict and ContextProcessPoolExecutor: stores cross processes by name."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import threading

import pytest

import _process_support as support
from contextual import ContextProcessPoolExecutor, Snapshot, capture
from contextual._executors import _run_from_dict

START_METHODS = [
    m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()
]


@pytest.fixture(autouse=True)
def _clean_support_stores():
    yield
    for store in (support.request, support.connection, support.local_only):
        store.clear()


def test_to_dict_has_every_propagating_store_by_name():
    support.request["user"] = "ada"
    support.connection["dsn"] = "db://1"
    support.local_only["conn"] = "not sent"
    data = capture().to_dict()
    assert data["format"] == 1
    assert data["stores"]["tests.process.request"] == {"user": "ada"}
    assert data["stores"]["tests.process.connection"] == {"dsn": "db://1"}
    assert "tests.process.local" not in data["stores"]
    assert pickle.loads(pickle.dumps(data)) == data  # noqa: S301 (our own data)


def test_from_dict_rebuilds_a_snapshot_that_applies_by_name(run_in_new_thread):
    support.request["user"] = "ada"
    support.connection["dsn"] = "db://1"
    data = capture().to_dict()
    support.request["user"] = "changed"
    rebuilt = Snapshot.from_dict(data)
    seen = run_in_new_thread(lambda: rebuilt.run(support.look))
    assert seen["request"] == {"user": "ada"}
    assert seen["connection"] == {"dsn": "db://1"}


def test_from_dict_with_an_unknown_store_applies_nothing():
    data = {"format": 1, "stores": {"tests.process.request": {"user": "x"}, "nowhere.store": {}}}
    with pytest.raises(LookupError, match=r"no live store is named 'nowhere\.store'.*import time"):
        Snapshot.from_dict(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([("stores", {})], "got list"),
        ({"stores": {}}, "got format None"),
        ({"format": 99, "stores": {}}, "got format 99"),
        ({"format": 1, "stores": []}, "'stores' is list"),
        ({"format": 1, "stores": {"a": 1}}, "got the entry 'a': 1"),
        ({"format": 1, "stores": {3: {}}}, "got the entry 3"),
        ({"format": 1, "stores": {"a": {1: "x"}}}, "non-str key"),
    ],
)
def test_from_dict_refuses_malformed_data(data, match):
    with pytest.raises(TypeError, match=match):
        Snapshot.from_dict(data)


def test_unpicklable_value_is_named_at_capture_time():
    support.request["user"] = "ada"
    support.connection["lock"] = threading.Lock()
    with pytest.raises(
        TypeError, match=r"store 'tests\.process\.connection' key 'lock' holds a lock"
    ):
        capture().to_dict()


@pytest.mark.parametrize("method", START_METHODS)
def test_child_process_sees_the_caller_s_stores(method):
    support.request["user"] = f"ada via {method}"
    support.connection["dsn"] = "db://primary"
    support.local_only["conn"] = "stays here"
    context = multiprocessing.get_context(method)
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        seen = pool.submit(support.look).result(timeout=60)
    assert seen["request"] == {"user": f"ada via {method}"}
    assert seen["connection"] == {"dsn": "db://primary"}
    assert seen["local_only"] == ({"conn": "stays here"} if method == "fork" else {})


@pytest.mark.parametrize("method", START_METHODS)
def test_nothing_leaks_between_tasks_in_a_worker_process(method):
    context = multiprocessing.get_context(method)
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        results = []
        for i in range(6):
            support.request["user"] = f"user-{i}"
            results.append(pool.submit(support.write_then_look, f"task-{i}").result(timeout=60))
    pids = {r["pid"] for r in results}
    assert len(pids) == 1
    for i, seen in enumerate(results):
        assert seen["request"] == {"user": f"user-{i}"}
        assert seen["connection"] == {}
    # propagate=False stores belong to the worker: they keep what it wrote.
    assert [r["local_only"] for r in results[1:]] == [{"left_by": f"task-{i}"} for i in range(5)]


def test_unpicklable_value_fails_at_submit_and_sends_nothing():
    context = multiprocessing.get_context(START_METHODS[0])
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        support.connection["lock"] = threading.Lock()
        with pytest.raises(
            TypeError, match=r"'tests\.process\.connection' key 'lock'.*propagate=False"
        ):
            pool.submit(support.look)
        del support.connection["lock"]
        support.request["user"] = "after the error"
        seen = pool.submit(support.look).result(timeout=60)
    assert seen["request"] == {"user": "after the error"}


def test_map_carries_the_stores():
    support.request["user"] = "mapper"
    context = multiprocessing.get_context(START_METHODS[0])
    with ContextProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        results = list(pool.map(support.write_then_look, ["a", "b", "c"], timeout=60))
    assert [r["request"] for r in results] == [{"user": "mapper"}] * 3


def test_a_snapshot_with_context_stores_only_runs_functions_and_coroutines():
    support.request["user"] = "caller"
    data = {"format": 1, "stores": {"tests.process.request": {"user": "from data"}}}
    rebuilt = Snapshot.from_dict(data)
    assert "thread stores []" in repr(rebuilt)
    assert rebuilt.run(support.request.get, "user") == "from data"

    @rebuilt.wrap
    async def read() -> object:
        return support.request.get("user")

    assert asyncio.run(read()) == "from data"
    assert support.request["user"] == "caller"


def test_to_dict_skips_a_factory_store_that_never_ran(make_store):
    calls = []
    store = make_store("context", defaults=lambda: calls.append(1) or {"n": 1})
    data = capture().to_dict()
    assert store.name not in data["stores"]
    assert calls == []
    assert store["n"] == 1
    assert capture().to_dict()["stores"][store.name] == {"n": 1}


def test_the_worker_entry_point_applies_the_data_and_puts_everything_back():
    support.request["user"] = "worker's own"
    data = {"format": 1, "stores": {"tests.process.request": {"user": "sent"}}}
    assert _run_from_dict(data, support.request.get, "user") == "sent"
    assert support.request["user"] == "worker's own"
