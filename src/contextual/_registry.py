"""The process-wide registry of live stores, looked up by name.

The registry holds weak references only, so dropping the last reference to a
store frees it and its name. It is guarded by a lock and never relies on the
GIL: free-threaded builds register and look up stores from many threads.

It knows a store only by what it uses of one (:class:`Registrable`) and of
its definition (:class:`Definition`): ``_store`` makes the one registry, of
``ContextStore`` objects, and this module never imports it.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, final

from ._fork import renew_locks_after_fork

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self

__all__ = ["Definition", "Registrable", "Registry", "View"]


class Registrable(Protocol):
    """What the registry uses of a store."""

    @property
    def backend(self) -> str:
        """``"context"`` or ``"thread"``."""
        ...

    @property
    def propagate(self) -> bool:
        """Whether the store travels with captured context."""
        ...


class Definition(Protocol):
    """What the registry uses of a store's definition, besides ``str()`` in messages."""

    def differences(self, other: Self) -> list[str]:
        """Return the names of what differs from ``other``; empty if nothing does."""
        ...


_S = TypeVar("_S", bound=Registrable)
_D = TypeVar("_D", bound=Definition)


class _StoreRef(weakref.ref[_S], Generic[_S, _D]):
    __slots__ = ("backend", "definition", "name", "propagate")
    name: str
    backend: str
    propagate: bool
    definition: _D


@final
class View(Generic[_S]):
    """The stores capture() needs on every call, by kind (weak references)."""

    __slots__ = ("local_context", "propagating", "propagating_thread")

    def __init__(
        self,
        propagating: tuple[weakref.ref[_S], ...],
        propagating_thread: tuple[weakref.ref[_S], ...],
        local_context: tuple[weakref.ref[_S], ...],
    ) -> None:
        self.propagating = propagating
        self.propagating_thread = propagating_thread
        self.local_context = local_context


# The registry's lock, a module global like the other modules' locks, so that
# a forked child gets a fresh one. (There is one registry: _store's.)
_lock = threading.Lock()


@final
class Registry(Generic[_S, _D]):
    """Live stores by name, held weakly, in the order they were created."""

    __slots__ = ("_dead", "_refs", "view")

    _refs: dict[str, _StoreRef[_S, _D]]
    # Weakref callbacks run wherever the collector happens to run, including
    # in a thread that already holds _lock (an allocation inside register()
    # can trigger a collection). Taking the lock there would deadlock, so a
    # callback only appends to this deque (thread-safe on every build) and
    # the next locked call sweeps it.
    _dead: deque[_StoreRef[_S, _D]]
    # Rebuilt under _lock whenever the registry changes, and read without it:
    # rebinding one attribute is atomic on every build, so a reader sees the
    # old view or the new one, never a mix of the two.
    view: View[_S]

    def __init__(self) -> None:
        self._refs = {}
        self._dead = deque()
        self.view = View((), (), ())

    def _rebuild_view(self) -> None:
        """Recompute the view capture() reads. Call with _lock held."""
        refs = tuple(self._refs.values())
        propagating = tuple(r for r in refs if r.propagate)
        self.view = View(
            propagating,
            tuple(r for r in propagating if r.backend == "thread"),
            tuple(r for r in refs if not r.propagate and r.backend == "context"),
        )

    def _sweep(self) -> None:
        """Drop entries whose store has died. Call with _lock held."""
        changed = False
        while self._dead:
            ref = self._dead.popleft()
            if self._refs.get(ref.name) is ref:
                del self._refs[ref.name]
                changed = True
        if changed:
            self._rebuild_view()

    def register(self, name: str, definition: _D, create: Callable[[], _S]) -> _S:
        """Return the live store named ``name``, or a new one from ``create()``.

        One name is one store: the live store is returned if ``definition`` is
        the same as its own, and a different definition is refused. Checking and
        creating under one lock means that two threads defining the same store
        at once get the same object.
        """
        with _lock:
            self._sweep()
            old = self._refs.get(name)
            live = old() if old is not None else None
            if old is not None and live is not None:
                different = definition.differences(old.definition)
                if not different:
                    return live
                msg = (
                    f"a live store is already named {name!r} with another definition "
                    f"(different {' and '.join(different)}): it has {old.definition}; this "
                    f"one has {definition}. Store names identify stores across threads and "
                    "processes, so one name is one store: defining it again the same way "
                    "returns the live store, a different definition can't have its name. "
                    "Pick another name, or reuse the existing store with "
                    "contextual.get_store(name); to redefine it (in a REPL or a notebook), "
                    "drop every reference to the old store first."
                )
                raise ValueError(msg)
            store = create()
            ref: _StoreRef[_S, _D] = _StoreRef(store, self._dead.append)
            ref.name = name
            ref.backend = store.backend
            ref.propagate = store.propagate
            ref.definition = definition
            # Pop first: a dead entry not swept yet would keep its old position,
            # and stores() promises creation order.
            self._refs.pop(name, None)
            self._refs[name] = ref
            self._rebuild_view()
        return store

    def get(self, name: str) -> _S:
        """Return the live store named ``name``, or raise :class:`LookupError`."""
        with _lock:
            self._sweep()
            ref = self._refs.get(name)
            store = ref() if ref is not None else None
            if store is not None:
                return store
            known = sorted(n for n, r in self._refs.items() if r() is not None)
        msg = (
            f"no live store is named {name!r}; live stores: {known}. Create it with "
            f"ContextStore({name!r}) before looking it up (in a child process, import the "
            "module that creates it)."
        )
        raise LookupError(msg)

    def stores(self) -> list[_S]:
        """Return every live store, in the order they were created."""
        with _lock:
            self._sweep()
            stores = [r() for r in self._refs.values()]
        return [s for s in stores if s is not None]

    def propagating(self) -> list[_S]:
        """Return every live ``propagate=True`` store, both backends."""
        stores = [r() for r in self.view.propagating]
        return [s for s in stores if s is not None]


renew_locks_after_fork(globals(), "_lock")
