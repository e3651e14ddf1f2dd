"""Saved, which puts stores' values back, and the backends capture() takes from the thread.

The request middleware and ``contextual.testing.empty_stores`` put stores
back with it; their own tests show it through them.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from contextual import ContextStore
from contextual._core.backends import Saved
from contextual._core.store import REGISTRY, backend_of, carried_thread_backends


def test_saved_puts_thread_and_context_stores_back_as_they_were(unique_name):
    in_thread = ContextStore(f"{unique_name}.thread", backend="thread")
    in_context = ContextStore(f"{unique_name}.context")
    in_thread["tenant"] = in_context["tenant"] = "before"
    saved = Saved([backend_of(in_thread), backend_of(in_context)])
    in_thread["tenant"] = in_context["tenant"] = "after"
    in_thread["added"] = in_context["added"] = 1
    saved.restore()
    assert dict(in_thread) == dict(in_context) == {"tenant": "before"}


def test_a_backend_given_twice_or_added_again_keeps_what_it_held_first(unique_name):
    store = ContextStore(unique_name, backend="thread")
    store["tenant"] = "first"
    saved = Saved([backend_of(store), backend_of(store)])
    store["tenant"] = "second"
    saved.add([backend_of(store)])
    store["tenant"] = "third"
    saved.restore()
    assert store["tenant"] == "first"


def test_a_backend_added_later_is_put_back_as_it_was_when_added(unique_name):
    first = ContextStore(unique_name, backend="thread")
    later = ContextStore(f"{unique_name}.later", backend="thread")
    first["tenant"] = later["tenant"] = "before"
    saved = Saved([backend_of(first)])
    later["tenant"] = "when added"
    saved.add([backend_of(later)])
    first["tenant"] = later["tenant"] = "after"
    saved.restore()
    assert (first["tenant"], later["tenant"]) == ("before", "when added")


def test_a_defaults_factory_that_never_ran_runs_again_after_the_restore(unique_name):
    made: list[int] = []

    def defaults() -> dict[str, Any]:
        made.append(1)
        return {"items": []}

    store = ContextStore(unique_name, backend="thread", defaults=defaults)
    saved = Saved([backend_of(store)])
    store["items"].append("acme")
    saved.restore()
    assert store["items"] == []
    assert len(made) == 2, "the restore put back a thread where it never ran"


def test_saved_holds_its_backends_alive_until_it_is_dropped(unique_name):
    store = ContextStore(unique_name, backend="thread")
    backend = weakref.ref(backend_of(store))
    saved = Saved([backend_of(store)])
    del store
    gc.collect()
    assert backend() is not None
    assert any(found is backend() for found in carried_thread_backends()), "still listed"
    del saved
    gc.collect()
    assert backend() is None


def test_carried_thread_backends_are_the_propagating_thread_stores_alone(unique_name):
    carried = ContextStore(unique_name, backend="thread")
    kept_here = ContextStore(f"{unique_name}.kept", backend="thread", propagate=False)
    in_context = ContextStore(f"{unique_name}.context")
    backends = carried_thread_backends()
    assert any(backend is backend_of(carried) for backend in backends)
    assert not any(backend is backend_of(kept_here) for backend in backends)
    assert not any(backend is backend_of(in_context) for backend in backends)


def test_carried_thread_backends_skip_a_store_collected_since_the_registry_changed(
    unique_name,
):
    gone = ContextStore(unique_name, backend="thread")
    backend = weakref.ref(backend_of(gone))
    del gone
    gc.collect()
    assert backend() is None
    # The registry lists the collected store until its next change.
    assert any(ref() is None for ref in REGISTRY.view.carried_by_thread)
    assert all(found is not None for found in carried_thread_backends())
