"""Typed store classes: fields declared in a ContextStore subclass, read by attribute.

Black-box tests of the class API: declaring fields and class options, what
attribute and item access do, what is refused when the class is created or
instantiated, plain stores' new refusals, redefinition under a live name,
propagation of typed values, and what mypy --strict makes of a typed store.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import importlib
import multiprocessing
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import MutableMapping
from typing import Any, ClassVar

import pytest

from contextual import (
    ContextExecutor,
    ContextProcessPoolExecutor,
    ContextStore,
    StoreDefaultsError,
    capture,
    current_request,
    field,
    get_current_user,
    get_request_id,
    get_store,
    list_stores,
)
from contextual._request.request import open_request
from support import typed as support

FIELDS = ("tenant", "user_id", "tags", "trace_id")


def _request_state(backend: str, *, propagate: bool = True) -> type[Any]:
    """Define the spec's RequestState afresh, with the given class options."""

    class RequestState(ContextStore, backend=backend, propagate=propagate):
        """Per-request values."""

        tenant: str | None = None
        user_id: int | None = None
        tags: list[str] = field(default_factory=list)
        trace_id: str

    return RequestState


@pytest.fixture
def typed(backend, unique_name):
    """A RequestState of the test's backend, under a name of its own."""
    return _request_state(backend)(unique_name)


def _start_from_empty_contexts(*threads: threading.Thread) -> None:
    # On builds where a new thread inherits its starter's context, an empty
    # one makes every thread start alike (see conftest.run_in_new_thread).
    for thread in threads:
        contextvars.Context().run(thread.start)


def _join(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


def _fields_named_in(message: str) -> set[str]:
    return {name for name in FIELDS if re.search(rf"\b{name}\b", message)}


def _suggests_item_access(message: str, key: str) -> bool:
    return re.search(rf"\[['\"]{re.escape(key)}['\"]\]", message) is not None


# -- declaring ----------------------------------------------------------------


def test_a_typed_store_is_an_instance_of_its_class_and_a_context_store(backend, unique_name):
    state = _request_state(backend)
    store = state(unique_name)
    assert isinstance(store, state)
    assert isinstance(store, ContextStore)
    assert isinstance(store, MutableMapping)


def test_fields_with_defaults_start_with_their_defaults(typed):
    assert dict(typed) == {"tenant": None, "user_id": None, "tags": []}
    assert (typed.tenant, typed.user_id, typed.tags) == (None, None, [])


def test_a_field_without_default_is_unset_until_written(typed):
    assert "trace_id" not in typed
    with pytest.raises(AttributeError) as info:
        _ = typed.trace_id
    assert "trace_id" in str(info.value)
    assert info.value.name == "trace_id"
    typed.trace_id = "t-1"
    assert typed.trace_id == "t-1"
    assert typed["trace_id"] == "t-1"


def test_getattr_with_a_default_and_hasattr_work_on_an_unset_field(typed):
    assert getattr(typed, "trace_id", "no trace") == "no trace"
    assert not hasattr(typed, "trace_id")
    assert hasattr(typed, "tenant")


def test_default_factory_gives_each_thread_its_own_object(typed):
    barrier = threading.Barrier(2)
    seen: dict[str, Any] = {}

    def work(tag: str) -> None:
        tags = typed.tags
        tags.append(tag)
        barrier.wait(timeout=10)  # both threads appended before either reads
        seen[tag] = (tags, list(typed.tags))

    threads = [threading.Thread(target=work, args=(tag,)) for tag in ("a", "b")]
    _start_from_empty_contexts(*threads)
    _join(*threads)
    assert seen["a"][1] == ["a"]
    assert seen["b"][1] == ["b"]
    assert seen["a"][0] is not seen["b"][0]
    assert typed.tags == []


def test_default_factory_gives_each_task_its_own_object(unique_name):
    store = _request_state("context")(unique_name)

    async def work(tag: str, mine: asyncio.Event, other: asyncio.Event) -> tuple[list[str], ...]:
        tags = store.tags
        tags.append(tag)
        mine.set()
        await other.wait()  # both tasks appended before either reads
        return tags, list(store.tags)

    async def main() -> list[tuple[list[str], ...]]:
        a, b = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(work("a", a, b), work("b", b, a))

    (a_list, a_seen), (b_list, b_seen) = asyncio.run(main())
    assert a_seen == ["a"]
    assert b_seen == ["b"]
    assert a_list is not b_list
    assert store.tags == []


def test_default_factory_gives_each_fresh_context_its_own_object(unique_name):
    store = _request_state("context")(unique_name)
    first = contextvars.Context().run(lambda: store.tags)
    second = contextvars.Context().run(lambda: store.tags)
    assert first == second == []
    assert first is not second


def test_tasks_on_one_thread_share_a_thread_store_s_factory_object(unique_name):
    # threading.local semantics, as for every "thread" store.
    store = _request_state("thread")(unique_name)

    async def read_tags() -> list[str]:
        return store.tags

    async def main() -> list[list[str]]:
        return await asyncio.gather(read_tags(), read_tags())

    first, second = asyncio.run(main())
    assert first is second


def test_default_factory_runs_once_per_thread_on_first_access(unique_name, run_in_new_thread):
    calls: list[str] = []

    def make_tags() -> list[str]:
        calls.append(threading.current_thread().name)
        return []

    class Counted(ContextStore, backend="thread"):
        tags: list[str] = field(default_factory=make_tags)

    store = Counted(unique_name)
    assert calls == []
    store.tags.append("x")
    assert store.tags == ["x"]
    assert len(calls) == 1
    assert run_in_new_thread(lambda: (store.tags, store.tags)) == ([], [])
    assert len(calls) == 2


def test_subclasses_inherit_fields_add_fields_and_override_defaults(backend, unique_name):
    base = _request_state(backend)

    class Admin(base):
        tenant: str | None = "root"
        level: int = 1

    store = Admin(unique_name)
    assert dict(store) == {"tenant": "root", "user_id": None, "tags": [], "level": 1}
    store.trace_id = "t-1"
    assert store["trace_id"] == "t-1"
    assert isinstance(store, base)


def test_subclasses_inherit_class_options(unique_name):
    base = _request_state("thread", propagate=False)

    class Inheriting(base):
        extra: int = 0

    store = Inheriting(unique_name)
    assert (store.backend, store.propagate) == ("thread", False)


def test_subclasses_may_override_class_options(unique_name):
    base = _request_state("thread", propagate=False)

    class Overriding(base, backend="context", propagate=True):
        pass

    store = Overriding(unique_name)
    assert (store.backend, store.propagate) == ("context", True)


@pytest.mark.parametrize("propagate", [True, False])
def test_class_options_set_backend_and_propagate(backend, propagate, unique_name):
    store = _request_state(backend, propagate=propagate)(unique_name)
    assert store.backend == backend
    assert store.propagate is propagate


def test_class_options_default_to_context_and_propagate(unique_name):
    class Plain(ContextStore):
        tenant: str | None = None

    store = Plain(unique_name)
    assert (store.backend, store.propagate) == ("context", True)


def test_classvar_annotations_are_not_fields(backend, unique_name):
    class Limited(ContextStore, backend=backend):
        limit: ClassVar[int] = 3
        tenant: str | None = None

    store = Limited(unique_name)
    assert Limited.limit == 3
    assert dict(store) == {"tenant": None}
    assert "limit" not in store
    with pytest.raises(AttributeError, match=r"tenant"):
        store.limit = 4


@pytest.mark.parametrize(
    ("future", "annotation"),
    [
        ("", "ClassVar[int]"),
        ("", "typing.ClassVar[int]"),
        ("", "'ClassVar[int]'"),
        ("from __future__ import annotations", "ClassVar[int]"),
        ("from __future__ import annotations", "typing.ClassVar[int]"),
    ],
    ids=["name", "qualified", "string", "future-name", "future-qualified"],
)
def test_classvar_is_recognised_however_it_is_spelled(future, annotation, unique_name):
    source = textwrap.dedent(f"""
        {future}
        import typing
        from typing import ClassVar
        from contextual import ContextStore

        class Limited(ContextStore):
            limit: {annotation} = 3
            tenant: str | None = None

        store = Limited({unique_name!r})
        """)
    namespace: dict[str, Any] = {"__name__": "classvar_cell"}
    # dont_inherit: this test module's own `from __future__ import annotations`
    # must not reach the source.
    exec(compile(source, "classvar_cell", "exec", dont_inherit=True), namespace)  # noqa: S102
    assert dict(namespace["store"]) == {"tenant": None}


def test_methods_and_properties_in_the_body_work(backend, unique_name):
    class Session(ContextStore, backend=backend):
        tenant: str | None = None

        def login(self, tenant: str) -> None:
            self.tenant = tenant

        @property
        def label(self) -> str:
            return f"tenant={self.tenant}"

    store = Session(unique_name)
    store.login("acme")
    assert store.tenant == "acme"
    assert store.label == "tenant=acme"


def test_method_names_are_never_keys_by_attribute(unique_name):
    class Session(ContextStore):
        tenant: str | None = None

        def login(self, tenant: str) -> None:
            self.tenant = tenant

    store = Session(unique_name)
    store["login"] = "by item"
    assert store["login"] == "by item"
    assert callable(store.login)
    with pytest.raises(AttributeError, match=r"(?s)\blogin\b.*\btenant\b|\btenant\b.*\blogin\b"):
        store.login = "by attribute"
    assert store["login"] == "by item"


class Derived(ContextStore):
    """A module-level class whose stores take the derived name."""

    tenant: str | None = None


def test_the_store_name_is_derived_from_module_and_qualified_name():
    store = Derived()
    assert store.name == f"{Derived.__module__}.Derived"
    assert get_store(store.name) is store


def test_the_derived_name_of_a_nested_class_uses_its_qualified_name():
    store = _request_state("context")()
    assert store.name == f"{__name__}._request_state.<locals>.RequestState"


def test_a_name_given_at_instantiation_is_the_store_name(unique_name):
    state = _request_state("context")
    by_position = state(unique_name)
    by_keyword = state(name=f"{unique_name}.kw")
    assert by_position.name == unique_name
    assert by_keyword.name == f"{unique_name}.kw"
    assert get_store(unique_name) is by_position


# -- attribute access ---------------------------------------------------------


def test_setting_a_field_by_attribute_writes_its_key(typed):
    typed.tenant = "acme"
    assert typed["tenant"] == "acme"
    assert typed.tenant == "acme"
    assert dict(typed)["tenant"] == "acme"


def test_writing_a_field_by_item_is_seen_by_attribute(typed):
    typed["user_id"] = 7
    assert typed.user_id == 7


def test_deleting_a_field_by_attribute_unsets_it(typed, run_in_new_thread):
    typed.tenant = "acme"
    del typed.tenant
    assert "tenant" not in typed
    with pytest.raises(AttributeError, match=r"\btenant\b"):
        _ = typed.tenant
    # Another thread or context that never wrote still starts from the default.
    assert run_in_new_thread(lambda: typed.tenant) is None


def test_deleting_an_unset_field_raises_attribute_error_naming_it(typed):
    with pytest.raises(AttributeError, match=r"\btrace_id\b"):
        del typed.trace_id


def test_field_writes_by_attribute_stay_in_their_thread(typed):
    written = threading.Event()
    checked = threading.Event()
    seen: dict[str, object] = {}

    def owner() -> None:
        typed.tenant = "owner"
        written.set()
        seen["owner in order"] = checked.wait(timeout=10)
        seen["owner"] = typed.tenant

    def other() -> None:
        seen["other in order"] = written.wait(timeout=10)
        seen["other"] = typed.tenant
        typed.tenant = "other"
        checked.set()

    threads = [threading.Thread(target=owner), threading.Thread(target=other)]
    _start_from_empty_contexts(*threads)
    _join(*threads)
    assert seen == {
        "owner in order": True,
        "other in order": True,
        "owner": "owner",
        "other": None,
    }
    assert typed.tenant is None


def test_reading_an_undeclared_attribute_is_python_s_own_attribute_error(typed):
    # No __getattr__ on a store class (it would make every field read twice
    # as slow): Python's own error, whose traceback suggests a close field.
    with pytest.raises(AttributeError) as info:
        _ = typed.tenat
    assert str(info.value) == f"'{type(typed).__name__}' object has no attribute 'tenat'"
    assert info.value.name == "tenat"
    assert info.value.obj is typed
    assert "tenant" in dir(typed)


def test_an_undeclared_attribute_is_refused_even_when_set_by_item(typed):
    typed["other"] = 1
    with pytest.raises(AttributeError, match=r"other"):
        _ = typed.other
    assert typed["other"] == 1


def test_setting_an_undeclared_attribute_is_refused_and_writes_nothing(typed):
    with pytest.raises(AttributeError) as info:
        typed.other = 1
    message = str(info.value)
    assert _fields_named_in(message) == set(FIELDS)
    assert _suggests_item_access(message, "other")
    assert "other" not in typed


def test_deleting_an_undeclared_attribute_is_refused(typed):
    typed["other"] = 1
    with pytest.raises(AttributeError, match=r"other"):
        del typed.other
    assert typed["other"] == 1


@pytest.mark.parametrize("key", ["other", "_private", "name", "get", "with space", ""])
def test_item_access_takes_any_str_key(typed, key):
    typed[key] = "value"
    assert typed[key] == "value"
    assert key in typed
    del typed[key]
    assert key not in typed


def test_typed_store_methods_still_work(typed):
    typed.update(tenant="acme", other=1)
    assert typed.get("tenant") == "acme"
    assert typed.pop("other") == 1
    assert sorted(typed.keys()) == ["tags", "tenant", "user_id"]
    assert typed.snapshot()["tenant"] == "acme"


def test_scope_sets_a_field_and_restores_it(typed):
    typed.tenant = "outer"
    with typed.scope(tenant="inner", user_id=7) as inside:
        assert inside is typed
        assert (typed.tenant, typed.user_id) == ("inner", 7)
        typed.trace_id = "inside only"
    assert (typed.tenant, typed.user_id) == ("outer", None)
    assert "trace_id" not in typed


def test_a_scope_keyword_that_is_not_a_field_is_refused(typed):
    with pytest.raises(TypeError) as info:
        typed.scope(tenant="acme", other=1)
    message = str(info.value)
    assert "other" in message
    assert _fields_named_in(message) == set(FIELDS)
    assert typed.tenant is None


def test_a_scope_mapping_takes_any_key_on_a_typed_store(typed):
    with typed.scope({"any key": 1, "name": "n", "_private": 2, "tenant": "acme"}):
        assert typed["any key"] == 1
        assert typed["name"] == "n"
        assert typed["_private"] == 2
        assert typed.tenant == "acme"
        assert typed.name != "n"
    assert "any key" not in typed
    assert typed.tenant is None


def test_a_scope_mapping_takes_any_key_on_a_plain_store(store):
    with store.scope({"any key": 1, "name": "n", "get": "g"}):
        assert store["any key"] == 1
        assert store["name"] == "n"
        assert store["get"] == "g"
    assert dict(store) == {}


# -- refused at class creation ------------------------------------------------


def _assert_says_rename_or_item_access(message: str, name: str) -> None:
    assert re.search(rf"['\"]?{re.escape(name)}\b", message), message
    assert re.search(r"rename", message, re.IGNORECASE), message
    assert re.search(r"item access|\[['\"]", message), message


def test_a_field_whose_name_starts_with_an_underscore_is_refused():
    with pytest.raises(TypeError) as info:

        class Hidden(ContextStore):
            _secret: str | None = None

    _assert_says_rename_or_item_access(str(info.value), "_secret")


MEMBERS = [
    "name",
    "backend",
    "propagate",
    "get",
    "items",
    "keys",
    "values",
    "scope",
    "snapshot",
    "update",
    "clear",
    "pop",
    "popitem",
    "setdefault",
]


@pytest.mark.parametrize("member", MEMBERS)
def test_a_field_named_like_a_store_member_is_refused(member):
    source = f"class Colliding(ContextStore):\n    {member}: str | None = None\n"
    with pytest.raises(TypeError) as info:
        exec(source, {"ContextStore": ContextStore})  # noqa: S102
    message = str(info.value)
    _assert_says_rename_or_item_access(message, member)
    assert "ContextStore" in message  # whose member it is


def test_a_field_named_like_a_method_of_the_body_is_refused():
    with pytest.raises(TypeError) as info:

        class Session(ContextStore):
            label: str

            def label(self) -> str:  # type: ignore[no-redef]
                return "x"

    _assert_says_rename_or_item_access(str(info.value), "label")


def test_a_field_named_like_a_property_of_the_body_is_refused():
    with pytest.raises(TypeError) as info:

        class Session(ContextStore):
            label: str

            @property  # type: ignore[no-redef]
            def label(self) -> str:
                return "x"

    _assert_says_rename_or_item_access(str(info.value), "label")


def test_a_field_named_like_a_method_of_a_base_store_class_is_refused():
    class Base(ContextStore):
        tenant: str | None = None

        def describe(self) -> str:
            return str(self.tenant)

    with pytest.raises(TypeError) as info:

        class Sub(Base):
            describe: str | None = None

    message = str(info.value)
    _assert_says_rename_or_item_access(message, "describe")
    assert "Base" in message


@pytest.mark.parametrize("method", ["__init__", "__new__"])
def test_a_body_that_defines_init_or_new_is_refused(method):
    source = textwrap.dedent(f"""
        class WithInit(ContextStore):
            tenant: str | None = None

            def {method}(self, *args, **kwargs):
                pass
        """)
    with pytest.raises(TypeError) as info:
        exec(source, {"ContextStore": ContextStore})  # noqa: S102
    message = str(info.value)
    assert method in message
    assert "default_factory" in message


def test_an_unknown_class_keyword_is_refused():
    with pytest.raises(TypeError) as info:

        class Typo(ContextStore, backnd="thread"):  # type: ignore[call-arg]
            tenant: str | None = None

    message = str(info.value)
    assert "backnd" in message
    assert "backend" in message
    assert "propagate" in message


def test_an_unknown_backend_class_option_is_refused():
    with pytest.raises(ValueError, match=r"'process'") as info:

        class Elsewhere(ContextStore, backend="process"):  # type: ignore[arg-type]
            tenant: str | None = None

    assert "'context'" in str(info.value)
    assert "'thread'" in str(info.value)


class Box:
    """An instance of a class of our own: not known to be immutable."""


@pytest.mark.parametrize(
    "default",
    [[], {}, set(), bytearray(b"x"), Box(), ([],)],
    ids=["list", "dict", "set", "bytearray", "own-class", "tuple-of-list"],
)
@pytest.mark.parametrize("spelling", ["plain", "field"])
def test_a_mutable_default_is_refused_with_the_factory_spelling(default, spelling):
    namespace = {"ContextStore": ContextStore, "field": field, "value": default}
    value = "value" if spelling == "plain" else "field(default=value)"
    source = f"class Mutable(ContextStore):\n    holder: object = {value}\n"
    with pytest.raises(ValueError, match=r"holder") as info:
        exec(source, namespace)  # noqa: S102
    message = str(info.value)
    assert "holder" in message
    assert "field(default_factory=" in message


class Level(enum.Enum):
    INFO = 20


@pytest.mark.parametrize(
    "default",
    [None, 1, "s", b"b", (1, "a"), frozenset({1}), Level.INFO, len, Box],
    ids=["none", "int", "str", "bytes", "tuple", "frozenset", "enum", "builtin", "class"],
)
def test_a_default_known_to_be_immutable_is_accepted(default, unique_name):
    namespace = {"ContextStore": ContextStore, "value": default}
    exec("class Fine(ContextStore):\n    holder: object = value\n", namespace)  # noqa: S102
    store = namespace["Fine"](unique_name)
    assert store.holder is default


def test_field_with_both_default_and_default_factory_is_refused():
    with pytest.raises((TypeError, ValueError)) as info:

        class Both(ContextStore):
            tags: list[str] = field(default=(), default_factory=list)  # type: ignore[call-overload]

    message = str(info.value)
    assert "default_factory" in message
    assert re.search(r"\bdefault\b", message)


def test_field_default_and_default_factory_are_keyword_only():
    with pytest.raises(TypeError):
        field(None)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("option", "value"),
    [("backend", "thread"), ("defaults", {"tenant": None}), ("propagate", False)],
)
def test_options_passed_at_instantiation_of_a_typed_class_are_refused(option, value, unique_name):
    state = _request_state("context")
    with pytest.raises(TypeError) as info:
        state(unique_name, **{option: value})
    message = str(info.value)
    assert option in message
    assert re.search(r"class", message, re.IGNORECASE)
    with pytest.raises(LookupError):
        get_store(unique_name)


def test_a_context_store_without_a_name_is_refused():
    with pytest.raises(TypeError, match=r"name"):
        ContextStore()  # type: ignore[call-arg]


# -- plain stores -------------------------------------------------------------


@pytest.mark.parametrize("member", ["name", "get", "keys", "scope", "backend", "clear"])
def test_plain_defaults_named_like_a_member_are_refused(member, unique_name):
    with pytest.raises(ValueError, match=rf"\b{member}\b") as info:
        ContextStore(unique_name, defaults={member: "ada"})
    message = str(info.value)
    assert "ContextStore" in message  # whose member it is
    assert re.search(r"item access|\[['\"]", message), message
    with pytest.raises(LookupError):
        get_store(unique_name)


def test_plain_defaults_may_start_with_an_underscore(make_store, backend):
    store = make_store(backend, defaults={"_internal": 1})
    assert store["_internal"] == 1


def test_plain_scope_keyword_named_like_a_member_is_refused(store):
    with pytest.raises(TypeError) as info:
        store.scope(name="bob")
    message = str(info.value)
    assert re.search(r"\bname\b", message)
    assert re.search(r"scope\(\{['\"]name['\"]", message), message
    assert "name" not in store


def test_plain_store_item_access_still_takes_member_names(store):
    store["name"] = 1
    assert store["name"] == 1
    assert store.name != 1


def test_plain_store_attribute_access_still_works_for_other_keys(store):
    store.user = "ada"
    assert store["user"] == "ada"
    assert store.user == "ada"


# -- redefinition -------------------------------------------------------------


def test_redefining_a_typed_store_makes_a_new_object_over_the_same_values(typed):
    typed.tenant = "before"
    again = type(typed)(typed.name)
    assert again is not typed
    assert again.tenant == "before"
    again.user_id = 7
    assert typed.user_id == 7
    del typed.tenant
    assert "tenant" not in again


def test_redefining_a_typed_store_shares_what_its_factory_made(typed):
    typed.tags.append("made before")
    again = type(typed)(typed.name)
    assert again.tags is typed.tags
    assert again.tags == ["made before"]


def test_the_newest_definition_is_the_registry_s_store(typed):
    again = type(typed)(typed.name)
    assert get_store(typed.name) is again
    assert [s for s in list_stores() if s.name == typed.name] == [again]


def test_a_redefined_thread_store_shares_values_in_another_thread(unique_name, run_in_new_thread):
    old = _request_state("thread")(unique_name)
    new = _request_state("thread")(unique_name)

    def both_ways() -> tuple[object, object]:
        old.tenant = "via old"
        new.user_id = 7
        return new.tenant, old.user_id

    assert run_in_new_thread(both_ways) == ("via old", 7)
    # The thread's values were its own: this thread sees the defaults.
    assert (old.tenant, new.user_id) == (None, None)


def test_a_redefined_context_store_shares_values_in_a_task(unique_name):
    old = _request_state("context")(unique_name)
    new = _request_state("context")(unique_name)

    async def main() -> tuple[object, object, object]:
        old.tenant = "via old"
        seen_by_task = await asyncio.create_task(_read(new))
        return new.tenant, seen_by_task, old.tenant

    async def _read(store: Any) -> object:
        return store.tenant

    assert asyncio.run(main()) == ("via old", "via old", "via old")
    assert new.tenant is None


def test_the_same_class_defined_again_counts_as_the_same_definition(unique_name):
    # _request_state makes a new class object each time, with the same fields.
    first = _request_state("context")(unique_name)
    first.tenant = "kept"
    second = _request_state("context")(unique_name)
    assert second is not first
    assert second.tenant == "kept"


CELL = """\
from contextual import ContextStore, field


class Session(ContextStore, backend="thread"):
    user: str | None = None
    tags: list[str] = field(default_factory=list)
    seeded: list[int] = field(default_factory=lambda: [1, 2])
{blank}
store = Session({name!r})
"""


def test_a_class_run_again_from_the_same_source_is_the_same_definition(unique_name):
    cell: dict[str, Any] = {"__name__": "notebook"}
    exec(CELL.format(name=unique_name, blank=""), cell)  # noqa: S102
    cell["store"].user = "ada"
    rerun: dict[str, Any] = {"__name__": "notebook"}
    # The same cell run again after an edit above the store: line numbers differ.
    exec(CELL.format(name=unique_name, blank="\n\n"), rerun)  # noqa: S102
    assert rerun["Session"] is not cell["Session"]
    assert rerun["store"] is not cell["store"]
    assert rerun["store"].user == "ada"
    rerun["store"].tags.append("x")
    assert cell["store"].tags == ["x"]
    assert get_store(unique_name) is rerun["store"]


class First(ContextStore):
    tenant: str | None = None


@pytest.mark.parametrize(
    ("second", "described"),
    [
        ("tenant: str | None = 'root'", "'tenant': 'root'"),
        ("tenant: str | None = None\n    extra: int = 0", "'extra': 0"),
        ("tenant: str | None", "tenant"),
        ("tenant: str | None = field(default_factory=str)", "str"),
        ("tenant: str | None = None\n    trace_id: str", "trace_id"),
    ],
    ids=["default", "extra-field", "no-default", "factory", "extra-field-without-default"],
)
def test_a_different_typed_definition_under_a_live_name_is_refused(second, described, unique_name):
    first = First(unique_name)
    first.tenant = "kept"
    namespace: dict[str, Any] = {"ContextStore": ContextStore, "field": field}
    exec(f"class Second(ContextStore):\n    {second}\n", namespace)  # noqa: S102
    with pytest.raises(ValueError, match=re.escape(unique_name)) as info:
        namespace["Second"](unique_name)
    message = str(info.value)
    live, refused = message.split("Second", 1)
    assert "First" in live
    assert "'tenant': None" in live
    assert described in refused
    assert get_store(unique_name) is first
    assert first.tenant == "kept"


def test_another_store_class_with_the_same_fields_is_refused(unique_name):
    first = First(unique_name)

    class Lookalike(ContextStore):
        tenant: str | None = None

    with pytest.raises(ValueError, match=re.escape(unique_name)) as info:
        Lookalike(unique_name)
    assert "First" in str(info.value)
    assert "Lookalike" in str(info.value)
    assert get_store(unique_name) is first


@pytest.mark.parametrize(
    ("options", "live", "refused"),
    [
        ("backend='thread'", "backend='context'", "backend='thread'"),
        ("propagate=False", "propagate=True", "propagate=False"),
    ],
)
def test_a_typed_definition_with_other_class_options_is_refused(
    options, live, refused, unique_name
):
    first = First(unique_name)
    namespace: dict[str, Any] = {"ContextStore": ContextStore}
    exec(f"class Second(ContextStore, {options}):\n    tenant: str | None = None\n", namespace)  # noqa: S102
    with pytest.raises(ValueError, match=re.escape(unique_name)) as info:
        namespace["Second"](unique_name)
    message = str(info.value)
    assert live in message
    assert refused in message
    assert get_store(unique_name) is first


@pytest.mark.parametrize("defaults", [None, {"tenant": None}], ids=["none", "the-same"])
def test_a_plain_store_under_a_typed_store_s_name_is_refused(defaults, unique_name):
    first = First(unique_name)
    with pytest.raises(ValueError, match=re.escape(unique_name)) as info:
        ContextStore(unique_name, defaults=defaults)
    assert "First" in str(info.value)
    assert get_store(unique_name) is first


@pytest.mark.parametrize("defaults", [{"user": None}, {"tenant": None}], ids=["other", "the-same"])
def test_a_typed_store_under_a_plain_store_s_name_is_refused(defaults, unique_name):
    first = ContextStore(unique_name, defaults=defaults)
    with pytest.raises(ValueError, match=re.escape(unique_name)) as info:
        First(unique_name)
    assert "First" in str(info.value)
    assert get_store(unique_name) is first


@pytest.fixture
def typed_module(tmp_path, monkeypatch, unique_name):
    """Write a module that defines a typed store class; import or reload it."""
    module_name = f"typed_reload_{unique_name.replace('.', '_')}"
    path = tmp_path / f"{module_name}.py"
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(body: str) -> Any:
        source = (
            "from contextual import ContextStore, field\n\n\n"
            "class State(ContextStore):\n"
            + textwrap.indent(textwrap.dedent(body), "    ")
            + "\n\ncurrent = State()\n"
        )
        path.write_text(source, encoding="utf-8")
        importlib.invalidate_caches()
        if module_name in sys.modules:
            return importlib.reload(sys.modules[module_name])
        return importlib.import_module(module_name)

    yield write
    sys.modules.pop(module_name, None)


TYPED_BODY = """
tenant: str | None = None
tags: list[str] = field(default_factory=list)
"""


def test_reloading_a_module_that_defines_a_typed_store_keeps_its_values(typed_module):
    module = typed_module(TYPED_BODY)
    old, old_class = module.current, module.State
    assert old.name == f"{module.__name__}.State"
    old.tenant = "before the reload"
    old.tags.append("x")
    reloaded = typed_module(TYPED_BODY)
    assert reloaded.State is not old_class
    assert reloaded.current is not old
    assert reloaded.current.tenant == "before the reload"
    assert reloaded.current.tags == ["x"]
    reloaded.current.tenant = "after"
    assert old.tenant == "after"
    assert get_store(old.name) is reloaded.current


def test_reloading_a_typed_store_with_an_edited_field_is_refused(typed_module):
    module = typed_module(TYPED_BODY)
    with pytest.raises(ValueError, match=re.escape(module.current.name)) as info:
        typed_module(TYPED_BODY.replace("= None", "= 'root'"))
    assert "tenant" in str(info.value)
    assert get_store(module.current.name) is module.current


# -- propagation --------------------------------------------------------------


def test_capture_carries_typed_values(typed, run_in_new_thread):
    typed.tenant = "acme"
    typed.trace_id = "t-1"
    snapshot = capture()
    typed.tenant = "changed after"
    seen = run_in_new_thread(lambda: snapshot.run(lambda: (typed.tenant, typed.trace_id)))
    assert seen == ("acme", "t-1")


def test_a_propagate_false_typed_store_stays_behind(backend, unique_name, run_in_new_thread):
    local = _request_state(backend, propagate=False)(unique_name)
    local.tenant = "stays here"
    snapshot = capture()
    assert run_in_new_thread(lambda: snapshot.run(lambda: local.tenant)) is None


def test_context_executor_carries_typed_values(typed):
    typed.tenant = "acme"
    with ContextExecutor(max_workers=1) as pool:
        seen = pool.submit(lambda: (typed.tenant, typed.user_id)).result(timeout=30)
    assert seen == ("acme", None)


def test_a_pool_task_s_field_writes_never_reach_the_caller(typed):
    typed.tenant = "caller"
    with ContextExecutor(max_workers=1) as pool:

        def task() -> object:
            typed.tenant = "task"
            return typed.tenant

        assert pool.submit(task).result(timeout=30) == "task"
    assert typed.tenant == "caller"


def _tag_in_place(store: Any, tag: str) -> list[str]:
    store.tags.append(tag)
    return list(store.tags)


def test_a_pool_task_gets_a_fresh_factory_object_when_the_caller_never_touched_it(
    typed, run_in_new_thread
):
    def caller() -> tuple[list[str], list[str]]:
        with ContextExecutor(max_workers=1) as pool:
            seen = pool.submit(_tag_in_place, typed, "task").result(timeout=30)
        return seen, typed.tags

    in_task, in_caller = run_in_new_thread(caller)
    assert in_task == ["task"]
    assert in_caller == []


def test_a_pool_task_sees_the_caller_s_factory_object_once_the_caller_has_it(
    typed, run_in_new_thread
):
    # Once made in the caller, the list is the caller's value, and the work
    # it submits sees that value, by reference, like any other.
    def caller() -> tuple[list[str], list[str]]:
        mine = typed.tags
        mine.append("caller")
        with ContextExecutor(max_workers=1) as pool:
            seen = pool.submit(_tag_in_place, typed, "task").result(timeout=30)
        return seen, mine

    in_task, in_caller = run_in_new_thread(caller)
    assert in_task == ["caller", "task"]
    assert in_caller is not in_task
    assert in_caller == ["caller", "task"]


@pytest.fixture(scope="module")
def spawn_pool():
    context = multiprocessing.get_context("spawn")
    with ContextProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        yield pool


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["context", "thread"])
def test_a_spawned_worker_sees_the_caller_s_typed_values(spawn_pool, backend):
    store = support.STORES[backend]
    with store.scope(tenant="acme"):
        store.tags = ["a"]
        seen = spawn_pool.submit(support.look, backend).result(timeout=60)
    assert seen["values"]["tenant"] == "acme"
    assert seen["values"]["tags"] == ["a"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["context", "thread"])
def test_a_spawned_worker_runs_the_factory_afresh_when_the_caller_never_touched_it(
    spawn_pool, backend, run_in_new_thread
):
    seen = run_in_new_thread(
        lambda: spawn_pool.submit(support.tag_and_look, backend, "task").result(timeout=60)
    )
    assert seen["values"]["tags"] == ["task"]
    assert seen["values"]["born_in"] == seen["pid"]
    assert seen["values"]["tenant"] is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["context", "thread"])
def test_a_spawned_worker_gets_the_value_the_caller_s_factory_made(
    spawn_pool, backend, run_in_new_thread
):
    store = support.STORES[backend]

    def caller() -> tuple[int, dict[str, Any]]:
        made_here = store.born_in  # the caller's value from now on
        return made_here, spawn_pool.submit(support.look, backend).result(timeout=60)

    made_here, seen = run_in_new_thread(caller)
    assert seen["values"]["born_in"] == made_here
    assert seen["pid"] != made_here


@pytest.mark.timeout(120)
def test_a_spawned_worker_s_writes_never_reach_the_caller(spawn_pool, run_in_new_thread):
    def caller() -> tuple[dict[str, Any], list[str]]:
        with support.job.scope(tenant="acme"):
            seen = spawn_pool.submit(support.tag_and_look, "context", "task").result(timeout=60)
            return seen, support.job.tags

    seen, in_caller = run_in_new_thread(caller)
    assert seen["values"]["tags"] == ["task"]
    assert in_caller == []


# -- mypy ---------------------------------------------------------------------

MYPY_TIMEOUT = 240

TYPED_MODULE = """\
from __future__ import annotations

from contextual import ContextStore, field


class RequestState(ContextStore, backend="context", propagate=True):
    \"\"\"Per-request values.\"\"\"

    tenant: str | None = None
    user_id: int | None = None
    tags: list[str] = field(default_factory=list)
    trace_id: str

    def describe(self) -> str:
        return f"{self.tenant}/{self.user_id}"


class AuditState(RequestState, backend="thread"):
    level: int = field(default=1)


current = RequestState()
audit = AuditState("myapp.audit")
"""

CLEAN = (
    TYPED_MODULE
    + """

def handle(tenant: str) -> list[str]:
    current.tenant = tenant
    current.user_id = None
    current.tags.append(tenant)
    current.trace_id = "t-1"
    trace: str = current.trace_id
    del current.trace_id
    current["other"] = {"any": "value"}
    with current.scope(tenant="acme"), current.scope({"any key": 1}):
        label: str = current.describe()
    level: int = audit.level
    assert isinstance(current, ContextStore)
    return [trace, label, str(level), *current.tags]
"""
)

REVEAL = TYPED_MODULE + "\nreveal_type(current.tenant)\nreveal_type(current.tags)\n"

WRONG_TYPE = TYPED_MODULE + "\ncurrent.tenant = 5\n"

WRONG_FIELD_DEFAULT = TYPED_MODULE.replace(
    "level: int = field(default=1)", 'level: int = field(default="one")'
)


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory):
    """Run mypy --strict once, in a directory of its own, over every file above."""
    folder = tmp_path_factory.mktemp("mypy")
    files = {
        "clean.py": CLEAN,
        "reveal.py": REVEAL,
        "wrong_type.py": WRONG_TYPE,
        "wrong_field_default.py": WRONG_FIELD_DEFAULT,
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(folder / ".mypy_cache"),
            *files,
        ],
        cwd=folder,  # away from the project's own mypy settings
        capture_output=True,
        text=True,
        timeout=MYPY_TIMEOUT,
        check=False,
    )
    assert result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    return {name: [line for line in lines if line.startswith(f"{name}:")] for name in files}


def _line_of(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


@pytest.mark.timeout(MYPY_TIMEOUT + 30)
def test_mypy_strict_accepts_a_typed_store(mypy_output):
    assert mypy_output["clean.py"] == []


@pytest.mark.timeout(MYPY_TIMEOUT + 30)
def test_mypy_sees_a_field_s_declared_type(mypy_output):
    reveals = [line for line in mypy_output["reveal.py"] if "Revealed type" in line]
    assert len(reveals) == 2, mypy_output["reveal.py"]
    tenant, tags = reveals
    str_ = r"(builtins\.)?str"
    assert re.search(rf'"({str_} \| None|Union\[{str_}, None\])"', tenant), tenant
    assert re.search(rf'"(builtins\.)?list\[{str_}\]"', tags), tags
    assert [line for line in mypy_output["reveal.py"] if ": error:" in line] == []


@pytest.mark.timeout(MYPY_TIMEOUT + 30)
def test_mypy_reports_a_wrong_type_written_to_a_field(mypy_output):
    line = _line_of(WRONG_TYPE, "current.tenant = 5")
    errors = [e for e in mypy_output["wrong_type.py"] if ": error:" in e]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"wrong_type.py:{line}: error:")
    assert "[assignment]" in errors[0]


@pytest.mark.timeout(MYPY_TIMEOUT + 30)
def test_mypy_reports_a_field_default_of_the_wrong_type(mypy_output):
    line = _line_of(WRONG_FIELD_DEFAULT, '    level: int = field(default="one")')
    errors = [e for e in mypy_output["wrong_field_default.py"] if ": error:" in e]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"wrong_field_default.py:{line}: error:")


# -- edges of declaring and reading ------------------------------------------


def test_field_shows_what_it_declares():
    assert repr(field()) == "field()"
    assert repr(field(default=3)) == "field(default=3)"
    assert repr(field(default_factory=list)) == "field(default_factory=<class 'list'>)"


def test_a_default_factory_that_is_not_callable_is_refused():
    with pytest.raises(
        TypeError, match=r"default_factory must be a zero-argument callable.*got int 3"
    ):
        field(default_factory=3)  # type: ignore[call-overload]


def test_a_propagate_option_that_is_not_a_bool_is_refused():
    with pytest.raises(TypeError, match=r"propagate='yes'; it must be True or False"):

        class Loose(ContextStore, propagate="yes"):  # type: ignore[arg-type]
            tenant: str | None = None


def test_a_method_that_hides_an_inherited_field_is_refused():
    class Base(ContextStore):
        tenant: str | None = None

    with pytest.raises(
        TypeError, match=r"defines 'tenant', which is a field of its base class .*Base"
    ):

        class Hiding(Base):
            def tenant(self) -> str:  # type: ignore[override]
                return "x"


def test_a_field_over_a_property_of_the_body_names_the_property():
    with pytest.raises(
        TypeError, match=r"field 'tenant' .* collides with a property defined in the class body"
    ):

        class Both(ContextStore):
            tenant: str | None = None

            @property  # type: ignore[no-redef]
            def tenant(self) -> str:  # noqa: F811 (the collision under test)
                return "x"


def test_a_field_over_a_plain_attribute_of_a_base_store_class_names_it():
    class Base(ContextStore):
        limit = 5

    with pytest.raises(TypeError, match=r"field 'limit' .* collides with an attribute of .*Base"):

        class Sub(Base):
            limit: int = 1


def test_a_failing_default_factory_names_the_field_and_runs_again_next_time(unique_name, backend):
    calls = []

    def fails_once() -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("division by zero")
        return ["made"]

    class Flaky(ContextStore, backend=backend):
        tags: list[str] = field(default_factory=fails_once)

    store = Flaky(unique_name)
    pattern = (
        rf"default_factory of field 'tags' of store '{re.escape(unique_name)}' failed "
        r"\(ZeroDivisionError: division by zero\).*Fix the factory"
    )
    with pytest.raises(StoreDefaultsError, match=pattern) as info:
        _ = store.tags
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert store.tags == ["made"]
    assert calls == [1, 1]


def test_open_request_is_a_context_manager_that_closes_the_request():
    with open_request("r-open", "ada") as opened:
        assert get_request_id() == "r-open"
        assert get_current_user() == "ada"
        assert current_request() == ("r-open", "ada", {})
    assert opened is not None
    assert get_request_id() is None


class _Mixin:
    """A plain class beside a store class's bases."""

    def describe(self) -> str:
        return "mixed in"


def test_a_store_class_may_mix_in_a_plain_class(unique_name):
    class Mixed(_Mixin, ContextStore):
        tenant: str | None = None

    store = Mixed(unique_name)
    assert store.describe() == "mixed in"
    assert isinstance(store, ContextStore)
    assert store.tenant is None


def test_a_method_that_hides_a_field_names_the_store_class_past_a_mixin():
    class Base(ContextStore):
        tenant: str | None = None

    with pytest.raises(TypeError, match=r"which is a field of its base class .*Base"):

        class Hiding(_Mixin, Base):
            def tenant(self) -> str:  # type: ignore[override]
                return "x"


def test_capture_in_a_thread_that_never_ran_a_factory_leaves_it_as_it_was(
    unique_name, run_in_new_thread
):
    class Worker(ContextStore, backend="thread"):
        tags: list[str] = field(default_factory=list)

    store = Worker(unique_name)

    def caller() -> tuple[list[list[str]], list[str]]:
        runs = [capture().run(_tag_in_place, store, f"t{n}") for n in range(3)]
        return runs, store.tags

    runs, in_caller = run_in_new_thread(caller)
    assert runs == [["t0"], ["t1"], ["t2"]]
    assert in_caller == []


def test_a_store_class_may_not_derive_from_two_store_classes():
    class First(ContextStore):
        a: int = 1

    class Second(ContextStore, backend="thread"):
        b: int = 2

    with pytest.raises(TypeError, match=r"derives from more than one store class .*First.*Second"):

        class Both(First, Second):  # type: ignore[misc]
            pass


def _hook(*args: object) -> None:
    del args


@pytest.mark.parametrize("special", ["__setattr__", "__delattr__"])
def test_a_store_class_may_not_define_its_own_attribute_hooks(special):
    with pytest.raises(TypeError, match=rf"defines {special}, which a store class can't have"):
        type("Hooked", (ContextStore,), {special: _hook})


def test_a_field_named_like_a_mixin_method_is_refused_whatever_the_order():
    for bases in ((_Mixin, ContextStore), (ContextStore, _Mixin)):
        with pytest.raises(
            TypeError, match=r"field 'describe' .* collides with a method of .*_Mixin"
        ):
            type("Clash", bases, {"__annotations__": {"describe": "str"}, "describe": "x"})
