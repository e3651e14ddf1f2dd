"""The process-wide registry of live stores, looked up by name.

The registry holds weak references only, so dropping the last reference to a
store frees it and its name. It is guarded by a lock and never relies on the
GIL: free-threaded builds register and look up stores from many threads.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from ._fork import renew_locks_after_fork

if TYPE_CHECKING:
    from ._store import ContextStore

__all__ = ["View", "get_store", "list_stores", "propagating_stores", "register", "view"]


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


class View(NamedTuple):
    """The stores capture() needs on every call, by kind (weak references)."""

    propagating: tuple[_StoreRef, ...]
    propagating_thread: tuple[_StoreRef, ...]
    local_context: tuple[_StoreRef, ...]


# Rebuilt under _lock whenever the registry changes, and read without it:
# rebinding one global is atomic on every build, so a reader sees the old
# view or the new one, never a mix of the two.
view = View((), (), ())


def _rebuild_view() -> None:
    """Recompute the view capture() reads. Call with _lock held."""
    global view  # noqa: PLW0603
    refs = tuple(_refs.values())
    propagating = tuple(r for r in refs if r.propagate)
    view = View(
        propagating,
        tuple(r for r in propagating if r.backend == "thread"),
        tuple(r for r in refs if not r.propagate and r.backend == "context"),
    )


def _sweep() -> None:
    """Drop registry entries whose store has died. Call with _lock held."""
    changed = False
    while _dead:
        ref = _dead.popleft()
        if _refs.get(ref.name) is ref:
            del _refs[ref.name]
            changed = True
    if changed:
        _rebuild_view()


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
        _rebuild_view()


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


def propagating_stores() -> list[ContextStore]:
    """Return every live ``propagate=True`` store, both backends."""
    stores = [r() for r in view.propagating]
    return [s for s in stores if s is not None]


renew_locks_after_fork(globals(), "_lock")
