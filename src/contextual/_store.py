"""ContextStore: one mapping API over contextvars and threading.local.

Every store keeps, per context (backend ``"context"``) or per OS thread
(backend ``"thread"``), one plain ``dict`` that is never mutated after it is
published: every write builds a new dict and swaps it in. That single rule
gives the semantics users rely on:

* a task's writes can't reach its parent or siblings, because they share
  dicts only by reference and nobody writes into a shared one;
* ``snapshot()`` and iteration are O(1) and consistent, because
  the dict they hold can't change underneath them;
* a scope restores by putting the entry dict back.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, TypeVar, final, overload

from . import _registry
from ._errors import ScopeError

__all__ = ["BACKENDS", "ContextStore", "StoreScope"]

Backend = Literal["context", "thread"]
BACKENDS: Final = ("context", "thread")

_F = TypeVar("_F", bound=Callable[..., Any])

Values = dict[str, Any]
Defaults = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()
# Shared by every fresh thread and context of a store without defaults. Safe
# to share because no dict a store publishes is ever mutated.
_EMPTY: Final[Values] = {}


def _key_type_error(key: object) -> TypeError:
    return TypeError(
        f"ContextStore keys must be str, got {type(key).__name__} {key!r}. "
        "Convert the key with str() or use a string constant."
    )


def _checked_values(values: object, *, source: str) -> Values:
    """Return ``values`` as a fresh dict with str keys, or raise TypeError."""
    if not isinstance(values, Mapping):
        msg = (
            f"{source} must be a mapping of str keys to values, got "
            f"{type(values).__name__}. Pass a dict such as {{'user': None}}."
        )
        raise TypeError(msg)
    result = dict(values)
    for key in result:
        if not isinstance(key, str):
            msg = f"{source} has a non-str key {key!r}; ContextStore keys must be str."
            raise TypeError(msg)
    return result


def _initial_values(defaults: object, name: str) -> Values | Callable[[], Values]:
    """Return a fresh thread's or context's values: a constant dict or a factory."""
    if defaults is None:
        return _EMPTY
    if isinstance(defaults, Mapping):
        return _checked_values(defaults, source=f"defaults of store {name!r}")
    if callable(defaults):
        source = f"the value returned by the defaults() factory of store {name!r}"
        return functools.partial(_call_factory, defaults, source)
    raise TypeError(
        f"defaults must be a mapping or a zero-argument callable returning one, got "
        f"{type(defaults).__name__}."
    )


def _call_factory(factory: Callable[[], Mapping[str, Any]], source: str) -> Values:
    return _checked_values(factory(), source=source)


class ContextStore(MutableMapping[str, Any]):
    """A mapping of ambient values that belongs to the current task or thread.

    A store is a view: ``store["user"]`` reads the value that *the code running
    now* sees. What that is depends on the backend, chosen by name:

    ``backend="context"`` (the default) keeps values in a
    :class:`contextvars.ContextVar`, so they follow asyncio tasks:

    * code in the same task (or the same thread, outside asyncio) sees its own
      writes at once;
    * a child task (:func:`asyncio.create_task`, :func:`asyncio.gather`) starts
      with a copy of its creator's values; its writes, ``del`` and ``clear()``
      never reach the creator or its siblings, and the creator's later writes
      never reach it;
    * a new thread starts from the defaults (on Python up to 3.13, and on any
      build where ``sys.flags.thread_inherit_context`` is false; where it is
      true, the thread starts with a copy of its starter's values);
    * a thread-pool worker or a child process sees nothing of the caller:
      pools reuse threads that were started elsewhere.

    ``backend="thread"`` keeps values in a :class:`threading.local`:

    * every task and callback running on one OS thread shares the same values,
      and a write in one of them is seen by all (this is what
      ``threading.local`` does; prefer ``"context"`` under asyncio);
    * another thread never sees them, not even while this thread is alive;
      they are freed when the thread exits;
    * a thread-pool worker or a child process sees nothing of the caller.

    In both backends writes never flow back from a child to its parent.

    Keys are ``str``. Values are read and written by item (``store["user"]``)
    or by attribute (``store.user``), like ``threading.local``; a missing name
    raises :class:`KeyError` by item and :class:`AttributeError` by attribute,
    so ``getattr(store, "user", None)`` and ``hasattr`` work. Names that start
    with ``_`` or name a store method or property (``get``, ``name``,
    ``scope``...) are never keys by attribute: use item access for those.

    Args:
        name: Identifies the store in snapshots and across processes. Two live
            stores may not share a name; the name is free again once the old
            store is garbage collected.
        backend: ``"context"`` or ``"thread"``, as described above.
        defaults: The values every fresh thread (``"thread"``) or every
            context that never wrote (``"context"``) starts with, as if set: a
            mapping, or a zero-argument callable returning one, called once per
            thread or once per context on first access (like the ``__init__``
            of a ``threading.local`` subclass).
        propagate: Whether this store travels when context is captured and
            carried into pool workers, threads and processes; ``False`` keeps
            it in the thread or task that wrote it (a registry of per-thread
            connections, say).

    Raises:
        TypeError: ``name`` is not a str, ``defaults`` is neither a mapping nor
            a callable, or has a non-str key.
        ValueError: ``name`` is empty or already taken by a live store, or
            ``backend`` is not one of ``"context"`` and ``"thread"``.

    Example:
        >>> from contextual import ContextStore
        >>> session = ContextStore("example.session", defaults={"user": None})
        >>> session.user is None
        True
        >>> with session.scope(user="ada"):
        ...     session["user"]
        'ada'
        >>> session.user is None
        True

    .. versionadded:: 0.1.0
    """

    __slots__ = ("__weakref__", "_name", "_propagate")

    _name: str
    _propagate: bool
    # Set by each backend: the class that implements scope() for it.
    _scope_class: type[StoreScope]

    def __new__(  # noqa: PYI034 (returns the backend's private subclass)
        cls,
        name: str,
        *,
        backend: Backend = "context",
        defaults: Defaults = None,
        propagate: bool = True,
    ) -> ContextStore:
        del name, defaults, propagate  # checked in __init__
        if cls is not ContextStore:
            msg = "ContextStore is not meant to be subclassed; wrap a store instead."
            raise TypeError(msg)
        impl = _IMPLEMENTATIONS.get(backend) if backend in BACKENDS else None
        if impl is None:
            msg = (
                f"unknown backend {backend!r}; valid backends are "
                f"{', '.join(repr(b) for b in BACKENDS)}."
            )
            raise ValueError(msg)
        return object.__new__(impl)

    def __init__(
        self,
        name: str,
        *,
        backend: Backend = "context",
        defaults: Defaults = None,
        propagate: bool = True,
    ) -> None:
        del backend  # chosen in __new__
        if not isinstance(name, str):
            raise TypeError(f"store name must be a str, got {type(name).__name__} {name!r}.")
        if not name.strip():
            msg = "store name must be a non-empty string such as 'myapp.request'."
            raise ValueError(msg)
        if not isinstance(propagate, bool):
            raise TypeError(f"propagate must be True or False, got {propagate!r}.")
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_propagate", propagate)
        self._setup(_initial_values(defaults, name))
        _registry.register(self)

    # -- backend hooks ------------------------------------------------------

    def _setup(self, initial: Values | Callable[[], Values]) -> None:
        raise NotImplementedError

    def _current(self) -> Values:
        """Return the current thread's or context's values (never mutate them)."""
        raise NotImplementedError

    def _replace(self, values: Values) -> None:
        """Publish ``values`` as the current thread's or context's values."""
        raise NotImplementedError

    # -- identity -----------------------------------------------------------

    @property
    def name(self) -> str:
        """The store's name, unique among live stores.

        .. versionadded:: 0.1.0
        """
        return self._name

    @property
    def backend(self) -> Backend:
        """``"context"`` or ``"thread"``.

        .. versionadded:: 0.1.0
        """
        raise NotImplementedError

    @property
    def propagate(self) -> bool:
        """Whether this store travels with captured context (see ``propagate=``).

        .. versionadded:: 0.1.0
        """
        return self._propagate

    def __repr__(self) -> str:
        extra = "" if self._propagate else " propagate=False"
        return f"<ContextStore {self._name!r} backend={self.backend!r}{extra}>"

    # A store is a live view, not a value: two stores are equal only if they
    # are the same store, and stores stay hashable. Compare snapshot()s to
    # compare values.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __reduce__(self) -> str | tuple[Any, ...]:
        msg = (
            f"{self!r} is a live view of per-thread or per-task values and can't be "
            "pickled or copied. Copy or send its values instead: dict(store.snapshot())."
        )
        raise TypeError(msg)

    # -- mapping: reads -----------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        raise NotImplementedError

    def _missing(self, key: object) -> Exception:
        if not isinstance(key, str):
            return _key_type_error(key)
        return KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, or ``default`` if it is not set.

        .. versionadded:: 0.1.0
        """
        if not isinstance(key, str):
            raise _key_type_error(key)
        return self._current().get(key, default)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            raise _key_type_error(key)
        return key in self._current()

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def keys(self) -> KeysView[str]:
        """Return the keys set now; later writes don't change the result.

        .. versionadded:: 0.1.0
        """
        return self._current().keys()

    def items(self) -> ItemsView[str, Any]:
        """Return the items set now; later writes don't change the result.

        .. versionadded:: 0.1.0
        """
        return self._current().items()

    def values(self) -> ValuesView[Any]:
        """Return the values set now; later writes don't change the result.

        .. versionadded:: 0.1.0
        """
        return self._current().values()

    def snapshot(self) -> Mapping[str, Any]:
        """Return a read-only copy of the current values.

        The copy never changes: writes made after the call, here or anywhere,
        are not seen through it. Taking one costs O(1).

        .. versionadded:: 0.1.0
        """
        return MappingProxyType(self._current())

    # -- mapping: writes ----------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise _key_type_error(key)
        values = self._current().copy()
        values[key] = value
        self._replace(values)

    def __delitem__(self, key: str) -> None:
        current = self._current()
        if key not in current:
            raise self._missing(key)
        values = current.copy()
        del values[key]
        self._replace(values)

    @overload
    def pop(self, key: str, /) -> Any: ...
    @overload
    def pop(self, key: str, default: Any, /) -> Any: ...

    def pop(self, key: str, default: Any = _MISSING, /) -> Any:
        """Remove ``key`` and return its value, or ``default`` if it is not set.

        Raises:
            KeyError: ``key`` is not set and no default was given.

        .. versionadded:: 0.1.0
        """
        if not isinstance(key, str):
            raise _key_type_error(key)
        current = self._current()
        if key not in current:
            if default is _MISSING:
                raise KeyError(key)
            return default
        values = current.copy()
        value = values.pop(key)
        self._replace(values)
        return value

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the most recently set ``(key, value)`` pair.

        Raises:
            KeyError: The store is empty.

        .. versionadded:: 0.1.0
        """
        values = self._current().copy()
        if not values:
            msg = f"popitem(): {self!r} is empty in this context"
            raise KeyError(msg)
        item = values.popitem()
        self._replace(values)
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, setting it to ``default`` first if unset.

        .. versionadded:: 0.1.0
        """
        if not isinstance(key, str):
            raise _key_type_error(key)
        current = self._current()
        if key in current:
            return current[key]
        values = current.copy()
        values[key] = default
        self._replace(values)
        return default

    def update(  # type: ignore[override]
        self,
        other: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
        /,
        **kwargs: Any,
    ) -> None:
        """Set several values at once, like :meth:`dict.update`.

        All keys are checked before anything is written: a bad key raises
        :class:`TypeError` and leaves the store unchanged.

        .. versionadded:: 0.1.0
        """
        incoming = dict(other, **kwargs)
        for key in incoming:
            if not isinstance(key, str):
                raise _key_type_error(key)
        if incoming:
            self._replace({**self._current(), **incoming})

    def clear(self) -> None:
        """Remove every value, defaults included, in the current thread or task.

        .. versionadded:: 0.1.0
        """
        self._replace(_EMPTY)

    # -- attribute access ----------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Python calls this only after normal lookup failed, so methods and
        # properties always win over keys of the same name.
        if name[:1] != "_":
            value = self._current().get(name, _MISSING)
            if value is not _MISSING:
                return value
        msg = f"{self!r} has no value {name!r} in this context"
        raise AttributeError(msg, name=name, obj=self)

    def __setattr__(self, name: str, value: Any) -> None:
        self._check_attribute(name)
        self[name] = value

    def __delattr__(self, name: str) -> None:
        self._check_attribute(name)
        current = self._current()
        if name not in current:
            msg = f"{self!r} has no value {name!r} in this context"
            raise AttributeError(msg, name=name, obj=self)
        del self[name]

    def _check_attribute(self, name: str) -> None:
        if name[:1] == "_" or hasattr(type(self), name):
            msg = (
                f"{name!r} can't be a key by attribute: names that start with '_' or name "
                f"a ContextStore method or property are reserved. Use item access "
                f"instead: store[{name!r}]."
            )
            raise AttributeError(msg, name=name, obj=self)

    def __dir__(self) -> Iterable[str]:
        keys = [k for k in self._current() if k.isidentifier() and not hasattr(type(self), k)]
        return sorted({*super().__dir__(), *keys})

    # -- scopes -------------------------------------------------------------

    def scope(self, **values: Any) -> StoreScope:
        """Set ``values`` for the duration of a block or a call.

        On exit the store is exactly as it was on entry, every key included:
        values the scope set, and anything written inside the block, are
        undone, also when the block raises. Scopes nest.

        The result is a context manager (``with`` and ``async with``) and a
        decorator for functions and coroutine functions; as a decorator it
        enters a fresh scope on every call, so concurrent calls don't interact.

        If the exit runs in another context than the entry (an async generator
        closed by another task), the scope can't reach the context it changed;
        it then undoes, in the current context, each of its own keys that still
        holds the value it set, and never raises a token error.

        Args:
            **values: The values to set inside the scope.

        Returns:
            The scope. Entering it returns this store.

        Example:
            >>> from contextual import ContextStore
            >>> log_ctx = ContextStore("example.scope")
            >>> with log_ctx.scope(job="nightly"):
            ...     log_ctx["job"]
            'nightly'
            >>> "job" in log_ctx
            False

        .. versionadded:: 0.1.0
        """
        return self._scope_class(self, values)

    def _revert(self, values: Values, entry: Values) -> None:
        """Undo by value, in the current context, the keys a scope still owns."""
        current = self._current()
        restored = None
        for key, value in values.items():
            if current.get(key, _MISSING) is value:
                if restored is None:
                    restored = current.copy()
                old = entry.get(key, _MISSING)
                if old is _MISSING:
                    del restored[key]
                else:
                    restored[key] = old
        if restored is not None:
            self._replace(restored)


class StoreScope:
    """What :meth:`ContextStore.scope` returns: a context manager and decorator.

    One scope object is entered by one ``with`` block at a time; entering it
    again while it is active, or exiting it without entering it, raises
    :class:`~contextual.ScopeError`. As a decorator it can be used by any
    number of concurrent calls.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_entry", "_state", "_store", "_values")

    _store: ContextStore
    _values: Values
    _entry: Values | None
    _state: Any

    def __init__(self, store: ContextStore, values: Values) -> None:
        self._store = store
        self._values = values
        self._entry = None
        self._state = None

    def __repr__(self) -> str:
        state = "active" if self._state is not None else "idle"
        return f"<StoreScope of {self._store!r} keys={sorted(self._values)} {state}>"

    def __enter__(self) -> ContextStore:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise NotImplementedError

    def _already_active(self) -> ScopeError:
        return ScopeError(
            f"{self!r} is already active. A scope object serves one 'with' block at a "
            "time; call store.scope(...) again for each block."
        )

    def _not_active(self) -> ScopeError:
        return ScopeError(
            f"{self!r} was exited without being entered. Use it as "
            "'with store.scope(...):' so entry and exit pair up."
        )

    async def __aenter__(self) -> ContextStore:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: _F) -> _F:
        """Decorate ``fn`` so that every call runs inside a fresh copy of this scope."""
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            msg = (
                f"scope() can't decorate the generator function {fn.__qualname__}: the "
                "scope would stay active across every yield, in the caller's context. "
                "Enter 'with store.scope(...):' inside the generator around the code "
                "that needs it."
            )
            raise TypeError(msg)
        if not callable(fn):
            raise TypeError(f"scope() decorates functions, got {type(fn).__name__} {fn!r}.")
        scope_class, store, values = type(self), self._store, self._values

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with scope_class(store, values):
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with scope_class(store, values):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]


# -- backend "context" -------------------------------------------------------


@final
class _ContextVarStore(ContextStore):
    __slots__ = ("_get", "_var")

    _var: contextvars.ContextVar[Values]
    _get: Callable[[], Values]

    def _setup(self, initial: Values | Callable[[], Values]) -> None:
        var_name = f"contextual:{self._name}"
        if isinstance(initial, dict):
            # Constant defaults: the ContextVar's own default serves every
            # context that never wrote, at the cost of a plain var.get().
            var = contextvars.ContextVar(var_name, default=initial)
            get: Callable[[], Values] = var.get
        else:
            var = contextvars.ContextVar(var_name)
            get = functools.partial(_get_or_init, var, initial)
        object.__setattr__(self, "_var", var)
        object.__setattr__(self, "_get", get)

    def _current(self) -> Values:
        return self._get()

    def _replace(self, values: Values) -> None:
        self._var.set(values)

    # The hot paths, without the extra call through _current().
    def __getitem__(self, key: str) -> Any:
        values = self._get()
        try:
            return values[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            pass
        raise self._missing(key)

    @property
    def backend(self) -> Backend:
        """``"context"`` or ``"thread"``."""
        return "context"


def _get_or_init(var: contextvars.ContextVar[Values], initial: Callable[[], Values]) -> Values:
    try:
        return var.get()
    except LookupError:
        # First access in a context that never wrote: run the defaults
        # factory once and keep its result in this context.
        values = initial()
        var.set(values)
        return values


@final
class _ContextScope(StoreScope):
    __slots__ = ()

    _store: _ContextVarStore
    _state: contextvars.Token[Values] | None

    def __enter__(self) -> ContextStore:
        if self._state is not None:
            raise self._already_active()
        store = self._store
        entry = store._get()  # noqa: SLF001
        self._entry = entry
        self._state = store._var.set({**entry, **self._values})  # noqa: SLF001
        return store

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, entry = self._state, self._entry
        if token is None or entry is None:
            raise self._not_active()
        self._state = self._entry = None
        try:
            self._store._var.reset(token)  # noqa: SLF001
        except ValueError:
            # The token belongs to another Context: an async generator holding
            # the scope was closed by another task, or a callback ran the exit
            # elsewhere. Raising here would abort the caller's cleanup.
            self._store._revert(self._values, entry)  # noqa: SLF001


_ContextVarStore._scope_class = _ContextScope  # noqa: SLF001


# -- backend "thread" --------------------------------------------------------


def _constant(values: Values) -> Values:
    return values


class _ThreadValues(threading.local):
    """Per-thread holder of a thread-backend store's values.

    ``v`` lives in each thread's own dict and is made on first access in each
    thread; ``initial`` is a slot, and the slots of a ``threading.local``
    subclass are shared by all threads. Neither ``__init__`` (it also runs
    eagerly in the creating thread, and a defaults factory must run lazily
    there too) nor ``__getattr__`` (it makes every hit three times slower) is
    used for that.
    """

    __slots__ = ("initial",)

    v: Values
    initial: Callable[[], Values]


@final
class _ThreadLocalStore(ContextStore):
    __slots__ = ("_local",)

    _local: _ThreadValues

    def _setup(self, initial: Values | Callable[[], Values]) -> None:
        local = _ThreadValues()
        local.initial = initial if callable(initial) else functools.partial(_constant, initial)
        object.__setattr__(self, "_local", local)

    def _current(self) -> Values:
        try:
            return self._local.v
        except AttributeError:
            return self._first_access()

    def _first_access(self) -> Values:
        local = self._local
        values = local.initial()
        local.v = values
        return values

    def _replace(self, values: Values) -> None:
        self._local.v = values

    def __getitem__(self, key: str) -> Any:
        try:
            values = self._local.v
        except AttributeError:
            values = self._first_access()
        try:
            return values[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            pass
        raise self._missing(key)

    @property
    def backend(self) -> Backend:
        """``"context"`` or ``"thread"``."""
        return "thread"


@final
class _ThreadScope(StoreScope):
    __slots__ = ()

    _store: _ThreadLocalStore
    # The entering thread's threading.local __dict__: identifies that thread
    # even if its ident is reused after it exits.
    _state: dict[str, Any] | None

    def __enter__(self) -> ContextStore:
        if self._state is not None:
            raise self._already_active()
        store = self._store
        local = store._local  # noqa: SLF001
        entry = store._current()  # noqa: SLF001
        self._entry = entry
        self._state = local.__dict__
        local.v = {**entry, **self._values}
        return store

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        owner, entry = self._state, self._entry
        if owner is None or entry is None:
            raise self._not_active()
        self._state = self._entry = None
        local = self._store._local  # noqa: SLF001
        if local.__dict__ is owner:
            local.v = entry
        else:
            # Exited in another thread (a generator finished elsewhere): the
            # entering thread's values are out of reach.
            self._store._revert(self._values, entry)  # noqa: SLF001


_ThreadLocalStore._scope_class = _ThreadScope  # noqa: SLF001

_IMPLEMENTATIONS: Final[dict[str, type[ContextStore]]] = {
    "context": _ContextVarStore,
    "thread": _ThreadLocalStore,
}
