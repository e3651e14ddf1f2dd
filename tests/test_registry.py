"""The process-wide registry: one live store per name, looked up by name."""

from __future__ import annotations

import gc
import threading

import pytest

import contextual
from contextual import ContextStore, _registry, get_store, list_stores


def test_get_store_finds_a_live_store_by_name(make_store, backend):
    store = make_store(backend, name="registry.find")
    assert get_store("registry.find") is store
    assert store in list_stores()


def test_get_store_of_an_unknown_name_says_how_to_fix_it():
    with pytest.raises(LookupError, match=r"no live store is named 'registry\.nobody'.*Create it"):
        get_store("registry.nobody")


def test_duplicate_live_name_is_refused_and_the_first_store_is_untouched(backend, unique_name):
    first = ContextStore(unique_name, backend=backend)  # type: ignore[arg-type]
    first["a"] = 1
    for other in ("context", "thread"):
        with pytest.raises(ValueError, match=r"already named .*get_store"):
            ContextStore(unique_name, backend=other)  # type: ignore[arg-type]
    assert get_store(unique_name) is first
    assert dict(first) == {"a": 1}


def test_name_is_free_again_once_the_store_is_gone(unique_name):
    store = ContextStore(unique_name)
    del store
    gc.collect()
    again = ContextStore(unique_name)
    assert get_store(unique_name) is again


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


def test_concurrent_registration_of_one_name_lets_exactly_one_win(unique_name):
    count = 8
    barrier = threading.Barrier(count)
    won: list[ContextStore] = []
    refused: list[BaseException] = []

    def contender() -> None:
        barrier.wait(timeout=10)
        try:
            won.append(ContextStore(unique_name))
        except ValueError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=contender) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert len(refused) == count - 1
    assert get_store(unique_name) is won[0]


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
    stale = _registry._refs[unique_name]
    del old
    gc.collect()
    new = ContextStore(unique_name)
    # The collector may clear a weak reference and run its callback later,
    # after a new store took the name; that notice must not evict it.
    _registry._dead.append(stale)
    assert get_store(unique_name) is new
