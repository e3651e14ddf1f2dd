"""The process-wide registry: one definition per name; get_store finds its newest store."""

from __future__ import annotations

import contextvars
import functools
import gc
import importlib
import sys
import textwrap
import threading

import pytest

import contextual
from contextual import ContextStore, capture, get_store, list_stores
from contextual._core import store as _store


def assert_redefined(old: ContextStore, new: ContextStore) -> None:
    """Check that ``new`` is a new store over ``old``'s values, and the registry's now."""
    assert new is not old
    assert get_store(old.name) is new
    assert [s for s in list_stores() if s.name == old.name] == [new]

    def both_ways() -> tuple[object, object]:
        old["written_through_old"] = "old"
        new["written_through_new"] = "new"
        return new["written_through_old"], old["written_through_new"]

    # In a thread of its own, started from an empty context, so that the
    # writes stay out of this thread's values and out of later tests'.
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(both_ways()))
    contextvars.Context().run(thread.start)
    thread.join(timeout=30)
    assert seen == [("old", "new")]


def test_get_store_finds_a_live_store_by_name(make_store, backend):
    store = make_store(backend, name="registry.find")
    assert get_store("registry.find") is store
    assert store in list_stores()


def test_get_store_of_an_unknown_name_says_how_to_fix_it():
    with pytest.raises(LookupError, match=r"no live store is named 'registry\.nobody'.*Create it"):
        get_store("registry.nobody")


def _counter_factory():
    return lambda: {"n": 0}


def _closure_factory(start):
    return lambda: {"n": start}


@pytest.mark.parametrize(
    "defaults",
    [None, {"user": None, "retries": 3}, _counter_factory],
    ids=["none", "mapping", "factory"],
)
def test_the_same_definition_again_makes_a_new_store_over_the_same_values(
    backend, unique_name, defaults
):
    def define():
        # A factory made afresh each time, as re-running a notebook cell does.
        made = defaults() if callable(defaults) else defaults
        return ContextStore(unique_name, backend=backend, defaults=made)

    first = define()
    first["written"] = "before"
    again = define()
    assert again["written"] == "before"
    assert_redefined(first, again)


def test_a_store_made_again_is_not_the_same_object_but_sees_its_writes(unique_name):
    first = ContextStore(unique_name)
    second = ContextStore(unique_name)
    assert first is not second
    first["user"] = "ada"
    assert second["user"] == "ada"


def test_a_redefined_thread_store_shares_values_in_another_thread(unique_name, run_in_new_thread):
    old = ContextStore(unique_name, backend="thread")
    new = ContextStore(unique_name, backend="thread")

    def both_ways() -> tuple[object, object]:
        old["from_old"] = 1
        new["from_new"] = 2
        return new.get("from_old"), old.get("from_new")

    assert run_in_new_thread(both_ways) == (1, 2)
    assert dict(old) == dict(new) == {}


def test_every_reference_keeps_working_after_two_redefinitions(unique_name):
    first = ContextStore(unique_name, defaults={"user": None})
    second = ContextStore(unique_name, defaults={"user": None})
    third = ContextStore(unique_name, defaults={"user": None})
    second["user"] = "ada"
    assert (first["user"], third["user"]) == ("ada", "ada")
    with first.scope(user="bob"):
        assert (second["user"], third["user"]) == ("bob", "bob")
    assert third["user"] == "ada"
    assert get_store(unique_name) is third


def test_a_factory_defined_by_the_same_source_elsewhere_is_the_same(unique_name):
    source = (
        "from contextual import ContextStore\n"
        "{blank}"
        "store = ContextStore({name!r}, defaults=lambda: {{'tags': [], 'n': 1}})\n"
    )
    cell = {"__name__": "notebook"}
    exec(source.format(name=unique_name, blank=""), cell)  # noqa: S102
    rerun = {"__name__": "notebook"}
    # The same cell run again after an edit above it: only line numbers differ.
    exec(source.format(name=unique_name, blank="\n\n"), rerun)  # noqa: S102
    assert_redefined(cell["store"], rerun["store"])


def test_a_factory_with_other_closure_values_is_another_definition(unique_name):
    first = ContextStore(unique_name, defaults=_closure_factory(1))
    assert_redefined(first, ContextStore(unique_name, defaults=_closure_factory(1)))
    with pytest.raises(ValueError, match=r"\(different defaults\)"):
        ContextStore(unique_name, defaults=_closure_factory(2))


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"backend": "thread"}, "backend"),
        ({"propagate": False}, "propagate"),
        ({"defaults": {"user": "root"}}, "defaults"),
        ({"defaults": lambda: {"user": None}}, "defaults"),
        ({"backend": "thread", "defaults": None}, "backend and defaults"),
    ],
    ids=["backend", "propagate", "mapping", "factory-for-mapping", "two"],
)
def test_a_different_definition_under_a_live_name_is_refused(unique_name, change, differs):
    definition = {"backend": "context", "propagate": True, "defaults": {"user": None}}
    first = ContextStore(unique_name, **definition)  # type: ignore[arg-type]
    first["a"] = 1
    with pytest.raises(ValueError, match=r"already named") as info:
        ContextStore(unique_name, **{**definition, **change})  # type: ignore[arg-type]
    message = str(info.value)
    assert f"(different {differs})" in message
    assert "backend='context', propagate=True, defaults={'user': None}" in message
    assert "get_store" in message
    assert get_store(unique_name) is first
    assert dict(first) == {"user": None, "a": 1}


def test_a_different_factory_is_named_in_the_message(unique_name):
    def first_defaults():
        return {"n": 1}

    def other_defaults():
        return {"n": 2}

    first = ContextStore(unique_name, defaults=first_defaults)
    with pytest.raises(ValueError, match=r"\(different defaults\)") as info:
        ContextStore(unique_name, defaults=other_defaults)
    assert f"defaults={__name__}.{first_defaults.__qualname__};" in str(info.value)
    assert f"defaults={__name__}.{other_defaults.__qualname__}." in str(info.value)
    assert get_store(unique_name) is first


@pytest.fixture
def module_file(tmp_path, monkeypatch, unique_name):
    """Write a module that defines a store; import it; forget it afterwards."""
    module_name = f"registry_reload_{unique_name.replace('.', '_')}"
    path = tmp_path / f"{module_name}.py"
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(definition: str, preamble: str = ""):
        source = "from contextual import ContextStore\n" + textwrap.dedent(preamble)
        source += f"\nstore = ContextStore({unique_name!r}, {definition})\n"
        path.write_text(source, encoding="utf-8")
        importlib.invalidate_caches()
        if module_name in sys.modules:
            return importlib.reload(sys.modules[module_name])
        return importlib.import_module(module_name)

    yield write
    sys.modules.pop(module_name, None)


@pytest.mark.parametrize(
    "definition",
    [
        "defaults={'user': None}",
        "backend='thread', defaults=lambda: {'seen': []}",
    ],
)
def test_reloading_a_module_that_defines_a_store_keeps_its_values(module_file, definition):
    module = module_file(definition)
    old = module.store
    old["written"] = "before the reload"
    reloaded = module_file(definition)
    assert reloaded.store["written"] == "before the reload"
    assert_redefined(old, reloaded.store)


def test_reloading_keeps_the_values_of_a_store_whose_defaults_the_module_defines(module_file):
    # Reloading makes the enum, the class and the function anew: they are
    # the same by module and qualified name.
    preamble = """
        import enum


        class Level(enum.Enum):
            INFO = 20


        class Handler:
            pass


        def hook():
            pass
        """
    definition = (
        "defaults={'level': Level.INFO, 'kind': Handler, 'hook': hook, "
        "'codes': frozenset({1, 2}), 'pair': ('a', 1.5), 'ratio': float('nan')}"
    )
    module = module_file(definition, preamble)
    old, old_level = module.store, module.Level
    reloaded = module_file(definition, preamble)
    assert_redefined(old, reloaded.store)
    assert reloaded.Level is not old_level


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("{'codes': frozenset({1, 2})}", "{'codes': frozenset({1, 3})}"),
        ("{'pair': ('a', 1.5)}", "{'pair': ('a', 1.5, None)}"),
        ("{'price': Decimal('1.10')}", "{'price': Decimal('1.1')}"),
        ("{'flag': 1}", "{'flag': True}"),
        ("{'kind': Handler}", "{'kind': Other}"),
        ("{'level': Level.INFO}", "{'level': Level.DEBUG}"),
        ("{'hook': hook}", "{'hook': other_hook}"),
    ],
)
def test_reloading_with_other_default_values_is_refused(module_file, first, second):
    preamble = """
        import enum
        from decimal import Decimal


        class Level(enum.Enum):
            DEBUG = 10
            INFO = 20


        class Handler:
            pass


        class Other:
            pass


        def hook():
            pass


        def other_hook():
            pass
        """
    module_file(f"defaults={first}", preamble)
    with pytest.raises(ValueError, match=r"\(different defaults\)"):
        module_file(f"defaults={second}", preamble)


def _recursive_factory():
    def factory():
        return {"factory": factory}

    return factory


def test_a_factory_that_refers_to_itself_is_compared_without_recursing(unique_name):
    first = ContextStore(unique_name, defaults=_recursive_factory())
    assert_redefined(first, ContextStore(unique_name, defaults=_recursive_factory()))


def _define_before_binding(name):
    store = ContextStore(name, defaults=lambda: {"config": config})
    if store.name:  # always: the closure's variable is never bound
        return store
    config = "never"  # pragma: no cover
    return store  # pragma: no cover


def test_a_factory_with_a_variable_not_bound_yet_can_be_compared(unique_name):
    first = _define_before_binding(unique_name)
    again = _define_before_binding(unique_name)
    # Its factory can never run (that is the point), so only the registry shows it.
    assert again is not first
    assert get_store(unique_name) is again


def test_a_factory_s_default_arguments_are_part_of_its_definition(unique_name):
    def make(n):
        return lambda *, start=n: {"n": start}

    first = ContextStore(unique_name, defaults=make(1))
    assert_redefined(first, ContextStore(unique_name, defaults=make(1)))
    with pytest.raises(ValueError, match=r"\(different defaults\)"):
        ContextStore(unique_name, defaults=make(2))


def test_a_callable_that_is_not_a_function_is_only_ever_itself(unique_name):
    factory = functools.partial(dict, user=None)
    first = ContextStore(unique_name, defaults=factory)
    assert_redefined(first, ContextStore(unique_name, defaults=factory))
    with pytest.raises(ValueError, match=r"defaults=functools\.partial\(<class 'dict'>"):
        ContextStore(unique_name, defaults=functools.partial(dict, user=None))


def test_reloading_a_module_with_an_edited_definition_is_refused(module_file):
    module = module_file("defaults={'user': None}")
    with pytest.raises(ValueError, match=r"\(different defaults\)"):
        module_file("defaults={'user': 'root'}")
    assert get_store(module.store.name) is module.store


def test_the_name_stays_taken_while_an_older_store_of_it_lives(unique_name):
    old = ContextStore(unique_name)
    newest = ContextStore(unique_name)
    del newest
    gc.collect()
    assert get_store(unique_name) is old
    with pytest.raises(ValueError, match=r"already named"):
        ContextStore(unique_name, backend="thread")


def test_name_is_free_again_once_the_store_is_gone(unique_name):
    store = ContextStore(unique_name)
    del store
    gc.collect()
    again = ContextStore(unique_name)
    assert get_store(unique_name) is again


def test_a_store_made_after_the_old_one_is_gone_starts_without_its_values(unique_name, backend):
    store = ContextStore(unique_name, backend=backend)
    store["left"] = "behind"
    del store
    gc.collect()
    assert dict(ContextStore(unique_name, backend=backend)) == {}


def test_dead_stores_leave_the_registry():
    names = [f"registry.dead.{i}.{id(object())}" for i in range(50)]
    stores = [ContextStore(n) for n in names]
    del stores
    gc.collect()
    live = {s.name for s in list_stores()}
    assert live.isdisjoint(names)
    for name in names:
        with pytest.raises(LookupError):
            get_store(name)


def test_list_stores_keeps_creation_order(make_store):
    a = make_store()
    b = make_store("thread")
    listed = [s for s in list_stores() if s in (a, b)]
    assert listed == [a, b]


def test_concurrent_definitions_of_one_name_agree_on_one_definition(unique_name):
    count = 8
    barrier = threading.Barrier(count)
    made: dict[str, list[ContextStore]] = {"context": [], "thread": []}
    refused: dict[str, list[BaseException]] = {"context": [], "thread": []}

    def contender(backend: str) -> None:
        barrier.wait(timeout=10)
        try:
            made[backend].append(ContextStore(unique_name, backend=backend))  # type: ignore[arg-type]
        except ValueError as exc:
            refused[backend].append(exc)

    threads = [
        threading.Thread(target=contender, args=(backend,))
        for backend in ("context", "thread")
        for _ in range(count // 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One definition won; each of its callers got a store of its own over
    # the same values, and every caller with the other definition was refused.
    newest = get_store(unique_name)
    winner = newest.backend
    loser = "thread" if winner == "context" else "context"
    assert len(made[winner]) == count // 2
    assert len({id(s) for s in made[winner]}) == count // 2
    assert any(s is newest for s in made[winner])
    made[winner][0]["probe"] = "seen by all"
    assert [s.get("probe") for s in made[winner]] == ["seen by all"] * (count // 2)
    assert refused[winner] == []
    assert made[loser] == []
    assert len(refused[loser]) == count // 2


def test_concurrent_registration_of_many_names_loses_none():
    count = 8
    per_thread = 100
    barrier = threading.Barrier(count)
    kept: list[list[ContextStore]] = [[] for _ in range(count)]

    def register(i: int) -> None:
        barrier.wait(timeout=10)
        for j in range(per_thread):
            kept[i].append(ContextStore(f"registry.many.{i}.{j}"))
            # Drop every other store at once, so registration and removal of
            # dead entries interleave across threads.
            if j % 2:
                kept[i].pop()

    threads = [threading.Thread(target=register, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    live = {s.name for s in contextual.list_stores() if s.name.startswith("registry.many.")}
    expected = {s.name for stores in kept for s in stores}
    assert live == expected
    assert len(expected) == count * per_thread // 2


def test_a_late_death_notice_does_not_evict_the_name_s_new_owner(unique_name):
    old = ContextStore(unique_name)
    stale = _store.REGISTRY._refs[unique_name]
    del old
    gc.collect()
    new = ContextStore(unique_name)
    # The collector may clear a weak reference and run its callback later,
    # after a new store took the name; that notice must not evict it.
    _store.REGISTRY._dead.append(stale)
    assert get_store(unique_name) is new


def test_a_name_held_only_by_a_snapshot_is_free_for_another_definition(unique_name):
    # A snapshot keeps the thread backend it carries, but no store of the
    # name is alive: nobody can read it, so another definition may take it.
    old = ContextStore(unique_name, backend="thread")
    old["k"] = "old"
    snapshot = capture()
    del old
    gc.collect()
    with pytest.raises(LookupError, match="no live store is named"):
        get_store(unique_name)
    new = ContextStore(unique_name, defaults={"k": "new"})
    assert get_store(unique_name) is new
    assert snapshot.run(lambda: new["k"]) == "new"
