"""inject() and extract() in-process: the Baggage codec, its limits, and bad input."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from contextual import ContextStore, get_current_user, get_request_id, request_context
from contextual.integrations import _baggage
from contextual.integrations.http import CarriedContext, extract, inject
from support.http_servers import forget_reports
from support.middleware import FRESH_ID, WARNINGS_LOGGER, ContextRecorder, recording

USER = {"contextual.request": ["user_id"]}
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")


def breaks_the_rule(text: str) -> bool:
    """The character rule, written out: no Cc, Cf or Cs, no line or paragraph separator."""
    return any(unicodedata.category(c) in ("Cc", "Cf", "Cs") or c in "\u2028\u2029" for c in text)


@pytest.fixture(autouse=True)
def _fresh_reports() -> Iterator[None]:
    forget_reports()
    yield
    forget_reports()


@pytest.fixture
def warnings() -> Iterator[ContextRecorder]:
    with recording(WARNINGS_LOGGER) as recorder:
        yield recorder


#: A store of the app's own, as services have: "tenant" by default None.
APP = ContextStore("tests.http.app", defaults={"tenant": None})


def members(header: str) -> list[str]:
    return header.split(",")


def assert_well_formed(header: str) -> None:
    """The header obeys the Baggage grammar (as we write it) and its limits."""
    assert len(header) <= _baggage.MAX_BYTES
    parts = members(header)
    assert len(parts) <= _baggage.MAX_MEMBERS
    for member in parts:
        assert len(member) <= _baggage.MAX_MEMBER_BYTES
        head = member.split(";")[0]
        key, _, value = head.partition("=")
        assert TOKEN.fullmatch(key.strip()), member
        assert VALUE.fullmatch(value.strip()), member


def sent(allow: Any = None, headers: dict[str, str] | None = None, **values: Any) -> dict[str, str]:
    """The headers inject() writes inside request r-1 of ada, with ``values`` in APP."""
    headers = {} if headers is None else headers
    with request_context(request_id="r-1", user_id="ada"), APP.scope(values):
        inject(headers, allow=allow)
    return headers


# -- member keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "key", "token"),
    [
        ("contextual.request", "user_id", "contextual.request|user_id"),
        ("a|b", "c", "a%7Cb|c"),
        ("with space", "100%", "with%20space|100%25"),
        ("café", "ключ", "caf%C3%A9|%D0%BA%D0%BB%D1%8E%D1%87"),
        ("s", "", "s|"),
        ("s", "a=b,c;d", "s|a%3Db%2Cc%3Bd"),
    ],
)
def test_member_keys_name_store_and_key_unambiguously(store, key, token):
    assert _baggage.encode_key(store, key) == token
    assert TOKEN.fullmatch(token)
    assert token.count("|") == 1
    assert _baggage.decode_key(token) == (store, key)


@given(st.text(min_size=1), st.text())
def test_every_store_and_key_name_round_trips(store, key):
    try:
        token = _baggage.encode_key(store, key)
    except UnicodeEncodeError:
        return  # lone surrogates: inject() leaves them out, tested below
    assert TOKEN.fullmatch(token)
    assert _baggage.decode_key(token) == (store, key)


@pytest.mark.parametrize("token", ["userId", "a|b|c", "|key", "s|%FF", "%FF|k"])
def test_tokens_that_name_no_store_and_key_decode_to_none(token):
    assert _baggage.decode_key(token) is None


# -- values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "ada",
        "",
        "a b",
        "1+1=2",
        "100%",
        "%41",
        'quote " back \\ slash',
        "comma, semicolon; equals=",
        "café ключ 東京 🎉",
        "x" * 1000,
    ],
)
def test_values_round_trip(value):
    headers = sent(["tests.http.app"], tenant=value)
    assert_well_formed(headers["baggage"])
    carried = extract(headers, allow=["tests.http.app"])
    assert carried.stores == {"tests.http.app": {"tenant": value}}


@given(st.text())
def test_any_text_round_trips_or_stays_behind(value):
    headers = sent(["tests.http.app"], tenant=value)
    try:
        value.encode()
    except UnicodeEncodeError:
        assert "baggage" not in headers
        return
    if len(value) > 1000:
        return  # may be over the member limit: tested below
    assert_well_formed(headers["baggage"])
    if breaks_the_rule(value):
        return  # refused on arrival: tested below
    assert extract(headers, allow=["tests.http.app"]).stores == {
        "tests.http.app": {"tenant": value}
    }


@pytest.mark.parametrize(
    ("value", "text"), [(42, "42"), (-1.5, "-1.5"), (True, "True"), (False, "False")]
)
def test_numbers_and_bools_travel_as_their_str(value, text):
    headers = sent(["tests.http.app"], tenant=value)
    assert extract(headers, allow=["tests.http.app"]).stores == {"tests.http.app": {"tenant": text}}


def test_none_stays_behind_silently(warnings):
    headers = sent(["tests.http.app"], tenant=None)
    assert "baggage" not in headers
    assert warnings.lines == []


def test_other_types_stay_behind_with_one_warning(warnings):
    headers = sent(["tests.http.app"], tenant=["a"], other={"b": 1}, kept="yes")
    assert members(headers["baggage"]) == ["tests.http.app|kept=yes"]
    sent(["tests.http.app"], tenant=object())
    (line,) = warnings.lines
    assert "'tests.http.app|tenant'" in line.message
    assert "'list'" in line.message
    assert "only str, int, float and bool" in line.message
    assert line.request_id == "r-1", "logged where the request is"


def test_lone_surrogates_stay_behind_with_one_warning(warnings):
    headers = sent(["tests.http.app"], tenant="\ud800", kept="yes")
    assert members(headers["baggage"]) == ["tests.http.app|kept=yes"]
    sent(["tests.http.app"], **{"\udc80": "x"})
    (line,) = warnings.lines
    assert "lone surrogate" in line.message
    assert line.message.isascii()


def test_plus_is_a_plus_and_bad_utf8_becomes_the_replacement_character():
    headers = {"baggage": "tests.http.app|tenant=a+b%20c%FFd%zz"}
    carried = extract(headers, allow=["tests.http.app"])
    assert carried.stores == {"tests.http.app": {"tenant": "a+b c\ufffdd%zz"}}


# -- what travels ------------------------------------------------------------------


def test_by_default_only_the_request_id_leaves():
    headers = sent(tenant="acme")
    assert headers == {"X-Request-ID": "r-1"}


def test_an_allowed_key_travels_and_others_of_its_store_stay():
    headers = sent({"tests.http.app": ["tenant"]}, tenant="acme", role="admin")
    assert headers == {"X-Request-ID": "r-1", "baggage": "tests.http.app|tenant=acme"}


def test_the_user_travels_when_allowed_and_never_the_request_object():
    headers = sent(["contextual.request"])
    assert headers == {"X-Request-ID": "r-1", "baggage": "contextual.request|user_id=ada"}


def test_outside_a_request_nothing_is_added():
    headers = {"Accept": "*/*"}
    inject(headers, allow=USER)
    assert headers == {"Accept": "*/*"}


def test_outside_a_request_allowed_values_still_travel():
    headers: dict[str, str] = {}
    with APP.scope(tenant="acme"):
        inject(headers, allow=["tests.http.app"])
    assert headers == {"baggage": "tests.http.app|tenant=acme"}


def test_the_request_id_header_replaces_any_spelling_of_it():
    headers = {"x-request-id": "old", "Accept": "*/*"}
    with request_context(request_id="r-2"):
        inject(headers)
    assert headers == {"Accept": "*/*", "X-Request-ID": "r-2"}


def test_the_request_id_header_name_is_configurable():
    headers: dict[str, str] = {}
    with request_context(request_id="r-3"):
        inject(headers, header="Correlation-ID")
    assert headers == {"Correlation-ID": "r-3"}
    assert extract(headers, header="correlation-id").request_id == "r-3"


def test_a_request_id_no_header_can_carry_is_not_sent(warnings):
    headers: dict[str, str] = {}
    with request_context(request_id="evil\r\nSet-Cookie: a=1"):
        inject(headers)
        inject(headers)
    assert headers == {}
    (line,) = warnings.lines
    assert "Sent no 'X-Request-ID' header" in line.message
    assert len(line.message.splitlines()) == 1


@pytest.mark.parametrize(
    "headers",
    [httpx.Headers({"Baggage": "k=v"}), CaseInsensitiveDict({"Baggage": "k=v"})],
    ids=["httpx.Headers", "requests.CaseInsensitiveDict"],
)
def test_inject_works_on_client_header_objects(headers):
    with request_context(request_id="r-4", user_id="ada"):
        inject(headers, allow=USER)
    assert headers["x-request-id"] == "r-4"
    assert headers["BAGGAGE"] == "k=v,contextual.request|user_id=ada"
    assert len([key for key in headers if key.lower() == "baggage"]) == 1


# -- merging -----------------------------------------------------------------------


def test_other_members_are_kept_in_order_and_ours_replace_same_keys():
    existing = "userId=42;p=1, contextual.request|user_id=mallory,tests.http.app|tenant=x , z=9"
    headers = sent(USER, headers={"baggage": existing})
    assert members(headers["baggage"]) == [
        "userId=42;p=1",
        "tests.http.app|tenant=x",
        "z=9",
        "contextual.request|user_id=ada",
    ]


def test_baggage_headers_in_several_spellings_merge_into_one():
    headers = sent(USER, headers={"Baggage": "a=1", "BAGGAGE": "b=2"})
    assert headers == {
        "X-Request-ID": "r-1",
        "baggage": "a=1,b=2,contextual.request|user_id=ada",
    }


@pytest.mark.parametrize(
    "bad",
    [
        "novalue",
        "=v",
        "k v=1",
        'k="quoted"',
        "k=back\\slash",
        "k=v;",
        "k=v;=p",
        "k=v;p=q r",
        "k=caf\u00e9",
    ],
)
def test_malformed_members_of_an_existing_header_are_dropped(warnings, bad):
    headers = {"baggage": f"a=1,{bad},b=2;prop;p2 = v2"}
    with request_context(request_id="r-5"):
        inject(headers)
    assert members(headers["baggage"]) == ["a=1", "b=2;prop;p2 = v2"]
    (line,) = warnings.lines
    assert "malformed member of the outgoing Baggage header" in line.message


def test_an_existing_header_of_malformed_members_only_is_removed(warnings):
    headers = {"baggage": "bad, worse"}
    with request_context(request_id="r-6"):
        inject(headers)
    assert headers == {"X-Request-ID": "r-6"}


def test_an_existing_header_is_left_alone_when_nothing_is_added():
    headers = {"baggage": "a=1,b=2"}
    inject(headers)
    assert headers == {"baggage": "a=1,b=2"}


def test_empty_list_elements_are_dropped_silently(warnings):
    headers = {"baggage": ",a=1,, ,b=2,"}
    inject(headers)
    assert headers == {"baggage": "a=1,b=2"}
    assert warnings.lines == []


# -- outgoing limits ---------------------------------------------------------------


def test_a_member_over_4096_bytes_is_left_out(warnings):
    prefix = "tests.http.app|tenant="
    fits = "x" * (4096 - len(prefix))
    headers = sent(["tests.http.app"], tenant=fits)
    assert len(headers["baggage"]) == 4096
    headers = sent(["tests.http.app"], tenant=fits + "x", kept="yes")
    assert headers["baggage"] == "tests.http.app|kept=yes"
    (line,) = warnings.lines
    assert "4097 bytes long" in line.message
    assert "4096 bytes per member" in line.message


def test_an_existing_member_over_4096_bytes_is_left_out(warnings):
    headers = {"baggage": "a=" + "x" * 4095 + ",b=2"}
    inject(headers)
    assert headers == {"baggage": "b=2"}
    assert len(warnings.lines) == 1


def test_at_most_180_members_leave(warnings):
    values = {f"k{n}": "v" for n in range(200)}
    headers = sent(["tests.http.app"], **values)
    sent_members = members(headers["baggage"])
    assert len(sent_members) == 180
    assert sent_members == [f"tests.http.app|k{n}=v" for n in range(180)]
    (line,) = warnings.lines
    assert "past the 180th" in line.message


def test_the_header_stays_within_8192_bytes_and_smaller_members_still_fit(warnings):
    existing = ",".join(f"m{n}=" + "x" * 3000 for n in range(2)) + ",big=" + "y" * 3000
    headers = {"baggage": existing + ",small=1"}
    inject(headers)
    assert members(headers["baggage"]) == [
        "m0=" + "x" * 3000,
        "m1=" + "x" * 3000,
        "small=1",
    ]
    assert_well_formed(headers["baggage"])
    (line,) = warnings.lines
    assert "at most 8192 bytes, and 'big=yyy" in line.message
    assert "'... did not fit" in line.message


def test_the_allowed_context_crowds_out_members_the_header_had(warnings):
    headers = {"baggage": ",".join(f"k{n}=v" for n in range(180))}
    with request_context(request_id="r-crowd", user_id="ada"):
        inject(headers, allow=USER)
    assert members(headers["baggage"]) == [
        *(f"k{n}=v" for n in range(179)),
        "contextual.request|user_id=ada",
    ]
    (line,) = warnings.lines
    assert "Dropped members that the outgoing Baggage header already had" in line.message
    assert "to make room for the allowed context" in line.message
    assert "at most 180 members" in line.message
    assert "Allow fewer keys" not in line.message.split(". ")[0]


def test_the_allowed_context_takes_the_bytes_it_needs_first(warnings):
    existing = "a=" + "x" * 4000 + ",b=" + "y" * 4000
    value = "z" * 3000
    headers = sent(["tests.http.app"], {"baggage": existing}, tenant=value)
    assert members(headers["baggage"]) == ["a=" + "x" * 4000, f"tests.http.app|tenant={value}"]
    assert_well_formed(headers["baggage"])
    (line,) = warnings.lines
    assert "already had" in line.message
    assert "'b=yyy" in line.message


def test_an_int_too_long_for_str_stays_behind_with_one_warning(warnings):
    headers = sent(["tests.http.app"], tenant=10**5000, kept=1)
    assert headers["baggage"] == "tests.http.app|kept=1"
    (line,) = warnings.lines
    assert "'tests.http.app|tenant'" in line.message
    assert "get_int_max_str_digits" in line.message


def test_the_header_may_be_exactly_8192_bytes():
    existing = ",".join(["a=" + "x" * 4000, "b=" + "y" * 4000, "c=" + "z" * 184])
    assert len(existing) == 8192
    headers = {"baggage": existing}
    inject(headers)
    assert headers == {"baggage": existing}


# -- extract -----------------------------------------------------------------------


def test_extract_takes_allowed_keys_and_ignores_the_rest():
    headers = {
        "X-Request-ID": "r-7",
        "baggage": (
            "contextual.request|user_id=ada,contextual.request|request_id=forged,"
            "contextual.request|request=forged,tests.http.app|tenant=acme,"
            "tests.http.app|role=admin,userId=42;prop=1"
        ),
    }
    carried = extract(headers, allow={"contextual.request": True, "tests.http.app": ["tenant"]})
    assert carried == CarriedContext(
        "r-7", {"contextual.request": {"user_id": "ada"}, "tests.http.app": {"tenant": "acme"}}
    )


def test_by_default_extract_takes_the_request_id_alone():
    headers = {"x-request-id": "r-8", "baggage": "contextual.request|user_id=ada"}
    assert extract(headers) == CarriedContext("r-8", {})


def test_a_later_member_of_the_same_key_wins():
    headers = {"baggage": "tests.http.app|tenant=a,tests.http.app|tenant=b"}
    assert extract(headers, allow=["tests.http.app"]).stores == {"tests.http.app": {"tenant": "b"}}


def test_extract_reads_client_header_objects():
    headers = httpx.Headers([("baggage", "contextual.request|user_id=ada"), ("Baggage", "a=1")])
    headers["X-Request-ID"] = "r-9"
    assert extract(headers, allow=USER) == CarriedContext(
        "r-9", {"contextual.request": {"user_id": "ada"}}
    )


def test_a_missing_request_id_is_none_silently(warnings):
    assert extract({}) == CarriedContext(None, {})
    assert warnings.lines == []


@pytest.mark.parametrize("value", ["", "a b", "x" * 129, "evil\nline", "caf\u00e9"])
def test_an_invalid_request_id_is_refused_with_one_warning(warnings, value):
    assert extract({"X-Request-ID": value}).request_id is None
    assert extract({"X-Request-ID": value}).request_id is None
    (line,) = warnings.lines
    assert "Ignored the 'X-Request-ID' header" in line.message
    assert len(line.message.splitlines()) == 1
    assert line.message.isascii()


def test_several_request_ids_are_refused(warnings):
    assert extract({"X-Request-ID": "a", "x-request-id": "b"}).request_id is None
    assert "'a, b'" in warnings.lines[0].message


def test_malformed_incoming_members_are_skipped_one_by_one(warnings):
    header = "tests.http.app|a=1,bad member,tests.http.app|b=\u00e9,tests.http.app|c=3;p"
    carried = extract({"baggage": header}, allow=["tests.http.app"])
    assert carried.stores == {"tests.http.app": {"a": "1", "c": "3"}}
    (line,) = warnings.lines
    assert "malformed member of the incoming Baggage header, 'bad member';" in line.message


@pytest.mark.parametrize(
    "encoded",
    ["mallory%0Ar-999%20user%3Dadmin", "a%0Db", "%00", "tab%09", "del%7F", "c1%C2%85", "%E2%80%A8",
     "%E2%80%A9",
     # Format characters (Cf): the bidi override and isolate of "Trojan Source"
     # (CVE-2021-42574), a zero-width space, a byte order mark, a soft hyphen.
     "admin%E2%80%AEnimda", "%E2%81%A6x%E2%81%A9", "ad%E2%80%8Bmin", "%EF%BB%BFada", "a%C2%ADb"],
)  # fmt: skip
def test_values_that_decode_to_control_characters_are_refused(warnings, encoded):
    header = f"contextual.request|user_id={encoded},tests.http.app|tenant=ok"
    for _ in range(2):
        carried = extract({"baggage": header}, allow={**USER, "tests.http.app": True})
        assert carried.stores == {"tests.http.app": {"tenant": "ok"}}
    (line,) = warnings.lines
    assert f"Ignored the member 'contextual.request|user_id={encoded}" in line.message
    assert "control or format character" in line.message
    assert len(line.message.splitlines()) == 1


def test_keys_that_decode_to_control_characters_are_refused(warnings):
    header = "tests.http.app|bad%0Akey=v,tests.http.app|tenant=ok"
    carried = extract({"baggage": header}, allow=["tests.http.app"])
    assert carried.stores == {"tests.http.app": {"tenant": "ok"}}
    assert "control or format character" in warnings.lines[0].message


@pytest.mark.parametrize(
    ("encoded", "value"),
    [("Zo%C3%AB", "Zoë"), ("%E6%9D%B1%E4%BA%AC", "東京"), ("a%C2%A0b", "a\u00a0b"),
     ("%F0%9F%99%82", "\U0001f642"), ("a%E2%80%83b", "a\u2003b")],
)  # fmt: skip
def test_printable_text_beyond_ascii_travels(warnings, encoded, value):
    # Letters, ideographs, an emoji, and the no-break and em spaces (Zs, not
    # Cc nor Cf): the rule refuses what garbles a line, not what isn't ASCII.
    carried = extract({"baggage": f"contextual.request|user_id={encoded}"}, allow=USER)
    assert carried.stores == {"contextual.request": {"user_id": value}}
    assert warnings.lines == []


def test_a_bidi_override_is_never_the_user(warnings):
    headers = {
        "X-Request-ID": "r-bidi",
        "baggage": "contextual.request|user_id=admin%E2%80%AEnimda",
    }
    with extract(headers, allow=USER).applied():
        assert (get_request_id(), get_current_user()) == ("r-bidi", None)
    (line,) = warnings.lines
    assert "user_id=admin%E2%80%AEnimda" in line.message, "shown as it came, percent-encoded"
    assert "\u202e" not in line.message


def test_a_value_with_control_characters_is_never_the_user_nor_logged(warnings):
    headers = {"X-Request-ID": "r-ctl", "baggage": "contextual.request|user_id=a%0Ab"}
    with extract(headers, allow=USER).applied():
        assert (get_request_id(), get_current_user()) == ("r-ctl", None)
    assert len(warnings.lines) == 1


def test_a_custom_validator_decides_which_request_ids_extract_keeps(warnings):
    def uuid_only(value: str) -> bool:
        return len(value) == 36 and value.count("-") == 4

    uuid = "123e4567-e89b-12d3-a456-426614174000"
    assert extract({"X-Request-ID": uuid}, validator=uuid_only).request_id == uuid
    assert extract({"X-Request-ID": "short"}, validator=uuid_only).request_id is None
    # Long, with spaces: the default check refuses it; this validator takes it.
    wide = "id with spaces " + "x" * 200
    assert extract({"X-Request-ID": wide}, validator=lambda _v: True).request_id == wide
    assert extract({"X-Request-ID": "a\u00e9"}, validator=lambda _v: True).request_id is None
    (line,) = warnings.lines
    assert "Ignored the 'X-Request-ID' header, 'short'" in line.message


def test_a_validator_that_raises_refuses_the_id_with_one_warning(warnings):
    def broken(value: str) -> bool:
        raise RuntimeError(value)

    for _ in range(2):
        assert extract({"X-Request-ID": "r-1"}, validator=broken).request_id is None
    (line,) = warnings.lines
    assert "the validator raised" in line.message
    assert "RuntimeError('r-1')" in line.message


@pytest.mark.parametrize("validator", ["yes", 42])
def test_extract_refuses_a_validator_that_is_not_callable(validator):
    with pytest.raises(TypeError, match="validator must be callable or None"):
        extract({}, validator=validator)


def test_extract_refuses_a_coroutine_function_as_validator():
    async def check(value: str) -> bool:
        return bool(value)

    with pytest.raises(TypeError, match="validator must be a plain function"):
        extract({}, validator=check)


def test_an_incoming_member_over_4096_bytes_is_skipped(warnings):
    header = "tests.http.app|a=" + "x" * 4096 + ",tests.http.app|b=2"
    assert extract({"baggage": header}, allow=["tests.http.app"]).stores == {
        "tests.http.app": {"b": "2"}
    }
    assert "over the limit of 4096 bytes per member" in warnings.lines[0].message


def test_incoming_members_past_the_180th_are_dropped(warnings):
    header = ",".join(f"tests.http.app|k{n}={n}" for n in range(181))
    stores = extract({"baggage": header}, allow=["tests.http.app"]).stores
    assert stores == {"tests.http.app": {f"k{n}": str(n) for n in range(180)}}
    assert "past the 180th" in warnings.lines[0].message


def test_incoming_members_past_byte_8192_are_dropped(warnings):
    first = "tests.http.app|a=" + "x" * 4000
    second = "tests.http.app|b=" + "y" * 4000
    third = "tests.http.app|c=" + "z" * (8192 - len(first) - len(second) - 2 - 17)
    fits = f"{first},{second},{third}"
    assert len(fits) == 8192
    assert extract({"baggage": fits}, allow=["tests.http.app"]).stores["tests.http.app"].keys() == {
        "a",
        "b",
        "c",
    }
    stores = extract({"baggage": fits + "z,tests.http.app|d=1"}, allow=["tests.http.app"]).stores
    assert stores["tests.http.app"].keys() == {"a", "b"}
    assert "limit of 8192 bytes" in warnings.lines[0].message


def test_a_huge_hostile_header_never_raises(warnings):
    header = ",".join(["\x00;;==,,\\" * 50, "k" * 100_000, "a=b;" * 10_000])
    assert extract({"baggage": header, "X-Request-ID": "\x00" * 10_000}, allow=USER) == (
        CarriedContext(None, {})
    )
    for line in warnings.lines:
        assert len(line.message) < 1000
        assert len(line.message.splitlines()) == 1


def test_each_kind_of_problem_is_reported_once_per_process(warnings):
    for _ in range(3):
        extract({"baggage": "bad,a=" + "x" * 5000}, allow=USER)
    assert len(warnings.lines) == 2
    assert all(
        line.message.endswith("Later problems of this kind are not reported.")
        for line in warnings.lines
    )


# -- CarriedContext.applied --------------------------------------------------------


def test_applied_opens_the_carried_request_and_sets_the_stores():
    carried = CarriedContext(
        "r-10",
        {
            "contextual.request": {"user_id": "ada"},
            "tests.http.app": {"tenant": "acme"},
            "tests.http.nobody": {"x": "1"},
        },
    )
    with carried.applied() as request:
        seen = (get_request_id(), get_current_user(), APP.tenant, request.user_id)
    assert seen == ("r-10", "ada", "acme", "ada")
    assert (get_request_id(), APP.tenant) == (None, None)
    assert carried.stores["contextual.request"] == {"user_id": "ada"}, "left as it was"


def test_applied_sets_other_keys_of_the_request_store():
    from contextual._request.request import REQUEST_STORE  # noqa: PLC0415

    carried = CarriedContext("r-11", {"contextual.request": {"user_id": "ada", "locale": "fr"}})
    with carried.applied():
        assert (get_current_user(), REQUEST_STORE.get("locale")) == ("ada", "fr")
    assert "locale" not in REQUEST_STORE


def test_applied_without_a_request_id_opens_a_fresh_one():
    with CarriedContext(None, {}).applied() as request:
        assert FRESH_ID.fullmatch(request.request_id)
        assert get_current_user() is None


# -- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("function", [inject, extract])
def test_a_bad_header_name_is_refused(function):
    with pytest.raises(ValueError, match="header must be an HTTP field name"):
        function({}, header="X Request ID")


@pytest.mark.parametrize("function", [inject, extract])
def test_a_bad_allow_list_is_refused(function):
    with pytest.raises(TypeError, match=re.escape("write allow=['tests.http.app']")):
        function({}, allow="tests.http.app")
