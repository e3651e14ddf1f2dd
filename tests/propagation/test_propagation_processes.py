"""Snapshot.to_dict/from_dict and ContextProcessPoolExecutor: stores cross processes by name."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import multiprocessing
import pickle
import threading

import pytest

from contextual import ContextProcessPoolExecutor, Snapshot, capture
from contextual._propagation.executors import _run_from_payload, _start_worker
from support import process as support

START_METHODS = [
    m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()
]


@pytest.fixture(autouse=True)
def _clean_support_stores():
    # Stores of earlier tests that only a reference cycle keeps alive would
    # travel too: collect them first.
    gc.collect()
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


def test_from_dict_can_ignore_unknown_stores():
    data = {"format": 1, "stores": {"tests.process.request": {"user": "x"}, "nowhere.store": {}}}
    rebuilt = Snapshot.from_dict(data, missing="ignore")
    assert rebuilt.run(support.request.get, "user") == "x"
    with pytest.raises(ValueError, match="missing must be 'raise' or 'ignore'"):
        Snapshot.from_dict(data, missing="skip")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([("stores", {})], "got list"),
        ({"stores": {}}, "got format None"),
        ({"format": 99, "stores": {}}, "got format 99"),
        ({"format": True, "stores": {}}, "got format True"),
        ({"format": 1, "stores": []}, "'stores' is list"),
        ({"format": 1, "stores": {"a": 1}}, "got the entry 'a': 1"),
        ({"format": 1, "stores": {3: {}}}, "got the entry 3"),
        ({"format": 1, "stores": {"a": {1: "x"}}}, "non-str key"),
    ],
)
def test_from_dict_refuses_malformed_data(data, match):
    with pytest.raises(TypeError, match=match):
        Snapshot.from_dict(data)


def test_to_dict_leaves_out_stores_that_hold_only_their_defaults(make_store, backend):
    untouched = make_store(backend, defaults={"user": None})
    written = make_store(backend, defaults={"user": None})
    written["user"] = None  # written, even if to the default value
    stores = capture().to_dict()["stores"]
    assert untouched.name not in stores
    assert stores[written.name] == {"user": None}


def test_to_dict_is_plain_data_and_leaves_pickling_to_the_sender():
    lock = threading.Lock()
    support.connection["lock"] = lock
    assert capture().to_dict()["stores"]["tests.process.connection"] == {"lock": lock}


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
    # Not even fork's copy of the parent's memory carries a propagate=False store.
    assert seen["local_only"] == {}


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


def test_from_dict_gives_unnamed_thread_stores_their_defaults_for_the_run(run_in_new_thread):
    support.connection["dsn"] = "the caller's"
    rebuilt = Snapshot.from_dict({"format": 1, "stores": {}})

    def write_then_look() -> dict[str, object]:
        support.connection["written"] = True
        return dict(support.connection)

    assert rebuilt.run(write_then_look) == {"written": True}
    assert dict(support.connection) == {"dsn": "the caller's"}


def test_to_dict_skips_a_factory_store_that_never_ran(make_store):
    calls = []
    store = make_store("context", defaults=lambda: calls.append(1) or {"n": 1})
    data = capture().to_dict()
    assert store.name not in data["stores"]
    assert calls == []
    assert store["n"] == 1
    assert calls == [1]
    # Once made here, the values are this context's, and travel like any.
    assert capture().to_dict()["stores"][store.name] == {"n": 1}


def test_the_worker_entry_point_applies_the_data_and_puts_everything_back():
    support.request["user"] = "worker's own"
    payload = {"tests.process.request": pickle.dumps({"user": "sent"})}
    assert _run_from_payload(payload, support.request.get, "user") == "sent"
    assert support.request["user"] == "worker's own"


def test_a_value_that_cannot_be_unpickled_in_the_worker_names_its_store():
    payload = {"tests.process.request": b"not a pickle"}
    with pytest.raises(TypeError, match=r"store 'tests\.process\.request' could not be unpickled"):
        _run_from_payload(payload, support.look)


def test_worker_start_resets_every_store_then_runs_the_initializer():
    support.request["user"] = "copied by fork"
    support.local_only["conn"] = "the parent's connection"
    seen = []
    _start_worker(lambda tag: seen.append((tag, support.look())), ("init",))
    assert seen[0][0] == "init"
    assert seen[0][1]["request"] == {"user": None}
    assert seen[0][1]["local_only"] == {}
    _start_worker(None, ())


def test_a_store_only_the_parent_has_does_not_stop_the_task(make_store):
    parent_only = make_store("context", name="tests.process.parent_only")
    parent_only["x"] = 1
    support.request["user"] = "still sent"
    context = multiprocessing.get_context(START_METHODS[0])
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        seen = pool.submit(support.look).result(timeout=60)
    assert seen["request"] == {"user": "still sent"}


def test_a_value_that_fails_to_unpickle_in_the_worker_fails_that_task_only():
    context = multiprocessing.get_context(START_METHODS[0])
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        support.connection["obj"] = support.UnpicklableInWorker()
        with pytest.raises(TypeError, match=r"'tests\.process\.connection' could not be unpickled"):
            pool.submit(support.look).result(timeout=60)
        del support.connection["obj"]
        support.request["user"] = "the pool still works"
        seen = pool.submit(support.look).result(timeout=60)
    assert seen["request"] == {"user": "the pool still works"}


def test_initializer_runs_in_every_worker_with_its_arguments():
    context = multiprocessing.get_context(START_METHODS[0])
    with ContextProcessPoolExecutor(
        max_workers=1,
        mp_context=context,
        initializer=support.remember,
        initargs=("initialised",),
    ) as pool:
        assert pool.submit(support.remembered).result(timeout=60) == "initialised"


def test_a_snapshot_without_thread_stores_runs_functions_and_coroutines():
    # Only a process without any propagating thread store takes this path.
    context = contextvars.Context()
    context.run(support.request.__setitem__, "user", "from the context")
    bare = Snapshot(context)
    assert "thread stores []" in repr(bare)
    assert bare.run(support.request.get, "user") == "from the context"

    @bare.wrap
    async def read() -> object:
        await asyncio.sleep(0)
        return support.request.get("user")

    assert asyncio.run(read()) == "from the context"


def test_worker_start_makes_factory_thread_stores_run_their_factory_again(make_store):
    calls = []
    store = make_store("thread", defaults=lambda: calls.append(1) or {"n": len(calls)})
    store["n"] = "copied by fork"
    _start_worker(None, ())
    assert store["n"] == 2
    assert len(calls) == 2
