"""Context that crosses a process boundary obeys the wire rules of contextual._propagation.wire.

Snapshot.from_dict() is the door for data from another process; the
ContextProcessPoolExecutor checks what it sends, in the caller, before
anything is sent, and its worker checks again through from_dict().
"""

from __future__ import annotations

import multiprocessing
import pickle
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from contextual import ContextProcessPoolExecutor, Snapshot, capture, request_context
from contextual._propagation.executors import _run_from_payload
from contextual._propagation.wire import CONTROL_CHARACTERS, FORMAT, MAX_BYTES, MAX_VALUE_BYTES
from support import process as support

START_METHOD = next(
    m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()
)
STORE = "tests.process.connection"  # a "thread" store the worker processes have too


def _nested(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


# (what is carried in STORE, the key the refusal must name), one per kind of character.
REFUSED = {
    "a bidi override U+202E": ({"file": "report\u202etxt.exe"}, "file"),
    "a C1 control U+009B": ({"user": "ada\x9b2J"}, "user"),
    "a line separator U+2028": ({"note": "one\u2028two"}, "note"),
    "a line feed": ({"user": "ada\nINFO forged"}, "user"),
    "a zero width space in a nested list and dict": (
        {"tags": ["ok", {"inner": ("fine", "hid\u200bden")}]},
        "tags",
    ),
    "a zero width space in a nested dict key": ({"meta": {"ro\u200ble": "admin"}}, "meta"),
    "a zero width space in a key": ({"us\u200ber": "ada"}, "us\u200ber"),
    "lists nested too deep to check": ({"deep": _nested("x", 40)}, "deep"),
}
ACCEPTED = {"user": "Zoë", "city": "東京", "amount": "12\u00a0500 EUR", "tags": ["ok", {"a": "b"}]}


@pytest.fixture(autouse=True)
def _clean_support_stores() -> Iterator[None]:
    yield
    for store in (support.request, support.connection, support.local_only):
        store.clear()


@pytest.fixture(scope="module")
def pool() -> Iterator[ContextProcessPoolExecutor]:
    context = multiprocessing.get_context(START_METHOD)
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        yield executor


def _data(values: dict[str, Any], store: str = STORE) -> dict[str, Any]:
    return {"format": FORMAT, "stores": {store: values}}


def _texts(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key)
            yield from _texts(item)


def _assert_refused_quietly(message: str, values: dict[str, Any], key: str) -> None:
    """The message names store and key, escaped, says the rule, and quotes no value."""
    assert f"store {STORE!a} key {key!a}" in message
    assert CONTROL_CHARACTERS in message
    assert "printable text only" in message
    assert message.isascii()
    for text in _texts(values):
        if text != key and not text.isprintable():
            assert ascii(text)[1:-1] not in message


def _refused_and_nothing_ran(
    pool: ContextProcessPoolExecutor, carry: Callable[[], object], match: str
) -> str:
    """Carry values whose submit is refused; check the worker never ran the task.

    ``write_then_look`` leaves its tag in the worker's own propagate=False
    store, so the task after a refused one sees the tag of the task before.
    """
    pool.submit(support.write_then_look, "before").result(timeout=60)
    carry()
    with pytest.raises(ValueError, match=match) as info:
        pool.submit(support.write_then_look, "refused")
    support.request.clear()
    support.connection.clear()
    after = pool.submit(support.write_then_look, "after").result(timeout=60)
    assert after["local_only"] == {"left_by": "before"}
    return str(info.value)


# -- from_dict: the door for data from another process --------------------------


@pytest.mark.parametrize(("values", "key"), REFUSED.values(), ids=REFUSED.keys())
def test_from_dict_refuses_text_with_a_control_or_format_character(values, key):
    with pytest.raises(ValueError, match="can't cross a process boundary") as info:
        Snapshot.from_dict(_data(values))
    _assert_refused_quietly(str(info.value), values, key)


def test_from_dict_refuses_a_store_name_with_a_control_character():
    with pytest.raises(ValueError, match=r"the store name 'tests\.process\\u202erequest'"):
        Snapshot.from_dict(_data({"user": "ada"}, store="tests.process\u202erequest"))


def test_from_dict_applies_nothing_when_one_value_is_refused(run_in_new_thread):
    data = {
        "format": FORMAT,
        "stores": {"tests.process.request": {"user": "ada"}, STORE: {"x": "\u202e"}},
    }
    with pytest.raises(ValueError, match="none of it is sent or applied"):
        Snapshot.from_dict(data)
    assert run_in_new_thread(support.look)["request"] == {"user": None}


def test_from_dict_checks_characters_before_it_looks_stores_up():
    # A refused value is refused even where no store of that name exists.
    with pytest.raises(ValueError, match="control or format character"):
        Snapshot.from_dict(_data({"k": "\u2028"}, store="nowhere.store"), missing="ignore")


def test_from_dict_lets_every_printable_character_through(run_in_new_thread):
    rebuilt = Snapshot.from_dict(_data(ACCEPTED))
    assert run_in_new_thread(lambda: rebuilt.run(dict, support.connection)) == ACCEPTED


def test_to_dict_and_from_dict_share_the_wire_format_version():
    support.request["user"] = "ada"
    data = capture().to_dict()
    assert data["format"] == FORMAT
    with pytest.raises(TypeError, match=rf"'format': {FORMAT}, 'stores'"):
        Snapshot.from_dict({**data, "format": FORMAT + 1})


def test_the_worker_checks_the_characters_again_before_it_runs_the_task():
    # What the worker receives is checked by from_dict() too, so a value
    # that only becomes text on the way (its own __reduce__, say) is refused.
    ran: list[object] = []
    payload = {STORE: pickle.dumps({"user": "ada\u202e"})}
    with pytest.raises(ValueError, match=rf"store {STORE!a} key 'user'"):
        _run_from_payload(payload, ran.append, "ran")
    assert ran == []


# -- ContextProcessPoolExecutor.submit: checked in the caller, nothing sent -------


@pytest.mark.parametrize(("values", "key"), REFUSED.values(), ids=REFUSED.keys())
def test_submit_refuses_a_control_character_and_sends_nothing(pool, values, key):
    message = _refused_and_nothing_ran(
        pool, lambda: support.connection.update(values), "can't cross a process boundary"
    )
    _assert_refused_quietly(message, values, key)


def test_submit_refuses_a_value_over_its_size_limit_and_sends_nothing(pool):
    message = _refused_and_nothing_ran(
        pool, lambda: support.connection.update(report="x" * MAX_VALUE_BYTES), "over the limit"
    )
    size = int(re.search(r"takes (\d+) bytes pickled", message)[1])  # type: ignore[index]
    assert size > MAX_VALUE_BYTES
    assert f"store {STORE!a} key 'report'" in message
    assert f"limit of {MAX_VALUE_BYTES} bytes for one carried key and value" in message
    assert "argument of the task" in message


def test_submit_refuses_an_over_size_total_and_sends_nothing(pool):
    # Each value fits its own limit; together they are over the total.
    def carry() -> None:
        support.request["user"] = "u" * 3000
        support.connection.update({"a": "a" * 3000, "b": "b" * 3100})

    message = _refused_and_nothing_ran(pool, carry, "over the")
    total = int(
        re.search(r"take (\d+) bytes \(each key and its value pickled, summed\)", message)[1]
    )  # type: ignore[index]
    assert total > MAX_BYTES
    assert f"limit of {MAX_BYTES} bytes for everything one task carries" in message
    # The largest first, so the message points at what to move out.
    assert message.index(f"store {STORE!a} key 'b'") < message.index(f"store {STORE!a} key 'a'")
    assert "store 'tests.process.request' key 'user'" in message


def test_submit_accepts_a_large_store_of_small_values(pool):
    # Over one value's limit as a whole, under it key by key: it travels.
    values = {f"k{i}": str(i) * 500 for i in range(10)}
    assert len(pickle.dumps(values)) > MAX_VALUE_BYTES
    support.connection.update(values)
    seen = pool.submit(support.look).result(timeout=60)
    assert seen["connection"] == values


def test_submit_carries_every_printable_character(pool):
    support.connection.update(ACCEPTED)
    support.request["user"] = "Zoë in 東京"
    seen = pool.submit(support.look).result(timeout=60)
    assert seen["connection"] == ACCEPTED
    assert seen["request"] == {"user": "Zoë in 東京"}


def test_a_submit_that_carries_nothing_checks_nothing(pool, run_in_new_thread):
    # A thread that never wrote carries nothing: submit skips every check.
    def submit_from_a_fresh_thread() -> dict[str, object]:
        assert capture().to_dict()["stores"] == {}
        return pool.submit(support.look).result(timeout=60)

    seen = run_in_new_thread(submit_from_a_fresh_thread)
    assert seen["request"] == {"user": None}
    assert seen["connection"] == {}


def test_submit_refuses_a_request_extra_with_a_format_character(pool):
    # A RequestContext's extras are a read-only mapping inside a tuple: the
    # rule looks inside every mapping, not dicts alone.
    pool.submit(support.write_then_look, "before").result(timeout=60)
    with (
        request_context(request_id="r-1", tenant="acme\u202etxe"),
        pytest.raises(ValueError, match="can't cross a process boundary") as info,
    ):
        pool.submit(support.write_then_look, "refused")
    assert "'request'" in str(info.value)
    with request_context(request_id="r-2", tenant="acme"):
        seen = pool.submit(support.write_then_look, "accepted").result(timeout=60)
    assert seen["local_only"] == {"left_by": "before"}, "the refused task never ran"
