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

__all__ = ["get_store", "list_stores", "register"]


class _StoreRef(weakref.ref["ContextStore"]):
    __slots__ = ("name",)
    name: str


_lock = threading.Lock()
_refs: dict[str, _StoreRef] = {}
# Weakref callbacks run wherever the collector happens to run, including in
# a thread that already holds _lock (an allocation inside register() can
# trigger a collection). Taking the lock there would deadlock, so a callback
# only appends to this deque (thread-safe on every build) and the next
# locked call sweeps it.
_dead: deque[_StoreRef] = deque()


def _sweep() -> None:
    """Drop registry entries whose store has died. Call with _lock held."""
    while _dead:
        ref = _dead.popleft()
        if _refs.get(ref.name) is ref:
            del _refs[ref.name]


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
        # Pop first: a dead entry not swept yet would keep its old position,
        # and list_stores() promises creation order.
        _refs.pop(name, None)
        _refs[name] = ref


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
