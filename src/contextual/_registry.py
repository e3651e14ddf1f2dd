"""The process-wide registry of live stores, looked up by name.

The registry holds weak references only, so dropping the last reference to a
store frees it and its name. It is guarded by a lock and never relies on the
GIL: free-threaded builds register and look up stores from many threads.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._store import ContextStore

__all__ = [
    "get_store",
    "list_stores",
    "local_context_stores",
    "propagating_stores",
    "propagating_thread_stores",
    "register",
]


class _StoreRef(weakref.ref["ContextStore"]):
    __slots__ = ("backend", "name", "propagate")
    name: str
    backend: str
    propagate: bool


_lock = threading.Lock()
_refs: dict[str, _StoreRef] = {}
# Weakref callbacks run wherever the collector happens to run, including in
# a thread that already holds _lock (an allocation inside register() can
# trigger a collection). Taking the lock there would deadlock, so a callback
# only appends to this deque (thread-safe on every build) and the next
# locked call sweeps it.
_dead: deque[_StoreRef] = deque()
# What capture() needs on every call, rebuilt under _lock whenever the
# registry changes and read without it: replacing a tuple is atomic, so a
# reader sees the old view or the new one, never a torn one.
_propagating: tuple[_StoreRef, ...] = ()
_propagating_thread: tuple[_StoreRef, ...] = ()
_local_context: tuple[_StoreRef, ...] = ()


def _rebuild_views() -> None:
    """Recompute the views capture() reads. Call with _lock held."""
    global _propagating, _propagating_thread, _local_context  # noqa: PLW0603
    refs = tuple(_refs.values())
    _propagating = tuple(r for r in refs if r.propagate)
    _propagating_thread = tuple(r for r in _propagating if r.backend == "thread")
    _local_context = tuple(r for r in refs if not r.propagate and r.backend == "context")


def _sweep() -> None:
    """Drop registry entries whose store has died. Call with _lock held."""
    changed = False
    while _dead:
        ref = _dead.popleft()
        if _refs.get(ref.name) is ref:
            del _refs[ref.name]
            changed = True
    if changed:
        _rebuild_views()


def register(store: ContextStore) -> None:
    """Add a store to the registry; refuse a name that a live store holds."""
    name = store.name
    with _lock:
        _sweep()
        old = _refs.get(name)
        other = old() if old is not None else None
        if other is not None:
            msg = (
                f"a live store is already named {name!r} ({other!r}). Store names identify "
                "stores across threads and processes, so they must be unique: pick another "
                "name, or reuse the existing store with contextual.get_store(name)."
            )
            raise ValueError(msg)
        ref = _StoreRef(store, _dead.append)
        ref.name = name
        ref.backend = store.backend
        ref.propagate = store.propagate
        # Pop first: a dead entry not swept yet would keep its old position,
        # and list_stores() promises creation order.
        _refs.pop(name, None)
        _refs[name] = ref
        _rebuild_views()


def get_store(name: str) -> ContextStore:
    """Return the live store named ``name``.

    Args:
        name: The name the store was created with.

    Raises:
        LookupError: No live store has that name (it was never created in this
            process, or every reference to it was dropped).

    .. versionadded:: 0.1.0
    """
    with _lock:
        _sweep()
        ref = _refs.get(name)
        store = ref() if ref is not None else None
        if store is not None:
            return store
        known = sorted(n for n, r in _refs.items() if r() is not None)
    msg = (
        f"no live store is named {name!r}; live stores: {known}. Create it with "
        f"ContextStore({name!r}) before looking it up (in a child process, import the "
        "module that creates it)."
    )
    raise LookupError(msg)


def list_stores() -> list[ContextStore]:
    """Return every live store, in the order they were created.

    .. versionadded:: 0.1.0
    """
    with _lock:
        _sweep()
        stores = [r() for r in _refs.values()]
    return [s for s in stores if s is not None]


def _alive(refs: tuple[_StoreRef, ...]) -> list[ContextStore]:
    stores = [r() for r in refs]
    return [s for s in stores if s is not None]


def propagating_stores() -> list[ContextStore]:
    """Return every live ``propagate=True`` store, both backends."""
    return _alive(_propagating)


def propagating_thread_stores() -> list[ContextStore]:
    """Return every live ``propagate=True`` store of the ``"thread"`` backend."""
    return _alive(_propagating_thread)


def local_context_stores() -> list[ContextStore]:
    """Return every live ``propagate=False`` store of the ``"context"`` backend."""
    return _alive(_local_context)
