"""The wire module's own contract: the envelope, the limits, reporting once, the request.

Every carrier (process pools, Celery, HTTP) stands on these; their own tests
check what each does with them.
"""

from __future__ import annotations

import json
import pickle
import re
import threading
from typing import Any

import pytest

from contextual import RequestContext
from contextual._propagation.wire import (
    FORMAT,
    LOGGED_CHARS,
    MAX_BYTES,
    MAX_VALUE_BYTES,
    REQUEST_ID_KEY,
    REQUEST_KEY,
    REQUEST_STORE_NAME,
    USER_KEY,
    Dropped,
    Generated,
    Problem,
    Reported,
    check_characters,
    envelope,
    generate_request_id,
    open_envelope,
    rebuild_request,
    shown,
    within_limits,
)

# -- the envelope --------------------------------------------------------------------


def test_an_envelope_opens_to_the_stores_it_was_built_from():
    stores = {"a.store": {"k": "v", "n": [1, {"x": None}]}, "b.store": {}}
    data = envelope(stores)
    assert data == {"format": FORMAT, "stores": stores}
    assert open_envelope(data) == (stores, [])
    assert open_envelope(json.loads(json.dumps(data))) == (stores, [])


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("text", Problem("header", "the header is a str, not a mapping")),
        ({"stores": {}}, Problem("header", "format None, where this contextual reads 1")),
        (
            {"format": True, "stores": {}},
            Problem("header", "format True, where this contextual reads 1"),
        ),
        ({"format": 2, "stores": {}}, Problem("header", "format 2, where this contextual reads 1")),
        ({"format": 1, "stores": [1]}, Problem("header", "'stores' is a list, not a mapping")),
    ],
    ids=["not a mapping", "no format", "a bool format", "another format", "stores not a mapping"],
)
def test_a_malformed_envelope_holds_nothing_and_says_why(data, problem):
    assert open_envelope(data) == ({}, [problem])


def test_each_malformed_entry_is_left_out_with_a_problem_of_its_own():
    data = envelope({"good": {"k": 1}, "bad": 3, 7: {}, "mixed": {1: "x", "ok": "y"}})  # type: ignore[dict-item]
    stores, problems = open_envelope(data)
    assert stores == {"good": {"k": 1}, "mixed": {"ok": "y"}}
    assert problems == [
        ("entry", "the entry 'bad' is not store name: mapping"),
        ("entry", "the entry 7 is not store name: mapping"),
        ("entry", "store 'mixed' has a key that is not a str (1)"),
    ]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("text", "got str"),
        ({"format": 2, "stores": {}}, "got format 2. Both processes"),
        ({"format": 1, "stores": 3}, "'stores' is int"),
        ({"format": 1, "stores": {"a": 1}}, "got the entry 'a': 1"),
        ({"format": 1, "stores": {"a": {1: 1}}}, "store 'a' has a non-str key"),
    ],
)
def test_a_strict_reader_raises_at_the_first_problem(data, match):
    with pytest.raises(TypeError, match=match) as info:
        open_envelope(data, strict=True)
    assert "expected the dict returned by Snapshot.to_dict()" in str(info.value)


def test_problems_show_carried_text_on_one_line():
    _, problems = open_envelope(envelope({"forged\nINFO line" * 10: 1}))  # type: ignore[dict-item]
    ((_, text),) = problems
    assert "\n" not in text
    assert "'forged\\nINFO line" in text
    assert shown("x" * 100) == repr("x" * LOGGED_CHARS) + "..."
    assert shown(list(range(100))).endswith("...")


def test_characters_are_checked_in_names_keys_and_nested_values():
    check_characters({"s": {"k": ["ok", {"a": "Zoë"}]}})
    for stores, named in [
        ({"s\u202e": {}}, "the store name 's\\u202e'"),
        ({"s": {"k\n": 1}}, "store 's' key 'k\\n'"),
        ({"s": {"k": [{"x": "a\u2028"}]}}, "store 's' key 'k'"),
    ]:
        with pytest.raises(ValueError, match="can't cross a process boundary") as info:
            check_characters(stores)
        assert named in str(info.value)


# -- the limits ----------------------------------------------------------------------


def _json_size(key: str, value: Any) -> int:
    return len(json.dumps(key).encode()) + len(json.dumps(value).encode())


def _pickle_size(key: str, value: Any) -> int:
    return len(pickle.dumps({key: value}))


@pytest.mark.parametrize("measure", [_json_size, _pickle_size], ids=["json", "pickle"])
def test_an_entry_over_the_value_limit_is_dropped_and_the_rest_kept(measure):
    big = "x" * MAX_VALUE_BYTES
    kept, dropped = within_limits({"s": {"big": big, "small": "y"}}, measure)
    assert kept == {"s": {"small": "y"}}
    assert dropped == [Dropped("s", "big", "value", measure("big", big))]


@pytest.mark.parametrize("measure", [_json_size, _pickle_size], ids=["json", "pickle"])
def test_the_request_store_counts_first_and_entries_past_the_total_go(measure):
    # Each chunk takes 5 bytes less than one entry may: two are over the total.
    chunk = "x" * (MAX_VALUE_BYTES - 5 - (measure("a", "x" * 300) - 300))
    assert measure("a", chunk) == MAX_VALUE_BYTES - 5
    stores = {
        "s": {"a": chunk, "b": chunk, "c": 1},
        REQUEST_STORE_NAME: {REQUEST_ID_KEY: "r-1"},
    }
    kept, dropped = within_limits(stores, measure)
    assert kept == {REQUEST_STORE_NAME: {REQUEST_ID_KEY: "r-1"}, "s": {"a": chunk}}
    # "c" would fit in the room "b" left; it goes with the rest all the same.
    assert [(d.key, d.limit) for d in dropped] == [("b", "total"), ("c", "total")]
    total = sum(measure(k, v) for k, v in [(REQUEST_ID_KEY, "r-1"), ("a", chunk), ("b", chunk)])
    assert total > MAX_BYTES


def test_the_two_measures_decide_differently_on_the_same_entry():
    # The limits are the same; what counts is the carrier's encoding.
    value = "x" * (MAX_VALUE_BYTES - 8)
    assert within_limits({"s": {"k": value}}, _json_size)[1] == []
    assert within_limits({"s": {"k": value}}, _pickle_size)[1] != []


# -- reporting once ------------------------------------------------------------------


def test_a_kind_is_reported_once_with_every_problem_of_it_that_first_time():
    reported = Reported()
    first = [Problem("a", "one"), Problem("b", "two"), Problem("a", "three")]
    assert reported.new(first) == first
    assert reported.new([Problem("a", "four"), Problem("c", "five")]) == [Problem("c", "five")]
    assert reported.first("a") is False
    reported.clear()
    assert reported.first("a") is True


def test_reported_remembers_a_bounded_number_of_things():
    reported = Reported(limit=3)
    assert [reported.first(("store", n)) for n in range(5)] == [True, True, True, False, False]
    assert len(reported) == 3
    assert reported.first(("store", 0)) is False


def test_reported_says_first_to_one_thread_only():
    reported = Reported()
    start = threading.Barrier(8)
    answers: list[bool] = []

    def report() -> None:
        start.wait()
        answers.append(reported.first("kind"))

    threads = [threading.Thread(target=report) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [False] * 7 + [True]


# -- the request ---------------------------------------------------------------------


def test_an_accepted_id_opens_the_request_with_the_carried_user():
    stores = {REQUEST_STORE_NAME: {REQUEST_ID_KEY: "r-1", USER_KEY: "ada", "locale": "fr"}}
    arrival = rebuild_request("r-1", stores)
    assert arrival == ("r-1", "ada", None)
    assert stores == {REQUEST_STORE_NAME: {"locale": "fr"}}, "the rest stays carried"
    assert arrival.values() == {
        REQUEST_KEY: RequestContext("r-1", "ada"),
        REQUEST_ID_KEY: "r-1",
        USER_KEY: "ada",
    }


def test_a_carried_request_object_is_never_kept():
    stores: dict[str, dict[str, Any]] = {REQUEST_STORE_NAME: {REQUEST_KEY: ["forged"]}}
    assert rebuild_request(None, stores) == (None, None, None)
    assert stores == {}


@pytest.mark.parametrize("request_id", ["", "x" * 129, "a b", "r\n1", "caf\u00e9", 42, b"r-1"])
def test_an_id_the_default_check_refuses_opens_no_request(request_id):
    arrival = rebuild_request(request_id, None)
    assert arrival == (None, None, None)
    assert arrival.values() == {}


def test_a_validator_decides_within_printable_ascii():
    def wide(value: str) -> bool:
        return True

    assert rebuild_request("an id with spaces", None, wide).request_id == "an id with spaces"
    assert rebuild_request("caf\u00e9", None, wide).request_id is None
    assert rebuild_request("r-1", None, lambda _: False).request_id is None


def test_a_raising_validator_refuses_the_id_and_hands_back_the_error():
    def broken(value: str) -> bool:
        raise RuntimeError(value)

    stores = {REQUEST_STORE_NAME: {USER_KEY: "ada"}}
    arrival = rebuild_request("r-1", stores, broken)
    assert (arrival.request_id, arrival.user) == (None, "ada")
    assert isinstance(arrival.error, RuntimeError)
    assert arrival.error.args == ("r-1",)
    assert arrival.values() == {USER_KEY: "ada"}, "the user alone, with no request"


@pytest.mark.parametrize("kind", [set, frozenset])
def test_text_inside_a_set_is_under_the_character_rule(kind: type) -> None:
    with pytest.raises(ValueError, match="store 's' key 'k'"):
        check_characters({"s": {"k": kind({"fine", "\u202eevil\nline"})}})
    check_characters({"s": {"k": kind({"fine", "also fine"})}})


# -- request IDs that a user's generator makes ------------------------------------------


def test_a_generated_id_a_header_can_carry_is_kept():
    assert generate_request_id(lambda: "job-7") == Generated("job-7", None, None)


@pytest.mark.parametrize("made", ["", "r\n-1", "é", 7, None])
def test_a_generated_id_no_header_can_carry_is_replaced_and_shown_safely(made):
    generated = generate_request_id(lambda: made)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.request_id)
    assert generated.refused == shown(made)
    assert "\n" not in generated.refused
    assert generated.error is None


def test_a_generator_that_raises_gives_a_random_id_and_the_error():
    error = RuntimeError("no IDs today")

    def broken() -> str:
        raise error

    generated = generate_request_id(broken)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.request_id)
    assert (generated.refused, generated.error) == (None, error)
