"""The carrier seam: its registry, and ContextProcessPoolExecutor carrying text maps.

The carriers here (tests/support/carriers.py) carry a ContextVar of their
own; the OpenTelemetry carrier has tests of its own, with the real SDK
(tests/integrations/test_opentelemetry*.py).
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from collections.abc import Iterator

import pytest

from contextual import ContextProcessPoolExecutor, request_context
from contextual._propagation import carriers
from contextual._propagation.executors import _run_from_payload, _run_with_carried
from contextual._propagation.wire import MAX_BYTES
from support import carriers as support
from support.carriers import FIELD, TestCarrier, impostor, named

START_METHODS = [
    m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()
]


@pytest.fixture(autouse=True)
def _empty_registry() -> Iterator[None]:
    before = carriers.registered_carriers()
    for carrier in before:
        carriers.unregister_carrier(carrier.name)
    yield
    for carrier in carriers.registered_carriers():
        carriers.unregister_carrier(carrier.name)
    for carrier in before:
        carriers.register_carrier(carrier)


@pytest.fixture
def carrier() -> TestCarrier:
    one = named("tests.one")
    one.text_map = None
    one.events.clear()
    carriers.register_carrier(one)
    return one


# -- the registry ------------------------------------------------------------------


def test_a_registered_carrier_is_listed_and_found_by_name(carrier):
    assert carriers.registered_carriers() == (carrier,)
    assert carriers.carrier_named("tests.one") is carrier
    assert carriers.carrier_named("tests.other") is None


def test_carriers_are_listed_in_the_order_they_were_registered(carrier):
    two = named("tests.two")
    carriers.register_carrier(two)
    assert carriers.registered_carriers() == (carrier, two)


def test_registering_the_same_carrier_again_changes_nothing(carrier):
    carriers.register_carrier(carrier)
    assert carriers.registered_carriers() == (carrier,)


def test_another_carrier_of_a_registered_name_is_refused(carrier):
    other = impostor("tests.one")
    with pytest.raises(
        ValueError, match=r"another carrier is registered under the name 'tests\.one'"
    ):
        carriers.register_carrier(other)
    assert carriers.registered_carriers() == (carrier,)


def test_unregistering_removes_the_carrier_and_an_unknown_name_is_no_error(carrier):
    carriers.unregister_carrier("tests.nowhere")
    assert carriers.registered_carriers() == (carrier,)
    carriers.unregister_carrier("tests.one")
    assert carriers.registered_carriers() == ()
    assert carriers.carrier_named("tests.one") is None


@pytest.mark.parametrize(
    "thing",
    [object(), "opentelemetry", type("NoApplied", (), {"name": "x", "fields": (), "capture": 1})()],
    ids=["object", "str", "capture not callable"],
)
def test_what_is_not_a_carrier_is_refused(thing):
    with pytest.raises(TypeError, match=r"register_carrier takes a Carrier \(name, fields"):
        carriers.register_carrier(thing)
    assert carriers.registered_carriers() == ()


@pytest.mark.parametrize("name", ["", "two words", "x\n", 3, None])
def test_a_carrier_name_that_is_not_an_http_token_is_refused(name):
    bad = named("tests.bad-name")
    bad.name = name
    try:
        with pytest.raises(ValueError, match=r"a carrier's name must be an HTTP token"):
            carriers.register_carrier(bad)
    finally:
        bad.name = "tests.bad-name"


def test_a_carrier_that_does_not_pickle_by_reference_is_refused():
    # Made directly, not through named(): unpickling gives another object.
    loose = TestCarrier("tests.loose")
    with pytest.raises(TypeError, match=r"'tests\.loose' must pickle by reference"):
        carriers.register_carrier(loose)
    unpicklable = TestCarrier("tests.unpicklable")
    unpicklable.__reduce__ = None  # type: ignore[assignment, method-assign]
    with pytest.raises(TypeError, match="must pickle by reference"):
        carriers.register_carrier(unpicklable)


def test_threads_registering_at_once_each_register_theirs_once():
    names = [f"tests.thread-{i}" for i in range(8)]
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def register(name: str) -> None:
        barrier.wait()
        try:
            for _ in range(50):
                carriers.register_carrier(named(name))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(c.name for c in carriers.registered_carriers()) == sorted(names)


# -- capture_all, applied_all, check_text_map --------------------------------------


def test_capture_all_is_empty_without_carriers():
    assert carriers.capture_all() == ()


def test_capture_all_skips_carriers_with_nothing_to_carry(carrier):
    empty = named("tests.empty")
    empty.text_map = {}
    carriers.register_carrier(empty)
    assert carriers.capture_all() == ()
    token = support.value.set("v-1")
    try:
        assert carriers.capture_all() == ((carrier, {FIELD: "v-1"}),)
    finally:
        support.value.reset(token)


def test_applied_all_enters_in_order_and_exits_in_reverse(carrier):
    two = named("tests.two")
    two.events.clear()
    with carriers.applied_all([(carrier, {FIELD: "a"}), (two, {FIELD: "b"})]):
        assert support.value.get() == "b"
        events = [*carrier.events, *two.events]
    assert events == ["enter tests.one", "enter tests.two"]
    assert two.events[-1] == "exit tests.two"
    assert carrier.events[-1] == "exit tests.one"
    assert support.value.get() is None


def test_a_text_map_of_header_names_and_printable_ascii_passes():
    carriers.check_text_map("c", {"traceparent": "00-ab-cd-01", "tracestate": ""})
    carriers.check_text_map("c", {"k": "v" * (MAX_BYTES - 1)})


@pytest.mark.parametrize(
    ("text_map", "error", "match"),
    [
        (["traceparent"], TypeError, r"the carrier 'c' captured list, not a text map"),
        ({"k": 1}, TypeError, r"captured dict, not a text map \(a dict of str to str\)"),
        ({1: "v"}, TypeError, "not a text map"),
        ({"two words": "v"}, ValueError, r"the key 'two words', which is not an HTTP field name"),
        ({"k": "line\nbreak"}, ValueError, r"a value for 'k' that is not printable ASCII"),
        ({"k": "caf\u00e9"}, ValueError, "not printable ASCII"),
        ({"k": "v" * MAX_BYTES}, ValueError, rf"captured {MAX_BYTES + 1} bytes, over the limit"),
    ],
)
def test_a_text_map_no_transport_can_carry_is_refused(text_map, error, match):
    with pytest.raises(error, match=match):
        carriers.check_text_map("c", text_map)


# -- ContextProcessPoolExecutor ----------------------------------------------------


@pytest.mark.parametrize("method", START_METHODS)
def test_a_pool_task_runs_with_the_carried_text_map_applied(carrier, method):
    context = multiprocessing.get_context(method)
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        token = support.value.set("from the caller")
        try:
            with request_context(request_id="r-carried"):
                seen = pool.submit(support.look).result(timeout=30)
        finally:
            support.value.reset(token)
        # Nothing carried now: the same worker sees nothing of the first task.
        after = pool.submit(support.look).result(timeout=30)
    assert seen == {"value": "from the caller", "request_id": "r-carried"}
    assert after == {"value": None, "request_id": None}


def test_pool_map_carries_the_text_map(carrier):
    context = multiprocessing.get_context(START_METHODS[0])
    with ContextProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        token = support.value.set("mapped")
        try:
            seen = list(pool.map(_value_of, range(4), timeout=30))
        finally:
            support.value.reset(token)
    assert seen == [(0, "mapped"), (1, "mapped"), (2, "mapped"), (3, "mapped")]


def _value_of(n: int) -> tuple[int, str | None]:
    return n, support.value.get()


def test_a_pool_refuses_a_text_map_over_the_limit_and_sends_nothing(carrier):
    carrier.text_map = {FIELD: "v" * MAX_BYTES}
    context = multiprocessing.get_context(START_METHODS[0])
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        with pytest.raises(ValueError, match=r"the carrier 'tests\.one' captured 8204 bytes"):
            pool.submit(support.look)
        carrier.text_map = {FIELD: 7}
        with pytest.raises(TypeError, match=r"the carrier 'tests\.one' captured dict, not a"):
            pool.submit(support.look)
        carrier.text_map = None
        assert pool.submit(support.look).result(timeout=30)["value"] is None


def test_the_worker_entry_point_applies_the_carriers_inside_the_stores_snapshot(carrier):
    payload = {"contextual.request": pickle.dumps({"request_id": "r-entry", "user_id": None})}
    carried = ((carrier, {FIELD: "entry"}),)
    assert _run_with_carried(carried, payload, support.look) == {
        "value": "entry",
        "request_id": "r-entry",
    }
    assert carrier.events == ["enter tests.one", "exit tests.one"]
    # And the entry point without carriers is as it was.
    assert _run_from_payload(payload, support.look) == {"value": None, "request_id": "r-entry"}
    assert support.value.get() is None
