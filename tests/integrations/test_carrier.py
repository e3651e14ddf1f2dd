"""AllowList and applied(): what may cross a process boundary, and how it comes back."""

from __future__ import annotations

from typing import Any

import pytest

from contextual import ContextStore, get_request_id, request_context
from contextual.integrations import AllowSpec
from contextual.integrations._carrier import AllowList, applied


@pytest.fixture
def tenant(make_store) -> ContextStore:
    return make_store(name="carrier.tenant")


def test_by_default_only_the_request_id_may_travel() -> None:
    allow = AllowList()
    assert allow.allows("contextual.request", "request_id")
    assert not allow.allows("contextual.request", "user_id")
    assert not allow.allows("anything", "else")


def test_the_request_id_travels_even_when_its_store_is_listed_without_it() -> None:
    for spec in ({"contextual.request": ["user_id"]}, {"contextual.request": False}):
        assert AllowList(spec).allows("contextual.request", "request_id")
    assert AllowList({"contextual.request": ["user_id"]}).allows("contextual.request", "user_id")


def test_store_names_allow_every_key_of_those_stores() -> None:
    allow = AllowList(["carrier.tenant"])
    assert allow.allows("carrier.tenant", "anything")
    assert AllowList({"carrier.tenant": True}).allows("carrier.tenant", "anything")


def test_a_mapping_allows_the_named_keys_only() -> None:
    allow = AllowList({"carrier.tenant": ["tenant"], "other": False})
    assert allow.allows("carrier.tenant", "tenant")
    assert not allow.allows("carrier.tenant", "secret")
    assert not allow.allows("other", "tenant")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("carrier.tenant", r"got the string 'carrier\.tenant'; write allow=\['carrier\.tenant'\]"),
        (42, "allow must be None, store names, or a mapping"),
        ([""], "a non-empty str"),
        ({3: True}, "a non-empty str"),
        ({"s": "key"}, r"allow\['s'\] must be True \(every key\) or key names in a list"),
        ({"s": 3}, r"allow\['s'\] must be True"),
        ({"s": [3]}, r"allow\['s'\] names keys by str, got 3"),
    ],
)
def test_a_bad_allow_list_is_refused_with_advice(spec: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        AllowList(spec)


def test_repr_lists_what_may_travel() -> None:
    allow = AllowList({"carrier.tenant": True, "contextual.request": ["user_id"]})
    assert repr(allow) == (
        "AllowList({'carrier.tenant': all, 'contextual.request': ['request_id', 'user_id']})"
    )


def test_select_keeps_only_allowed_stores_and_keys() -> None:
    allow = AllowList({"carrier.tenant": ["tenant"]})
    selected = allow.select(
        {
            "carrier.tenant": {"tenant": "acme", "secret": "s"},
            "contextual.request": {"request_id": "r-1", "user_id": "ada"},
            "private": {"k": "v"},
            "carrier.empty": {"secret": "s"},
        }
    )
    assert selected == {
        "carrier.tenant": {"tenant": "acme"},
        "contextual.request": {"request_id": "r-1"},
    }


def test_outgoing_reads_the_allowed_values_of_the_current_context(tenant: ContextStore) -> None:
    allow = AllowList({"carrier.tenant": ["tenant"], "contextual.request": ["user_id"]})
    with request_context(request_id="r-2", user_id="ada"), tenant.scope(tenant="acme", secret="s"):
        assert allow.outgoing() == {
            "contextual.request": {"request_id": "r-2", "user_id": "ada"},
            "carrier.tenant": {"tenant": "acme"},
        }
    assert allow.outgoing() == {}


def test_applied_sets_values_for_the_block_and_restores_exactly(tenant: ContextStore) -> None:
    tenant["tenant"] = "before"
    with applied({"carrier.tenant": {"tenant": "carried", "self": "x"}, "not.here": {"k": "v"}}):
        assert dict(tenant) == {"tenant": "carried", "self": "x"}
        tenant["written"] = "inside"
    assert dict(tenant) == {"tenant": "before"}  # nothing reset to None, nothing left behind
    del tenant["tenant"]


def test_applied_request_values_are_the_current_request_inside_the_block() -> None:
    with applied({"contextual.request": {"request_id": "r-3"}}):
        assert get_request_id() == "r-3"
    assert get_request_id() is None


def test_allow_spec_is_public_for_annotations() -> None:
    spec: AllowSpec = {"carrier.tenant": True}
    assert AllowList(spec).allows("carrier.tenant", "k")
