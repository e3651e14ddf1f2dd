"""The process-wide registry of live stores, looked up by name.

A name is one store's values, wherever they are read: each name has one
backend (the ContextVar or threading.local that holds the values) and the
store objects that view it. Defining a store again the same way (a re-run
notebook cell, ``importlib.reload()``) makes a new store object over the
same backend, which replaces the old object as the one the name returns.

The registry holds weak references only, so dropping the last store of a
name frees its backend and the name. It is guarded by a lock and never
relies on the GIL: free-threaded builds register and look up stores from
many threads.

It knows a backend only by what it uses of one (:class:`Registrable`) and
of its definition (:class:`Definition`); ``store`` makes the one registry,
and this module never imports it.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final

from .fork import renew_locks_after_fork

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self

__all__ = ["Definition", "Registrable", "Registry", "View"]


class Definition(Protocol):
    """What the registry uses of a store's definition, besides ``str()`` in messages."""

    def differences(self, other: Self) -> list[str]:
        """Return the names of what differs from ``other``; empty if nothing does."""
        ...


_D = TypeVar("_D", bound=Definition)


class Registrable(Protocol):
    """What the registry uses of a backend."""

    @property
    def name(self) -> str:
        """The name of its store."""
        ...

    @property
    def definition(self) -> Any:
        """What its store was defined with (a :class:`Definition`)."""
        ...

    @property
    def propagate(self) -> bool:
        """Whether its store travels with captured context."""
        ...

    @property
    def acts_on_capture(self) -> bool:
        """Whether capture() must prepare the copied context for it."""
        ...

    @property
    def carried_by_thread(self) -> bool:
        """Whether capture() must take its values from the capturing thread."""
        ...


_B = TypeVar("_B", bound=Registrable)
_S = TypeVar("_S")


class _BackendRef(weakref.ref[_B], Generic[_B, _S]):
    """The registry's entry for one name: its backend, weakly, and its stores."""

    __slots__ = ("name", "stores")
    name: str
    # Every store object made over this backend, oldest first; the last live
    # one is the one the name returns.
    stores: list[weakref.ref[_S]]


@final
class View(Generic[_B]):
    """The backends capture() and snapshots need, by role (weak references)."""

    __slots__ = ("acts_on_capture", "carried_by_thread", "propagating")

    def __init__(
        self,
        propagating: tuple[weakref.ref[_B], ...],
        carried_by_thread: tuple[weakref.ref[_B], ...],
        acts_on_capture: tuple[weakref.ref[_B], ...],
    ) -> None:
        self.propagating = propagating
        self.carried_by_thread = carried_by_thread
        self.acts_on_capture = acts_on_capture


# The registry's lock, a module global like the other modules' locks, so that
# a forked child gets a fresh one. (There is one registry: the store module's.)
_lock = threading.Lock()


@final
class Registry(Generic[_B, _S]):
    """Live stores by name, held weakly, in the order their names were first taken."""

    __slots__ = ("_dead", "_refs", "view")

    _refs: dict[str, _BackendRef[_B, _S]]
    # Weakref callbacks run wherever the collector happens to run, including
    # in a thread that already holds _lock (an allocation inside register()
    # can trigger a collection). Taking the lock there would deadlock, so a
    # callback only appends to this deque (thread-safe on every build) and
    # the next locked call sweeps it.
    _dead: deque[_BackendRef[_B, _S]]
    # Rebuilt under _lock whenever the registry changes, and read without it:
    # rebinding one attribute is atomic on every build, so a reader sees the
    # old view or the new one, never a mix of the two.
    view: View[_B]

    def __init__(self) -> None:
        self._refs = {}
        self._dead = deque()
        self.view = View((), (), ())

    def _rebuild_view(self) -> None:
        """Recompute the view capture() reads. Call with _lock held."""
        refs = tuple(self._refs.values())
        self.view = View(
            tuple(r for r in refs if _role(r, "propagate")),
            tuple(r for r in refs if _role(r, "carried_by_thread")),
            tuple(r for r in refs if _role(r, "acts_on_capture")),
        )

    def _sweep(self) -> None:
        """Drop entries whose backend has died. Call with _lock held."""
        changed = False
        while self._dead:
            ref = self._dead.popleft()
            if self._refs.get(ref.name) is ref:
                del self._refs[ref.name]
                changed = True
        if changed:
            self._rebuild_view()

    def register(
        self, name: str, definition: _D, create: Callable[[], _B], adopt: Callable[[_B], _S]
    ) -> _S:
        """Give a new store named ``name`` its backend: the live one, or ``create()``.

        A live backend of the same definition is shared; a different
        definition is refused. ``adopt(backend)`` attaches the new store to
        the backend and returns it; it becomes the store the name returns.
        Checking, creating and adopting under one lock means that two threads
        defining the same store at once share one backend, and that no
        lookup ever finds a store that has no backend yet.
        """
        with _lock:
            self._sweep()
            old = self._refs.get(name)
            backend = old() if old is not None else None
            if old is not None and backend is not None:
                theirs: _D = backend.definition
                different = definition.differences(theirs)
                if different and _newest(old) is None:
                    # Only a snapshot still holds the old backend: the name is free.
                    backend = None
                elif different:
                    msg = (
                        f"a live store is already named {name!r} with another definition "
                        f"(different {' and '.join(different)}): it has {theirs}; this one "
                        f"has {definition}. Store names identify stores across threads and "
                        "processes, so one name is one store: defining it again the same "
                        "way shares the live store's values, a different definition can't "
                        "have its name. Pick another name, or reuse the existing store with "
                        "contextual.get_store(name); to redefine it (in a REPL or a "
                        "notebook), drop every reference to the old store first."
                    )
                    raise ValueError(msg)
                if backend is not None:
                    store = adopt(backend)
                    old.stores = [r for r in old.stores if r() is not None]
                    old.stores.append(weakref.ref(store))
                    return store
            backend = create()
            store = adopt(backend)
            ref: _BackendRef[_B, _S] = _BackendRef(backend, self._dead.append)
            ref.name = name
            ref.stores = [weakref.ref(store)]
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
            store = _newest(ref) if ref is not None else None
            if store is not None:
                return store
            known = sorted(n for n, r in self._refs.items() if _newest(r) is not None)
        msg = (
            f"no live store is named {name!r}; live stores: {known}. Create it with "
            f"ContextStore({name!r}) before looking it up (in a child process, import the "
            "module that creates it)."
        )
        raise LookupError(msg)

    def stores(self) -> list[_S]:
        """Return every live store, in the order their names were first taken."""
        with _lock:
            self._sweep()
            stores = [_newest(r) for r in self._refs.values()]
        return [s for s in stores if s is not None]

    def propagating(self) -> list[_S]:
        """Return every live ``propagate=True`` store, both backends."""
        with _lock:
            self._sweep()
            stores = [_newest(r) for r in self._refs.values() if _role(r, "propagate")]
        return [s for s in stores if s is not None]


def _role(ref: weakref.ref[_B], role: str) -> bool:
    backend = ref()
    return backend is not None and bool(getattr(backend, role))


def _newest(ref: _BackendRef[_B, _S]) -> _S | None:
    """The store the name returns: the newest one still alive."""
    for store_ref in reversed(ref.stores):
        store = store_ref()
        if store is not None:
            return store
    return None


renew_locks_after_fork(globals(), "_lock")
