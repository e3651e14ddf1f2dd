"""The MutableMapping contract, on both backends."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import pytest

from contextual import ContextStore


def test_store_is_a_mutable_mapping(store):
    assert isinstance(store, MutableMapping)
    assert isinstance(store, ContextStore)


def test_set_get_len_iter_contains(store):
    store["a"] = 1
    store["b"] = 2
    assert store["a"] == 1
    assert store.get("b") == 2
    assert store.get("missing") is None
    assert store.get("missing", "x") == "x"
    assert len(store) == 2
    assert list(store) == ["a", "b"]
    assert "a" in store
    assert "z" not in store


def test_missing_item_raises_key_error_naming_the_key(store):
    with pytest.raises(KeyError) as info:
        store["nope"]
    assert info.value.args == ("nope",)


def test_overwrite_keeps_insertion_order(store):
    store["a"] = 1
    store["b"] = 2
    store["a"] = 3
    assert list(store.items()) == [("a", 3), ("b", 2)]


def test_delete(store):
    store["a"] = 1
    del store["a"]
    assert "a" not in store
    with pytest.raises(KeyError):
        del store["a"]


def test_pop(store):
    store["a"] = 1
    assert store.pop("a") == 1
    assert store.pop("a", "d") == "d"
    with pytest.raises(KeyError):
        store.pop("a")
    assert dict(store) == {}


def test_popitem_takes_the_last_set_item(store):
    store["a"] = 1
    store["b"] = 2
    assert store.popitem() == ("b", 2)
    assert store.popitem() == ("a", 1)
    with pytest.raises(KeyError, match="empty"):
        store.popitem()


def test_setdefault(store):
    assert store.setdefault("a", 1) == 1
    assert store.setdefault("a", 2) == 1
    assert store.setdefault("n") is None
    assert dict(store) == {"a": 1, "n": None}


def test_update_accepts_mapping_pairs_and_keywords(store):
    store.update({"a": 1})
    store.update([("b", 2)], c=3)
    store.update()
    assert dict(store) == {"a": 1, "b": 2, "c": 3}


def test_clear(store):
    store.update(a=1, b=2)
    store.clear()
    assert dict(store) == {}
    assert len(store) == 0


def test_keys_items_values_are_a_consistent_snapshot(store):
    store.update(a=1, b=2)
    keys, items, values = store.keys(), store.items(), store.values()
    store["c"] = 3
    del store["a"]
    assert list(keys) == ["a", "b"]
    assert list(items) == [("a", 1), ("b", 2)]
    assert list(values) == [1, 2]
    assert keys & {"b", "z"} == {"b"}


def test_iterating_while_writing_does_not_fail(store):
    store.update(a=1, b=2, c=3)
    seen = []
    for key in store:
        seen.append(key)
        store[key + key] = 0
        del store[key]
    assert seen == ["a", "b", "c"]
    assert dict(store) == {"aa": 0, "bb": 0, "cc": 0}


def test_snapshot_is_read_only_and_frozen(store):
    store["a"] = 1
    snap = store.snapshot()
    store["a"] = 2
    store["b"] = 3
    assert isinstance(snap, Mapping)
    assert dict(snap) == {"a": 1}
    with pytest.raises(TypeError):
        snap["a"] = 5  # type: ignore[index]
    assert store["a"] == 2


def test_snapshot_equals_a_dict_with_the_same_values(store):
    store.update(a=1)
    assert store.snapshot() == {"a": 1}


def test_stores_compare_by_identity_and_are_hashable(make_store, backend):
    one = make_store(backend)
    two = make_store(backend)
    assert one == one  # noqa: PLR0124
    assert one != two
    assert one != {}
    assert len({one, two, one}) == 2


def test_writes_of_one_store_never_show_in_another(make_store, backend):
    one = make_store(backend)
    two = make_store(backend)
    one["a"] = 1
    assert "a" not in two


def test_equal_dict_of_values(store):
    store.update(x=1, y=[1, 2])
    assert dict(store) == {"x": 1, "y": [1, 2]}
    assert store.get("y") is store["y"]


@pytest.mark.parametrize("key", [1, b"a", None, ("a",), 1.5])
def test_non_str_keys_raise_type_error_everywhere(store, key):
    store["ok"] = 1
    match = "keys must be str"
    with pytest.raises(TypeError, match=match):
        store[key] = 1
    with pytest.raises(TypeError, match=match):
        store[key]
    with pytest.raises(TypeError, match=match):
        store.get(key)
    with pytest.raises(TypeError, match=match):
        key in store  # noqa: B015
    with pytest.raises(TypeError, match=match):
        del store[key]
    with pytest.raises(TypeError, match=match):
        store.pop(key, None)
    with pytest.raises(TypeError, match=match):
        store.setdefault(key, 1)
    assert dict(store) == {"ok": 1}


def test_unhashable_key_raises_type_error(store):
    with pytest.raises(TypeError, match="keys must be str, got list"):
        store[["a"]]  # type: ignore[index]


def test_update_with_a_bad_key_changes_nothing(store):
    store["a"] = 1
    with pytest.raises(TypeError, match="keys must be str, got int 2"):
        store.update({"b": 1, 2: "x"})  # type: ignore[dict-item]
    assert dict(store) == {"a": 1}


def test_str_subclass_keys_are_accepted(store):
    class Key(str):
        __slots__ = ()

    store[Key("k")] = 1
    assert store["k"] == 1
