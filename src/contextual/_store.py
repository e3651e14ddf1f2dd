"""ContextStore: one mapping API over contextvars and threading.local.

Every store keeps, per context (backend ``"context"``) or per OS thread
(backend ``"thread"``), one *state*: a ``(values, scope, entry)`` tuple whose
``values`` dict is never mutated after it is published; every write builds a
new dict and publishes a new state. That single rule gives the semantics users
rely on:

* a task's writes can't reach its parent or siblings, because they share
  dicts only by reference and nobody writes into a shared one;
* ``snapshot()`` and iteration are O(1) and consistent, because the dict they
  hold can't change underneath them;
* a scope restores by publishing the state it saw on entry again.

``scope`` is the innermost active scope of this context or thread and
``entry`` the state it found on entry (both ``None`` outside any scope), so
the states form a chain back to the first scope. The chain is what lets a
scope that exits out of order (two generators closed in the other order, two
tasks on one thread) undo its own changes and nothing else, and what tells an
exit running in an unrelated context that there is nothing there to undo.
"""

from __future__ import annotations

import contextvars
import functools
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
from enum import Enum
from types import (
    BuiltinFunctionType,
    CodeType,
    FunctionType,
    MappingProxyType,
    ModuleType,
    TracebackType,
)
from typing import Any, ClassVar, Final, Literal, TypeAlias, TypeVar, cast, final, overload

from ._decorate import AsyncToo, decorate
from ._errors import ScopeError, StoreDefaultsError
from ._registry import Registry

__all__ = [
    "BACKENDS",
    "REGISTRY",
    "ContextStore",
    "StoreDefinition",
    "StoreScope",
    "get_store",
    "list_stores",
    "propagating_stores",
]

Backend = Literal["context", "thread"]
BACKENDS: Final = ("context", "thread")

_F = TypeVar("_F", bound=Callable[..., Any])
_V = TypeVar("_V")

Values: TypeAlias = dict[str, Any]
Defaults: TypeAlias = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
# Defaults once checked: a dict of values known to be immutable, or a factory.
_Checked: TypeAlias = Values | Callable[[], Mapping[str, Any]] | None
# (values, innermost active scope, the state that scope found on entry).
_State: TypeAlias = "tuple[Values, StoreScope | None, _State | None]"


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


def _checked_defaults(defaults: object, name: str) -> _Checked:
    """Return ``defaults`` checked: a dict of immutable values, the factory, or None."""
    if defaults is None:
        return None
    if isinstance(defaults, Mapping):
        values = _checked_values(defaults, source=f"defaults of store {name!r}")
        _refuse_mutable_values(values, name)
        return values
    if callable(defaults):
        # Unchecked: it makes fresh values for each thread or context.
        return cast("Callable[[], Mapping[str, Any]]", defaults)
    raise TypeError(
        f"defaults must be a mapping or a zero-argument callable returning one, got "
        f"{type(defaults).__name__}."
    )


# The values a defaults mapping may hold, besides tuples and frozensets of
# them: exactly these types, since a subclass may add state of its own. By
# name, so that checking a value imports nothing (a Decimal exists only once
# decimal is imported).
_SCALARS: Final = frozenset({type(None), bool, int, float, complex, str, bytes, range})
_SCALARS_BY_NAME: Final = frozenset(
    {
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
    }
)


def _is_scalar(value: object) -> bool:
    kind = type(value)
    return kind in _SCALARS or (kind.__module__, kind.__qualname__) in _SCALARS_BY_NAME


def _known_immutable(value: object) -> bool:
    """Whether ``value`` may be shared by every thread and task: see ContextStore's defaults."""
    if _is_scalar(value) or isinstance(value, (Enum, type, FunctionType)):
        # Functions and classes count too: Python shares them by reference
        # everywhere, and no code keeps per-request state in one.
        return True
    if isinstance(value, BuiltinFunctionType):
        # len, time.monotonic; not [].append, which carries its list.
        return isinstance(value.__self__, ModuleType)
    if type(value) is tuple or type(value) is frozenset:
        return all(_known_immutable(item) for item in value)
    return False


def _refuse_mutable_values(values: Values, name: str) -> None:
    mutable = {key: value for key, value in values.items() if not _known_immutable(value)}
    if not mutable:
        return
    listed = ", ".join(f"{key!r} ({type(value).__name__})" for key, value in mutable.items())
    fresh = ", ".join(f"{key!r}: {_rebuilt(value)}" for key, value in mutable.items())
    msg = (
        f"defaults of store {name!r} hold values not known to be immutable: {listed}. A "
        "defaults mapping is shared by every thread and task, so a change made to one of "
        "these in place would show in all of them. Pass a factory instead, which makes "
        f"fresh values for each thread or context: defaults=lambda: {{{fresh}}} (with your "
        "other defaults in the same dict). Or use immutable values: None, numbers, str, "
        "bytes, dates and times, UUIDs, enum members, functions and classes, and tuples "
        "and frozensets of these."
    )
    raise ValueError(msg)


def _rebuilt(value: object) -> str:
    """Return code that makes ``value`` afresh, for an error message."""
    if type(value) in {list, dict, set, bytearray, tuple, frozenset}:
        text = repr(value)
        if len(text) <= 40:
            return text
    return f"{type(value).__name__}(...)"


@final
class StoreDefinition:
    """What a store was created with; the registry compares it when a name is reused.

    Two definitions are the same when their backend and ``propagate`` are
    equal and their defaults are written the same, so that what
    ``importlib.reload()`` or a re-run notebook cell makes again counts as
    the same: mappings with equal keys, and values of the same type and
    ``repr`` (so ``nan`` is ``nan``, and ``Decimal("1.10")`` is not
    ``Decimal("1.1")``); classes and enum members of the same module and
    qualified name; functions (values or the factory) of the same module,
    qualified name and code, line numbers aside, whose default arguments
    and closure values are the same by these rules. Any other callable
    counts only as itself.
    """

    __slots__ = ("backend", "defaults", "propagate")

    def __init__(self, backend: Backend, propagate: bool, defaults: _Checked) -> None:
        self.backend = backend
        self.propagate = propagate
        self.defaults = defaults

    def differences(self, other: StoreDefinition) -> list[str]:
        """Return the names of what differs from ``other``; empty if nothing does."""
        found = []
        if self.backend != other.backend:
            found.append("backend")
        if self.propagate != other.propagate:
            found.append("propagate")
        if not _same_defaults(self.defaults, other.defaults):
            found.append("defaults")
        return found

    def __str__(self) -> str:
        defaults = self.defaults
        if isinstance(defaults, FunctionType):
            shown = f"{defaults.__module__}.{defaults.__qualname__}"
        else:
            shown = repr(defaults)
        return f"backend={self.backend!r}, propagate={self.propagate!r}, defaults={shown}"


def _same_defaults(a: _Checked, b: _Checked) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, dict) or isinstance(b, dict):
        return False
    return _same(a, b)


def _same(a: object, b: object, *, nested: bool = False) -> bool:
    """Whether ``a`` and ``b`` are written the same (see StoreDefinition).

    Compares only values known to be immutable, by ``repr`` for scalars (no
    user code runs: this runs under the registry's lock). Inside a
    function's closure, a function compares by name and code only, so a
    function that refers to itself can't recurse forever.
    """
    if a is b:
        return True
    if isinstance(a, Enum) and isinstance(b, Enum):
        return a.name == b.name and _same(type(a), type(b))
    if isinstance(a, type) and isinstance(b, type):
        return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)
    if isinstance(a, FunctionType) and isinstance(b, FunctionType):
        return _same_function(a, b, closures=not nested)
    return type(a) is type(b) and _same_value(a, b, nested=nested)


def _same_value(a: Any, b: Any, *, nested: bool) -> bool:
    """Compare two values of the same type that are not the same object."""
    if type(a) is tuple:
        return len(a) == len(b) and all(
            _same(x, y, nested=nested) for x, y in zip(a, b, strict=True)
        )
    if _is_scalar(a):
        return repr(a) == repr(b)
    # A frozenset of immutable values compares with the stdlib's ==; any
    # other value only ever equals itself.
    return type(a) is frozenset and _known_immutable(a) and a == b


def _same_function(a: FunctionType, b: FunctionType, *, closures: bool) -> bool:
    if (a.__module__, a.__qualname__) != (b.__module__, b.__qualname__) or _code_shape(
        a.__code__
    ) != _code_shape(b.__code__):
        return False
    if not closures:
        return True
    return _same(_captured(a), _captured(b), nested=True)


def _captured(fn: FunctionType) -> tuple[object, ...]:
    """The values ``fn`` runs with besides its code and globals."""
    cells = tuple(_cell_contents(cell) for cell in fn.__closure__ or ())
    keywords = tuple(sorted((fn.__kwdefaults__ or {}).items()))
    return (fn.__defaults__ or (), keywords, cells)


def _cell_contents(cell: Any) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # a variable not assigned yet: it may be by the time fn runs
        return _MISSING


def _code_shape(code: CodeType) -> CodeType:
    """Return ``code`` without line numbers, nested code included, to compare it."""
    consts = tuple(_code_shape(c) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_firstlineno=1, co_linetable=b"", co_consts=consts)


def _initial_state(defaults: _Checked, name: str) -> _State | Callable[[], _State]:
    """Return a fresh thread's or context's state: a constant or a factory."""
    if defaults is None:
        return (_EMPTY, None, None)
    if isinstance(defaults, dict):
        return (defaults, None, None)
    return functools.partial(_call_factory, defaults, name)


def _call_factory(factory: Callable[[], Mapping[str, Any]], name: str) -> _State:
    """Run the defaults factory of store ``name``: every call of it goes through here."""
    try:
        values = factory()
    except Exception as exc:
        # Never let the factory's exception out as it is: whatever read the
        # store (a capture() for a pool, another library) would get a bare
        # ZeroDivisionError, and a KeyError or AttributeError would even
        # pass for a missing key.
        msg = (
            f"the defaults() factory of store {name!r} failed ({type(exc).__name__}: {exc}). "
            "The store has no values in this thread or context until the factory succeeds "
            "(it runs again on the next access): every read of the store here fails, and "
            "so does every capture() in this thread if it is a propagate=True 'thread' "
            "store. Fix the factory so that it returns a mapping such as {'user': None}, "
            "or pass defaults as a mapping."
        )
        raise StoreDefaultsError(msg) from exc
    source = f"the value returned by the defaults() factory of store {name!r}"
    return (_checked_values(values, source=source), None, None)


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
    * a thread-pool worker sees nothing of the caller (pools reuse threads
      started elsewhere), nor does a child process started with ``spawn`` or
      ``forkserver``; ``fork`` copies the forking thread's values, as it copies
      all memory.

    ``backend="thread"`` keeps values in a :class:`threading.local`:

    * every task and callback running on one OS thread shares the same values,
      and a write in one of them is seen by all (this is what
      ``threading.local`` does; prefer ``"context"`` under asyncio);
    * another thread never sees them, not even while this thread is alive;
      they are freed when the thread exits;
    * a thread-pool worker sees nothing of the caller; a process started with
      ``fork`` gets a copy of the forking thread's values, others get nothing.

    In both backends writes never flow back from a child to its parent.

    Create stores once, at import time, like :class:`contextvars.ContextVar`:
    with the ``"context"`` backend, a value lives as long as the contexts that
    hold it, even after the store itself is gone (the main thread's context
    lives until exit).

    Keys are ``str``. Values are read and written by item (``store["user"]``)
    or by attribute (``store.user``), like ``threading.local``; a missing name
    raises :class:`KeyError` by item and :class:`AttributeError` by attribute,
    so ``getattr(store, "user", None)`` and ``hasattr`` work. Names that start
    with ``_`` or name a store method or property (``get``, ``name``,
    ``scope``...) are never keys by attribute: use item access for those.

    Args:
        name: Identifies the store in snapshots and across processes, so one
            name is one store. Creating a store again with the name and the
            same definition (backend, ``propagate`` and defaults) returns the
            live store itself, with its values, as happens when a notebook
            cell runs again or ``importlib.reload()`` runs a module again;
            every reference to it, old and new, sees the same values. A
            different definition under the name of a live store is refused;
            the name is free again once that store is garbage collected.
            Defaults count as the same when they are written the same: equal
            keys, with values of the same type and ``repr``; classes and enum
            members of the same module and qualified name; functions, as
            values or as the factory, of the same module, qualified name and
            code (line numbers aside), with the same default arguments and
            closure values. Any other callable factory (a
            :func:`functools.partial`, an object with ``__call__``) is the
            same only as itself.
        backend: ``"context"`` or ``"thread"``, as described above.
        defaults: The values every fresh thread (``"thread"``) or every
            context that never wrote (``"context"``) starts with, as if set: a
            mapping, or a zero-argument callable returning one, called once per
            thread or once per context on first access (like the ``__init__``
            of a ``threading.local`` subclass). Every thread and context
            shares the values of a mapping, so each must be known to be
            immutable: ``None``, :class:`bool`, :class:`int`, :class:`float`,
            :class:`complex`, :class:`str`, :class:`bytes`, :class:`range`,
            ``Decimal``, :class:`~fractions.Fraction`, the ``datetime``
            types (``date``, ``datetime``, ``time``, ``timedelta``,
            ``timezone``), ``UUID``, an enum member,
            a function or a class, or a tuple or frozenset of these. Exactly
            these types: a subclass may add state of its own. Anything else
            (a list, a dict, a set, an instance of your own class) raises
            :class:`ValueError` naming the key; make it in a factory, which
            gives each thread or context its own:
            ``defaults=lambda: {"tags": []}``. A factory that raises leaves
            the store without values there, and it runs again on the next
            access: until it succeeds, each read raises
            :class:`~contextual.StoreDefaultsError`, naming the store, with
            the factory's exception as ``__cause__``. A ``propagate=True``
            ``"thread"`` store is read by every :func:`~contextual.capture`,
            so while its factory fails in a thread, every capture there
            raises that error too: each ``submit`` to a
            :class:`~contextual.ContextExecutor` or
            :class:`~contextual.ContextProcessPoolExecutor`, each
            :meth:`ContextThread.start() <contextual.ContextThread.start>`
            and :func:`~contextual.to_thread`. The store is never skipped,
            since the work would then run without values its caller had.
            A factory that returns something other than a mapping raises
            :class:`TypeError`, also naming the store.
        propagate: Whether this store travels when context is captured and
            carried into pool workers, threads and processes; ``False`` keeps
            it in the thread or task that wrote it (a registry of per-thread
            connections, say).

    Raises:
        TypeError: ``name`` is not a str, ``defaults`` is neither a mapping nor
            a callable, or has a non-str key.
        ValueError: ``name`` is empty or a live store of another definition
            has it, ``backend`` is not one of ``"context"`` and
            ``"thread"``, or a ``defaults`` mapping holds a value not known
            to be immutable.

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
    .. versionchanged:: 0.2.0
       A ``defaults`` factory that raises makes reads (and captures) raise
       :class:`~contextual.StoreDefaultsError`, which names the store,
       instead of the factory's own exception.
    .. versionchanged:: 0.2.0
       Creating a store again with a live store's name and the same
       definition returns that store; it used to raise :class:`ValueError`.
    .. versionchanged:: 0.2.0
       A ``defaults`` mapping with a value not known to be immutable (a
       list, a dict, a set...) raises :class:`ValueError`; it used to be
       shared by every thread and task. Make such values in a factory.
    """

    __slots__ = ("__weakref__", "_fresh", "_get", "_name", "_propagate", "_set")

    _name: str
    _propagate: bool
    # The backend's C-level reader and writer of the current state wherever
    # it can have them: every read and write, scopes included, goes through
    # these two.
    _get: Callable[[], _State]
    _set: Callable[[_State], object]
    # The state of a thread or context that never wrote, when it is a
    # constant (defaults given as a mapping); None with a defaults factory.
    _fresh: _State | None
    # Set per backend class: its name, and the names that attribute access
    # never treats as keys.
    _backend: ClassVar[Backend]
    _reserved: ClassVar[frozenset[str]]

    def __new__(  # noqa: PYI034 (returns the backend's private subclass)
        cls,
        name: str,
        *,
        backend: Backend = "context",
        defaults: Defaults = None,
        propagate: bool = True,
    ) -> ContextStore:
        # All in __new__, no __init__: the result may be the live store of
        # the same definition, which must not be set up again.
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
        if not isinstance(name, str):
            raise TypeError(f"store name must be a str, got {type(name).__name__} {name!r}.")
        if not name.strip():
            msg = "store name must be a non-empty string such as 'myapp.request'."
            raise ValueError(msg)
        if not isinstance(propagate, bool):
            raise TypeError(f"propagate must be True or False, got {propagate!r}.")
        checked = _checked_defaults(defaults, name)
        create = functools.partial(_create, impl, name, propagate, checked)
        return REGISTRY.register(name, StoreDefinition(backend, propagate, checked), create)

    # -- backend hooks ------------------------------------------------------

    def _setup(self, initial: _State | Callable[[], _State]) -> None:
        raise NotImplementedError

    def _state(self) -> _State:
        """Return the current thread's or context's state (never mutate it)."""
        return self._get()

    def _publish(self, state: _State) -> None:
        """Make ``state`` the current thread's or context's state."""
        self._set(state)

    def _current(self) -> Values:
        return self._state()[0]

    def _state_in(self, context: contextvars.Context) -> _State | None:
        """Return this store's state in ``context`` without entering it (context backend)."""
        raise NotImplementedError

    def _forget_in(self, context: contextvars.Context) -> None:
        """Make ``context`` hold this store's fresh state (context backend)."""
        raise NotImplementedError

    def _reset_here(self) -> None:
        """Give the current thread or context the state of one that never wrote."""
        raise NotImplementedError

    def _fresh_state(self) -> _State:
        """Return the state of a thread that never wrote (thread backend)."""
        raise NotImplementedError

    def _replace(self, values: Values) -> None:
        state = self._state()
        self._publish((values, state[1], state[2]))

    # -- identity -----------------------------------------------------------

    @property
    def name(self) -> str:
        """The store's name, which no other live store has.

        .. versionadded:: 0.1.0
        """
        return self._name

    @property
    def backend(self) -> Backend:
        """``"context"`` or ``"thread"``.

        .. versionadded:: 0.1.0
        """
        return self._backend

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
        values = self._get()[0]
        try:
            return values[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            pass
        raise self._missing(key)

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
        state = self._state()
        values = state[0].copy()
        values[key] = value
        self._publish((values, state[1], state[2]))

    def __delitem__(self, key: str) -> None:
        if not isinstance(key, str):
            raise _key_type_error(key)
        state = self._state()
        if key not in state[0]:
            raise KeyError(key)
        values = state[0].copy()
        del values[key]
        self._publish((values, state[1], state[2]))

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
        state = self._state()
        if key not in state[0]:
            if default is _MISSING:
                raise KeyError(key)
            return default
        values = state[0].copy()
        value = values.pop(key)
        self._publish((values, state[1], state[2]))
        return value

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the most recently set ``(key, value)`` pair.

        Raises:
            KeyError: The store is empty.

        .. versionadded:: 0.1.0
        """
        state = self._state()
        if not state[0]:
            msg = f"popitem(): {self!r} is empty in this context"
            raise KeyError(msg)
        values = state[0].copy()
        item = values.popitem()
        self._publish((values, state[1], state[2]))
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, setting it to ``default`` first if unset.

        .. versionadded:: 0.1.0
        """
        if not isinstance(key, str):
            raise _key_type_error(key)
        state = self._state()
        if key in state[0]:
            return state[0][key]
        values = state[0].copy()
        values[key] = default
        self._publish((values, state[1], state[2]))
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
            state = self._state()
            self._publish(({**state[0], **incoming}, state[1], state[2]))

    def clear(self) -> None:
        """Remove every value, defaults included, in the current thread or task.

        .. versionadded:: 0.1.0
        """
        self._replace(_EMPTY)

    # -- attribute access ----------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Python calls this only after normal lookup failed, so methods and
        # properties always win over keys of the same name.
        if name[:1] == "_":
            # Never a key. The message must not use repr(self): before
            # _create has set the slots, repr would land here again.
            msg = (
                f"{type(self).__name__!r} object has no attribute {name!r} (names that start "
                f"with '_' are never keys by attribute; use item access: store[{name!r}])"
            )
            raise AttributeError(msg, name=name, obj=self)
        value = self._current().get(name, _MISSING)
        if value is _MISSING:
            msg = f"{self!r} has no value {name!r} in this context"
            raise AttributeError(msg, name=name, obj=self)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self._check_attribute(name)
        self[name] = value

    def __delattr__(self, name: str) -> None:
        self._check_attribute(name)
        if name not in self._current():
            msg = f"{self!r} has no value {name!r} in this context"
            raise AttributeError(msg, name=name, obj=self)
        del self[name]

    def _check_attribute(self, name: str) -> None:
        if name[:1] == "_" or name in self._reserved:
            msg = (
                f"{name!r} can't be a key by attribute: names that start with '_' or name "
                f"a ContextStore method or property are reserved. Use item access "
                f"instead: store[{name!r}]."
            )
            raise AttributeError(msg, name=name, obj=self)

    def __dir__(self) -> Iterable[str]:
        keys = [k for k in self._current() if k.isidentifier() and k not in self._reserved]
        return sorted({*super().__dir__(), *keys})

    # -- scopes -------------------------------------------------------------

    def scope(self, /, **values: Any) -> StoreScope:
        """Set ``values`` for the duration of a block or a call.

        On exit the store is exactly as it was on entry, every key included:
        values the scope set, and anything written inside the block, are
        undone, also when the block raises. Scopes nest, and a scope object
        may be entered again, even while active, and from several threads or
        tasks at once: each entry is undone by its own exit.

        The result is a context manager (``with`` and ``async with``) and a
        decorator for functions and coroutine functions, entered afresh on
        every call. Calling ``scope()`` alone sets nothing: a scope that is
        never entered (``store.scope(user="ada")`` on a line of its own,
        without ``with``) does nothing, and nothing warns about it, since
        the check would make every scope about a tenth slower.

        Exits don't have to come in the reverse order of entries: when a
        scope exits while scopes entered after it are still active (two
        generators closed in the other order, two coroutines interleaving on
        a ``"thread"`` store), it undoes its own changes and leaves theirs,
        and their exits later restore a state without its changes.

        An exit that runs in another context or thread (an async generator
        closed by another task) undoes the scope there if that context
        inherited it, and otherwise changes nothing there; it never raises.
        It can't reach the context where the scope was entered, which keeps
        the scope's values, as a plain :class:`contextvars.ContextVar` would.

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
        return _make_scope(self, values)


def _create(
    impl: type[ContextStore], name: str, propagate: bool, defaults: _Checked
) -> ContextStore:
    """Make a new store; the registry calls this, under its lock."""
    store = object.__new__(impl)
    object.__setattr__(store, "_name", name)
    object.__setattr__(store, "_propagate", propagate)
    store._setup(_initial_state(defaults, name))
    return store


@final
class StoreScope(AsyncToo[ContextStore]):
    """What :meth:`ContextStore.scope` returns: a context manager and decorator.

    A scope object holds the values to set and nothing else; the record of
    each entry lives in the state of the context or thread that entered it.
    So one object can be entered any number of times, nested or concurrently,
    and every exit finds its own entry. Exiting a scope that was never
    entered raises :class:`~contextual.ScopeError`.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_entered", "_store", "_values")

    _store: ContextStore
    _values: Values
    _entered: bool

    def __init__(self) -> None:
        msg = "create a StoreScope with store.scope(**values)"
        raise TypeError(msg)

    def __repr__(self) -> str:
        return f"<StoreScope of {self._store!r} keys={sorted(self._values)}>"

    def __enter__(self) -> ContextStore:
        store = self._store
        state = store._get()  # noqa: SLF001
        store._set(({**state[0], **self._values}, self, state))  # noqa: SLF001
        # Only ever set to True, so concurrent entries can't disagree.
        self._entered = True
        return store

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        store = self._store
        state = store._get()  # noqa: SLF001
        entry = state[2]
        if state[1] is self and entry is not None:
            store._set(entry)  # noqa: SLF001
        else:
            self._exit_out_of_order(state)

    def _exit_out_of_order(self, state: _State) -> None:
        found = _find_in_chain(state, self)
        if found is None:
            if not self._entered:
                msg = (
                    f"{self!r} was exited without being entered. Use it as "
                    "'with store.scope(...):' so entry and exit pair up."
                )
                raise ScopeError(msg)
            # An exit in a thread or context that never saw this scope (a
            # generator finished elsewhere), or a second exit: nothing here
            # is this scope's to undo, and raising would break the caller's
            # cleanup.
            return
        above, entry = found
        before = entry[0]
        # The values when the next scope entered: this scope's own changes,
        # and nothing of the scopes above it.
        after = above[-1][1][0]
        changed = [
            k
            for k in before.keys() | after.keys()
            if before.get(k, _MISSING) is not after.get(k, _MISSING)
        ]

        def undo(values: Values, shadowed: set[str]) -> Values:
            undone = None
            for key in changed:
                if key in shadowed or values.get(key, _MISSING) is not after.get(key, _MISSING):
                    continue  # changed again since: no longer this scope's
                if undone is None:
                    undone = values.copy()
                old = before.get(key, _MISSING)
                if old is _MISSING:
                    del undone[key]
                else:
                    undone[key] = old
            return values if undone is None else undone

        # Rebuild the states the scopes above found on entry, lowest first,
        # without this scope in the chain, so that their exits restore
        # states that don't have this scope's changes.
        scope, scope_entry = entry[1], entry[2]
        shadowed: set[str] = set()
        for above_scope, above_entry in reversed(above):
            scope_entry = (undo(above_entry[0], shadowed), scope, scope_entry)
            scope = above_scope
            shadowed.update(above_scope._values)  # noqa: SLF001
        self._store._set((undo(state[0], shadowed), scope, scope_entry))  # noqa: SLF001

    def __call__(self, fn: _F) -> _F:
        """Decorate ``fn`` so that every call runs inside this scope."""
        # A scope object holds no per-entry state, so every call enters it.
        return decorate(fn, functools.partial(_identity, self), what="scope()")


_new_scope = object.__new__


def _make_scope(store: ContextStore, values: Values) -> StoreScope:
    """Return ``store.scope(**values)``, for callers that hold a dict already."""
    # Filled in here rather than by __init__: one Python frame less on the
    # path of every 'with store.scope(...)'.
    scope: StoreScope = _new_scope(StoreScope)
    scope._store = store  # noqa: SLF001
    scope._values = values  # noqa: SLF001
    scope._entered = False  # noqa: SLF001
    return scope


def _find_in_chain(
    state: _State, scope: StoreScope
) -> tuple[list[tuple[StoreScope, _State]], _State] | None:
    """Find ``scope`` in the chain of ``state``.

    Returns:
        ``(above, entry)``: the ``(scope, state on entry)`` pairs of the
        scopes entered after it and still active, innermost first, and the
        state ``scope`` found on entry; or ``None`` if ``scope`` is not
        active in this chain.
    """
    above: list[tuple[StoreScope, _State]] = []
    current = state
    while True:
        inner, entry = current[1], current[2]
        if inner is None or entry is None:
            return None
        if inner is scope:
            return above, entry
        above.append((inner, entry))
        current = entry


# -- backend "context" -------------------------------------------------------


@final
class _ContextVarStore(ContextStore):
    __slots__ = ("_var",)
    _backend = "context"

    _var: contextvars.ContextVar[_State | None]

    def _setup(self, initial: _State | Callable[[], _State]) -> None:
        var_name = f"contextual:{self._name}"
        if isinstance(initial, tuple):
            # Constant defaults: the ContextVar's own default serves every
            # context that never wrote, at the cost of a plain var.get().
            var: contextvars.ContextVar[_State | None] = contextvars.ContextVar(
                var_name, default=initial
            )
            get = cast("Callable[[], _State]", var.get)  # never None: the default isn't
            fresh: _State | None = initial
        else:
            # A factory runs on first access in each context; None marks a
            # context where it hasn't run (see _get_or_init).
            var = contextvars.ContextVar(var_name, default=None)
            get = functools.partial(_get_or_init, var, initial)
            fresh = None
        object.__setattr__(self, "_var", var)
        object.__setattr__(self, "_get", get)
        object.__setattr__(self, "_set", var.set)
        object.__setattr__(self, "_fresh", fresh)

    def _state_in(self, context: contextvars.Context) -> _State | None:
        # None: a factory store whose factory never ran in that context.
        return context.get(self._var, self._fresh)

    def _forget_in(self, context: contextvars.Context) -> None:
        context.run(self._var.set, self._fresh)

    def _reset_here(self) -> None:
        # None makes a factory store run its factory again on next access.
        self._var.set(self._fresh)


def _get_or_init(
    var: contextvars.ContextVar[_State | None], initial: Callable[[], _State]
) -> _State:
    state = var.get()
    if state is None:
        # First access in a context that never wrote: run the defaults
        # factory once and keep its result in this context.
        state = initial()
        var.set(state)
    return state


# -- backend "thread" --------------------------------------------------------


def _identity(value: _V) -> _V:
    return value


class _ThreadState(threading.local):
    """Per-thread holder of a thread-backend store's state.

    ``s`` lives in each thread's own dict. With constant defaults,
    ``__init__`` (which ``threading.local`` runs once in each thread, on first
    access) puts them there, so that a plain C-level ``getattr`` reads the
    state. A defaults factory must not run eagerly in the creating thread,
    which ``__init__`` also does, so it runs on first access instead, through
    ``_thread_state``; ``initial`` is a slot, and the slots of a
    ``threading.local`` subclass are shared by all threads. (``__getattr__``
    is no way out: it makes every hit three times slower.)
    """

    __slots__ = ("initial",)

    s: _State
    initial: Callable[[], _State]

    def __init__(self, state: _State | None) -> None:
        if state is not None:
            self.s = state


def _thread_state(local: _ThreadState) -> _State:
    try:
        return local.s
    except AttributeError:
        state = local.initial()
        local.s = state
        return state


@final
class _ThreadLocalStore(ContextStore):
    __slots__ = ("_local",)
    _backend = "thread"

    _local: _ThreadState

    def _setup(self, initial: _State | Callable[[], _State]) -> None:
        if isinstance(initial, tuple):
            local = _ThreadState(initial)
            local.initial = functools.partial(_identity, initial)
            get: Callable[[], _State] = functools.partial(getattr, local, "s")
            object.__setattr__(self, "_fresh", initial)
        else:
            local = _ThreadState(None)
            local.initial = initial
            get = functools.partial(_thread_state, local)
            object.__setattr__(self, "_fresh", None)
        object.__setattr__(self, "_local", local)
        object.__setattr__(self, "_get", get)
        object.__setattr__(self, "_set", functools.partial(setattr, local, "s"))

    def _reset_here(self) -> None:
        if self._fresh is not None:
            self._local.s = self._fresh
        else:
            # The next access in this thread runs the factory again.
            self._local.__dict__.pop("s", None)

    def _fresh_state(self) -> _State:
        return self._local.initial()

    # Reads threading.local directly: a third cheaper than calling _get.
    def __getitem__(self, key: str) -> Any:
        try:
            values = self._local.s[0]
        except AttributeError:
            values = self._get()[0]
        try:
            return values[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            pass
        raise self._missing(key)


_IMPLEMENTATIONS: Final[dict[str, type[ContextStore]]] = {
    "context": _ContextVarStore,
    "thread": _ThreadLocalStore,
}
for _impl in _IMPLEMENTATIONS.values():
    # Python's own messages ("'ContextStore' object is not callable") name
    # the public class, not the private backend class.
    _impl.__name__ = _impl.__qualname__ = "ContextStore"
    _impl._reserved = frozenset(dir(_impl))  # noqa: SLF001
del _impl


REGISTRY: Final[Registry[ContextStore, StoreDefinition]] = Registry()
"""Every live store of this process, by name."""


def get_store(name: str) -> ContextStore:
    """Return the live store named ``name``.

    Args:
        name: The name the store was created with.

    Raises:
        LookupError: No live store has that name (it was never created in this
            process, or every reference to it was dropped).

    .. versionadded:: 0.1.0
    """
    return REGISTRY.get(name)


def list_stores() -> list[ContextStore]:
    """Return every live store, in the order they were created.

    .. versionadded:: 0.1.0
    """
    return REGISTRY.stores()


def propagating_stores() -> list[ContextStore]:
    """Return every live ``propagate=True`` store, both backends."""
    return REGISTRY.propagating()
