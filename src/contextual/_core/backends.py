"""The two places a store's values can live: a ContextVar or a threading.local.

A backend object holds one store's values for every context (``"context"``)
or every OS thread (``"thread"``), and is all that the rest of the package
touches of a store's storage. The values are a dict that is never mutated
once published: every write builds a new one. Inside a scope they are a
:class:`Scoped` dict, which also carries the record of the innermost scope
entered here, so one variable holds everything and a read outside any
scope costs a plain ``var.get()``.

The interface is small and the same for both backends:

* ``get()`` and ``set(values)`` read and publish the current values;
* ``fresh`` is the values of a thread or context that never wrote, when
  that is a constant (``None`` with a defaults factory, which runs on the
  first access in each thread or context);
* ``reset_here()``, ``save_here()``, ``restore_here()`` and ``empty_here()``
  act on the current thread or context, for workers and test helpers;
* ``values_in(context)`` and ``seed(...)`` serve propagation, which never
  asks which backend it holds: each backend says what capture must do with
  it, ``acts_on_capture`` (then capture calls its ``on_capture(context)``)
  or ``carried_by_thread`` (then its ``carried()``).

:class:`Saved` keeps what ``save_here()`` returned for several backends,
to put them all back later: the request middleware and the test helpers
use it.

``get`` and ``set`` are C-level callables wherever the backend can have
them (a ContextVar's bound methods, a ``functools.partial`` of
``getattr``/``setattr``): every read and write of a store, and every scope,
goes through them.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias, cast, final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "BACKEND_CLASSES",
    "EMPTY",
    "MISSING",
    "Backend",
    "BackendKind",
    "ContextBackend",
    "Saved",
    "Scoped",
    "ThreadBackend",
    "ThreadEntry",
    "Values",
    "run_with_threads",
]

BackendKind = Literal["context", "thread"]
Values: TypeAlias = dict[str, Any]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
"""Stands for "no value" where ``None`` is a value: a missing key, an unset cell."""

# Shared by every fresh thread and context of a store without defaults. Safe
# to share because no dict a store publishes is ever mutated.
EMPTY: Final[Values] = {}


class Scoped(dict[str, Any]):
    """Values published inside a scope, with the record of the innermost scope entered.

    The record is ``sets``, the dict of values that entry set, made afresh
    for each entry, so that its identity tells one entry from another (and
    holds nothing else alive: no store, no scope object); and ``found``,
    what the entry found, which its exit publishes again. When ``found`` is
    a Scoped dict too, it carries the record of the entry before, so the
    records chain back to the first scope entered in this context or
    thread. That chain is what lets a scope that exits out of order undo its
    own changes and nothing else (``_repair``), and what tells an exit
    running in an unrelated context that there is nothing there to undo.

    A write inside the scope copies the values with :meth:`copy`, which
    keeps the record; :meth:`emptied` does the same for ``clear()``.
    """

    __slots__ = ("found", "sets")

    sets: Values
    """The values the entry set: the dict itself, made for this entry."""
    found: Values
    """The values it found."""

    def copy(self) -> Scoped:
        """Return a copy that carries the same record."""
        return self.like(self)

    def emptied(self) -> Scoped:
        """Return empty values that carry the same record."""
        return self.like(EMPTY)

    def like(self, values: Values) -> Scoped:
        """Return a copy of ``values`` that carries this record."""
        new = Scoped(values)
        new.sets = self.sets
        new.found = self.found
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (for another process) or copied with copy.copy(), values
        # are plain data: the record stays behind.
        return (dict, (dict(self),))


class _Held:
    """What every backend knows of its store: name, ``propagate``, definition, fresh values."""

    __slots__ = ("__weakref__", "definition", "fresh", "name", "propagate")

    def __init__(
        self, name: str, propagate: bool, definition: object, fresh: Values | None
    ) -> None:
        self.name = name
        self.propagate = propagate
        self.definition = definition
        self.fresh = fresh


@final
class ContextBackend(_Held):
    """A store's values in a :class:`contextvars.ContextVar` (backend ``"context"``)."""

    __slots__ = ("_var", "acts_on_capture", "carried_by_thread", "get", "set")
    kind: ClassVar[BackendKind] = "context"

    get: Callable[[], Values]
    set: Callable[[Values], object]

    def __init__(
        self,
        name: str,
        propagate: bool,
        definition: object,
        fresh: Values | None,
        factory: Callable[[], Values] | None,
    ) -> None:
        super().__init__(name, propagate, definition, fresh)
        # A copied Context carries this backend's values by itself; capture()
        # acts only for a store that must not travel.
        self.acts_on_capture = not propagate
        self.carried_by_thread = False
        var_name = f"contextual:{name}"
        var: contextvars.ContextVar[Values | None]
        if factory is None:
            # Constant defaults: the ContextVar's own default serves every
            # context that never wrote, at the cost of a plain var.get().
            var = contextvars.ContextVar(var_name, default=fresh)
            self.get = cast("Callable[[], Values]", var.get)  # never None: the default isn't
        else:
            # A factory runs on first access in each context; None marks a
            # context where it hasn't run (see _get_or_init).
            var = contextvars.ContextVar(var_name, default=None)
            self.get = functools.partial(_get_or_init, var, factory)
        self._var = var
        self.set = var.set

    def reset_here(self) -> None:
        """Give the current context the values of one that never wrote."""
        # None makes a factory store run its factory again on next access.
        self._var.set(self.fresh)

    def empty_here(self) -> None:
        """Make the store empty here, defaults and scopes included."""
        self._var.set(EMPTY)

    def save_here(self) -> Values | None:
        """Return what :meth:`restore_here` needs to put this context back."""
        return self._var.get()

    def restore_here(self, saved: Values | None) -> None:
        """Put back what :meth:`save_here` returned."""
        self._var.set(saved)

    def on_capture(self, context: contextvars.Context) -> None:
        """Prepare ``context``, a copy just captured, for work run elsewhere.

        A store that doesn't travel gets there the values of a context that
        never wrote.
        """
        context.run(self.reset_here)

    def values_in(self, context: contextvars.Context) -> Values | None:
        """Return the values in ``context``, without entering it.

        ``None`` means the context holds the constant defaults, or its
        defaults factory never ran there: a receiving side's own serve.
        """
        values = context.get(self._var, self.fresh)
        return None if values is self.fresh else values

    def seed(
        self, values: Values, context: contextvars.Context, threads: list[ThreadEntry]
    ) -> None:
        """Place ``values`` in a snapshot being built: its ``context`` holds them."""
        del threads
        context.run(self._var.set, values)


def _get_or_init(
    var: contextvars.ContextVar[Values | None], initial: Callable[[], Values]
) -> Values:
    values = var.get()
    if values is None:
        # First access in a context that never wrote: run the defaults
        # factory once and keep its result in this context.
        values = initial()
        var.set(values)
    return values


class _Local(threading.local):
    """Per-thread holder of a thread backend's values.

    ``values`` lives in each thread's own dict. With constant defaults,
    ``__init__`` (which ``threading.local`` runs once in each thread, on first
    access) puts them there, so that a plain C-level ``getattr`` reads them.
    A defaults factory must not run eagerly in the creating thread, which
    ``__init__`` also does, so it runs on first access instead, through
    ``_thread_values``; ``initial`` is a slot, and the slots of a
    ``threading.local`` subclass are shared by all threads. (``__getattr__``
    is no way out: it makes every hit three times slower.) For a factory
    store, ``values`` may be ``None``: the factory runs on the next access.
    """

    __slots__ = ("initial",)

    values: Values  # None in a factory store means "run the factory on next access"
    initial: Callable[[], Values]

    def __init__(self, values: Values | None) -> None:
        if values is not None:
            self.values = values


def _thread_values(local: _Local) -> Values:
    values = getattr(local, "values", None)
    if values is None:
        # First access in this thread, or after a reset: run the factory.
        values = local.initial()
        local.values = values
    return values


@final
class ThreadBackend(_Held):
    """A store's values in a :class:`threading.local` (backend ``"thread"``)."""

    __slots__ = ("acts_on_capture", "carried_by_thread", "get", "local", "peek", "set")
    kind: ClassVar[BackendKind] = "thread"

    get: Callable[[], Values]
    # Publishes values; None (a factory store only) makes the factory run on
    # the next access.
    set: Callable[[Values | None], object]
    # The current thread's values without running a defaults factory: None
    # where it never ran.
    peek: Callable[[], Values | None]

    def __init__(
        self,
        name: str,
        propagate: bool,
        definition: object,
        fresh: Values | None,
        factory: Callable[[], Values] | None,
    ) -> None:
        super().__init__(name, propagate, definition, fresh)
        # No Context carries a threading.local: capture() takes the values
        # of a propagating one itself (carried()); one that doesn't travel
        # needs nothing.
        self.acts_on_capture = False
        self.carried_by_thread = propagate
        local = _Local(fresh)
        if factory is not None:
            local.initial = factory
        # The threading.local itself: the DB helpers read the current
        # thread's values from it directly, on their fast path.
        self.local = local
        if factory is None:
            self.get = functools.partial(getattr, local, "values")
        else:
            self.get = functools.partial(_thread_values, local)
        self.set = functools.partial(setattr, local, "values")
        self.peek = functools.partial(getattr, local, "values", None)

    def reset_here(self) -> None:
        """Give the current thread the values of one that never wrote."""
        self.set(self.fresh)

    def empty_here(self) -> None:
        """Make the store empty here, defaults and scopes included."""
        self.set(EMPTY)

    def save_here(self) -> Values | None:
        """Return what :meth:`restore_here` needs to put this thread back."""
        return self.peek()

    def restore_here(self, saved: Values | None) -> None:
        """Put back what :meth:`save_here` returned."""
        self.set(saved)

    def carried(self) -> ThreadEntry:
        """Return what a snapshot keeps of this thread's values, for work run elsewhere.

        Where the defaults factory never ran, this thread had no values of
        its own, and neither does the work (``None``): it runs the factory
        itself. The factory runs here first all the same, so that if it
        fails the capture fails, rather than send the work off without
        values this thread should have had; what it made is dropped, so the
        capture leaves this thread as it was. The work starts outside every
        scope of this thread.
        """
        values = self.peek()
        if values is None:
            self.get()
            self.set(None)
        elif type(values) is Scoped:
            values = dict(values)
        return (self, self.local, values)

    def entry(self, values: Values | None) -> ThreadEntry:
        """Return a snapshot's entry that publishes ``values`` (see :meth:`carried`)."""
        return (self, self.local, values)

    def values_in(self, context: contextvars.Context) -> Values | None:
        """``None``: no Context holds a thread store's values."""
        del context
        return None

    def seed(
        self, values: Values, context: contextvars.Context, threads: list[ThreadEntry]
    ) -> None:
        """Place ``values`` in a snapshot being built: the snapshot publishes them."""
        del context
        threads.append((self, self.local, values))


Backend: TypeAlias = ContextBackend | ThreadBackend

# What a snapshot keeps of each thread store it carries: the backend, its
# threading.local (whose per-thread dict a run swaps values in and out of
# directly: a run is on the path of every pooled task), and the values to
# publish while work runs in it (None: none, the work runs the defaults
# factory itself).
ThreadEntry: TypeAlias = "tuple[ThreadBackend, _Local, Values | None]"

BACKEND_CLASSES: Final[dict[str, type[ContextBackend | ThreadBackend]]] = {
    "context": ContextBackend,
    "thread": ThreadBackend,
}
"""The backend class of each kind, by name."""


@final
class Saved:
    """Some backends' values in the current thread or context, to put back once.

    Each backend is saved once, however often it is given. :meth:`restore`
    puts the values back where it runs: call it in the thread (for
    ``"thread"`` backends) or the context (``"context"``) that saved them.
    It holds the backends alive until it has put them back.
    """

    __slots__ = ("_values",)

    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        values = {}
        for backend in backends:
            values[backend] = backend.save_here()
        self._values = values

    def add(self, backends: Iterable[Backend]) -> None:
        """Save the current values of those of ``backends`` not saved yet."""
        values = self._values
        for backend in backends:
            if backend not in values:
                values[backend] = backend.save_here()

    def restore(self) -> None:
        """Put every saved backend back as it was when it was saved, here; then forget them."""
        values, self._values = self._values, {}
        for backend, saved in values.items():
            backend.restore_here(saved)


def run_with_threads(
    threads: tuple[ThreadEntry, ...],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Call ``fn`` with each thread store publishing its entry's values, then put them back."""
    # Plain loops, not comprehensions, and the thread's own dict of each
    # threading.local: this runs around every pooled task. None in "values"
    # makes a factory store run its factory on the next access.
    saved = []
    try:
        for _, local, values in threads:
            state = local.__dict__
            saved.append((state, state.get("values")))
            state["values"] = values
        return fn(*args, **kwargs)
    finally:
        for state, values in saved:
            state["values"] = values
