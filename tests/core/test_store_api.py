"""Construction, identity, attribute access and defaults of ContextStore."""

from __future__ import annotations

import copy
import datetime as dt
import enum
import inspect
import pickle
import random
import threading
import uuid
from decimal import Decimal
from fractions import Fraction

import pytest

import contextual
from contextual import ContextStore

# -- construction -------------------------------------------------------------


def test_name_backend_and_propagate_are_readable(make_store, backend):
    store = make_store(backend, name="api.readable", propagate=False)
    assert store.name == "api.readable"
    assert store.backend == backend
    assert store.propagate is False
    assert make_store(backend).propagate is True


def test_default_backend_is_context(make_store):
    assert make_store().backend == "context"


def test_repr_names_store_and_backend(make_store):
    plain = make_store("thread", name="api.repr")
    assert repr(plain) == "<ContextStore 'api.repr' backend='thread'>"
    quiet = make_store(name="api.repr.quiet", propagate=False)
    assert repr(quiet) == "<ContextStore 'api.repr.quiet' backend='context' propagate=False>"


def test_repr_does_not_show_values(store):
    store["password"] = "hunter2"
    assert "hunter2" not in repr(store)


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'greenlet'.*'context', 'thread'"):
        ContextStore("api.badbackend", backend="greenlet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown backend"):
        ContextStore("api.badbackend", backend=["thread"])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_is_refused(name):
    with pytest.raises(ValueError, match="non-empty"):
        ContextStore(name)


def test_non_str_name_is_refused():
    with pytest.raises(TypeError, match="store name must be a str, got int"):
        ContextStore(3)  # type: ignore[arg-type]


def test_propagate_must_be_a_bool():
    with pytest.raises(TypeError, match="propagate must be True or False"):
        ContextStore("api.propagate", propagate="yes")  # type: ignore[arg-type]


def test_failed_construction_leaves_the_name_free(unique_name):
    with pytest.raises(TypeError):
        ContextStore(unique_name, defaults=42)  # type: ignore[arg-type]
    store = ContextStore(unique_name)
    assert contextual.get_store(unique_name) is store


def test_a_subclass_is_a_store_class_with_its_own_name():
    class Mine(ContextStore):
        user: str | None = None

    mine = Mine("api.subclass")
    assert isinstance(mine, ContextStore)
    assert repr(mine) == "<Mine 'api.subclass' backend='context'>"
    assert mine.user is None


def test_store_cannot_be_pickled_or_copied(store):
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match=r"can't be pickled or copied.*snapshot"):
            attempt(store)


# -- attribute access ---------------------------------------------------------


def test_attribute_access_reads_and_writes_keys(store):
    store.user = "ada"
    assert store.user == "ada"
    assert store["user"] == "ada"
    store["role"] = "admin"
    assert store.role == "admin"
    del store.user
    assert "user" not in store


def test_missing_attribute_raises_attribute_error(store):
    with pytest.raises(AttributeError, match="has no value 'user'") as info:
        store.user  # noqa: B018
    assert info.value.name == "user"
    assert info.value.obj is store
    assert not hasattr(store, "user")
    assert getattr(store, "user", "fallback") == "fallback"
    with pytest.raises(AttributeError, match="has no value 'user'"):
        del store.user


@pytest.mark.parametrize("name", ["_private", "__dunder__", "_local", "_var", "_name"])
def test_underscore_attributes_are_never_keys(store, name):
    store[name] = "item"
    with pytest.raises(AttributeError):
        getattr(store, name + "_absent")
    with pytest.raises(AttributeError, match="Use item access"):
        setattr(store, name, "x")
    with pytest.raises(AttributeError, match="Use item access"):
        delattr(store, name)
    assert store[name] == "item"


@pytest.mark.parametrize("name", ["get", "keys", "scope", "snapshot", "name", "backend", "clear"])
def test_method_names_are_reserved_for_attribute_writes(store, name):
    original = getattr(type(store), name)
    with pytest.raises(AttributeError, match=rf"store\['{name}'\]"):
        setattr(store, name, "x")
    with pytest.raises(AttributeError, match="reserved"):
        delattr(store, name)
    assert getattr(type(store), name) is original
    # The key itself is still usable by item access, and the method still works.
    store[name] = "value"
    assert store[name] == "value"
    assert store.get(name) == "value"


def test_internals_survive_attempts_to_clobber_them(store, backend):
    for name in ("_name", "_propagate", "_local", "_var", "_get", "__class__"):
        with pytest.raises(AttributeError):
            setattr(store, name, None)
    store["x"] = 1
    assert store["x"] == 1
    assert store.backend == backend


def test_dir_lists_identifier_keys(store):
    store.update({"user": 1, "not an identifier": 2, "get": 3})
    listing = dir(store)
    assert "user" in listing
    assert "not an identifier" not in listing
    assert "scope" in listing
    assert listing.count("get") == 1


# -- defaults -----------------------------------------------------------------


def test_mapping_defaults_act_as_if_set(make_store, backend):
    store = make_store(backend, defaults={"user": None, "lang": "en"})
    assert dict(store) == {"user": None, "lang": "en"}
    assert store.user is None
    del store["lang"]
    assert dict(store) == {"user": None}
    store.clear()
    assert dict(store) == {}


def test_mapping_defaults_are_copied_at_creation(make_store, backend):
    source = {"a": 1}
    store = make_store(backend, defaults=source)
    source["a"] = 2
    source["b"] = 3
    assert dict(store) == {"a": 1}


def test_writes_never_alter_the_defaults_of_other_threads(make_store, backend, run_in_new_thread):
    store = make_store(backend, defaults={"a": 1})
    store["a"] = 2
    store["b"] = 3
    assert run_in_new_thread(lambda: dict(store)) == {"a": 1}


def test_callable_defaults_run_once_per_thread(make_store, backend, run_in_new_thread):
    calls = []

    def factory():
        calls.append(threading.get_ident())
        return {"rng_seed": len(calls)}

    store = make_store(backend, defaults=factory)
    first = store["rng_seed"]
    assert store["rng_seed"] == first
    assert len(calls) == 1

    assert run_in_new_thread(lambda: (store["rng_seed"], store["rng_seed"])) == (2, 2)
    assert len(calls) == 2
    assert calls[0] != calls[1]


def test_callable_defaults_per_thread_object(make_store, backend, run_in_new_thread):
    store = make_store(backend, defaults=lambda: {"rng": random.Random()})
    mine = store["rng"]
    assert store["rng"] is mine
    assert run_in_new_thread(lambda: store["rng"]) is not mine


def test_callable_defaults_must_return_a_mapping(make_store, backend):
    store = make_store(backend, defaults=lambda: ["user"])
    with pytest.raises(TypeError, match=r"defaults\(\) factory .* must be a mapping"):
        store["user"]


def test_callable_defaults_must_use_str_keys(make_store, backend):
    store = make_store(backend, defaults=lambda: {1: "x"})
    with pytest.raises(TypeError, match="non-str key 1"):
        len(store)


def test_failing_factory_is_retried_on_next_access(make_store, backend):
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            msg = "database not ready"
            raise RuntimeError(msg)
        return {"ready": True}

    store = make_store(backend, defaults=factory)
    with pytest.raises(RuntimeError, match="database not ready"):
        store["ready"]
    assert store["ready"] is True
    assert len(attempts) == 2


@pytest.mark.parametrize("bad", [42, "user", [("a", 1)]])
def test_defaults_of_the_wrong_type_are_refused(bad, unique_name):
    with pytest.raises(TypeError, match="defaults must be a mapping or a zero-argument callable"):
        ContextStore(unique_name, defaults=bad)


def test_defaults_with_non_str_keys_are_refused(unique_name):
    with pytest.raises(TypeError, match="non-str key 1"):
        ContextStore(unique_name, defaults={1: "x"})  # type: ignore[dict-item]


class _Color(enum.Enum):
    RED = 1


class _Tag(str):
    """A str subclass: not a known immutable type, whatever it adds."""

    __slots__ = ()


def _shared_helper() -> None:
    """A function: shared by reference everywhere in Python, never per thread."""


@pytest.mark.parametrize(
    "value",
    [
        [],
        {},
        set(),
        bytearray(b"x"),
        object(),
        (1, ["nested"]),
        frozenset({(1, object())}),
        _Tag("x"),
        random.Random(0),
        [].append,
    ],
    ids=type,
)
def test_mapping_defaults_refuse_a_value_not_known_to_be_immutable(value, unique_name):
    with pytest.raises(ValueError, match="tags") as info:
        ContextStore(unique_name, defaults={"user": None, "tags": value})
    message = str(info.value)
    assert repr(unique_name) in message
    assert "defaults=lambda: {'tags': " in message
    with pytest.raises(LookupError):
        contextual.get_store(unique_name)  # refused before it was registered


def test_mutable_default_message_shows_the_factory_to_write(unique_name):
    with pytest.raises(ValueError, match="not known to be immutable") as info:
        ContextStore(unique_name, defaults={"user": None, "tags": [], "seen": set()})
    message = str(info.value)
    assert "'tags' (list)" in message
    assert "'seen' (set)" in message
    assert "defaults=lambda: {'tags': [], 'seen': set()}" in message


def test_mutable_default_message_abbreviates_what_it_cannot_show(unique_name):
    with pytest.raises(ValueError, match="not known to be immutable") as info:
        ContextStore(unique_name, defaults={"ids": list(range(100)), "rng": random.Random(0)})
    assert "defaults=lambda: {'ids': list(...), 'rng': Random(...)}" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        7,
        1.5,
        2j,
        "text",
        b"bytes",
        range(3),
        Decimal("1.10"),
        Fraction(1, 3),
        dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc),
        dt.date(2024, 5, 1),
        dt.time(12, 30),
        dt.timedelta(seconds=30),
        dt.timezone.utc,
        uuid.UUID(int=1),
        _Color.RED,
        (1, ("a", None), frozenset({2, b"c"})),
        frozenset(),
        len,
        _shared_helper,
        int,
    ],
    ids=type,
)
def test_mapping_defaults_accept_values_known_to_be_immutable(value, make_store, backend):
    store = make_store(backend, defaults={"value": value})
    assert store["value"] is value


def test_a_factory_may_return_mutable_values_fresh_for_each_thread(
    make_store, backend, run_in_new_thread
):
    store = make_store(backend, defaults=lambda: {"tags": []})
    store["tags"].append("mine")
    assert run_in_new_thread(lambda: store["tags"]) == []
    assert store["tags"] == ["mine"]


def test_pop_signature_shows_a_readable_sentinel(store):
    assert "= <missing>" in str(inspect.signature(store.pop))


def test_metaclass_names_are_keys_by_attribute(store):
    # "register" and "mro" belong to the metaclass, not to stores.
    store.register = "yes"
    store.mro = 1
    assert store["register"] == "yes"
    assert store.mro == 1
    assert "register" in dir(store)


def test_underscore_attribute_read_explains_item_access(store):
    store["_token"] = "t"
    with pytest.raises(AttributeError, match="_token"):
        store._token  # noqa: B018
    assert store["_token"] == "t"


def test_python_s_own_messages_name_the_public_class(store):
    with pytest.raises(TypeError, match="'ContextStore' object is not callable"):
        store()  # type: ignore[operator]
    assert type(store).__name__ == "ContextStore"
