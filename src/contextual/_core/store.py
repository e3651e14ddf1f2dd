"""ContextStore: one mapping API over contextvars and threading.local.

A store is a view over a backend object (``_backends``) that keeps, per
context (``"context"``) or per OS thread (``"thread"``), the store's values:
a dict that is never mutated after it is published; every write builds a new
dict and publishes it. That single rule gives the semantics users rely on:

* a task's writes can't reach its parent or siblings, because they share
  dicts only by reference and nobody writes into a shared one;
* ``snapshot()`` and iteration are O(1) and consistent, because the dict they
  hold can't change underneath them;
* a scope restores by publishing the values it saw on entry again.

Inside a scope the values are a :class:`~contextual._core.backends.Scoped`
dict, which carries the record of the innermost scope entered: the scope,
what it sets, and the values it found, which carry the record of the scope
before, back to the first. The chain is what lets a scope that exits out of
order (two generators closed in the other order, two tasks on one thread)
undo its own changes and nothing else (``repair``), and what tells an exit
running in an unrelated context that there is nothing there to undo.

The store, its scopes, propagation, logging, the test helpers, the
executors and the DB helpers all reach the values through the backend's
interface, and only through it: :func:`backend_of` hands it out.
"""

from __future__ import annotations

import functools
from abc import ABCMeta
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
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, cast, final, overload

from . import repair
from .backends import BACKEND_CLASSES, EMPTY, MISSING, Backend, BackendKind, Scoped, Values
from .decorate import AsyncToo, decorate
from .definition import (
    Checked,
    Defaults,
    StoreDefinition,
    checked_defaults,
    checked_values,
    key_type_error,
)
from .errors import ScopeError, StoreDefaultsError
from .fields import Layout, declare
from .registry import Registry

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "BACKENDS",
    "REGISTRY",
    "ContextStore",
    "StoreScope",
    "backend_of",
    "carried_thread_backends",
    "get_store",
    "list_stores",
    "propagating_stores",
]

BACKENDS: Final = ("context", "thread")

_F = TypeVar("_F", bound=Callable[..., Any])
_S = TypeVar("_S", bound="_Store")


def _defaults_factory(factory: Callable[[], Mapping[str, Any]], name: str) -> Values:
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
            f"{_UNTIL_IT_SUCCEEDS} Fix the factory so that it returns a mapping such as "
            "{'user': None}, or pass defaults as a mapping."
        )
        raise StoreDefaultsError(msg) from exc
    source = f"the value returned by the defaults() factory of store {name!r}"
    return checked_values(values, source=source)


_UNTIL_IT_SUCCEEDS: Final = (
    "The store has no values in this thread or context until the factory succeeds "
    "(it runs again on the next access): every read of the store here fails, and "
    "so does every capture() in this thread if it is a propagate=True 'thread' "
    "store."
)


def _fields_factory(
    constants: Values, factories: dict[str, Callable[[], Any]], name: str
) -> Values:
    """Make a store class's values for a fresh thread or context."""
    values = dict(constants)
    for key, factory in factories.items():
        try:
            values[key] = factory()
        except Exception as exc:  # noqa: PERF203 (raises at the first failure)
            msg = (
                f"the default_factory of field {key!r} of store {name!r} failed "
                f"({type(exc).__name__}: {exc}). {_UNTIL_IT_SUCCEEDS} Fix the factory."
            )
            raise StoreDefaultsError(msg) from exc
    return values


def _start(
    name: str, defaults: Checked, factories: dict[str, Callable[[], Any]] | None
) -> tuple[Values | None, Callable[[], Values] | None]:
    """Return what a fresh thread or context starts with: a constant, or a factory."""
    if factories:
        constants = defaults if isinstance(defaults, dict) else {}
        return None, functools.partial(_fields_factory, constants, factories, name)
    if defaults is None:
        return EMPTY, None
    if isinstance(defaults, dict):
        return defaults, None
    return None, functools.partial(_defaults_factory, defaults, name)


class _StoreMeta(ABCMeta):
    """The metaclass of stores: gives a store class the base of its own kind.

    A store class (``class RequestState(ContextStore): ...``) reads its
    fields by attribute through plain properties, and CPython reads those
    about twice as fast on a class without ``__getattr__``. ContextStore has
    one, for the keys of a plain store, so a store class derives from the
    base that ContextStore derives from, which has every store method and
    no attribute hooks, and is registered as a virtual subclass of
    ContextStore: ``isinstance(store, ContextStore)`` and ``issubclass``
    hold, and type checkers see the class as written.
    """

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        /,
        **options: Any,
    ) -> _StoreMeta:
        plain = _plain_class
        swapped = plain is not None and plain in bases
        if swapped:
            bases = tuple(_Store if base is plain else base for base in bases)
        cls = super().__new__(mcls, name, bases, namespace, **options)
        if swapped:
            plain.register(cls)  # type: ignore[union-attr]
        return cls


# ContextStore, once it exists: the base the metaclass swaps.
_plain_class: type | None = None


class _Store(MutableMapping[str, Any], metaclass=_StoreMeta):
    """Everything a store is, but attribute access to keys (see ContextStore)."""

    __slots__ = ("__weakref__", "_get", "_impl", "_set")

    # The backend that holds the values, and its reader and writer of the
    # current values (C-level wherever it can have them): every read and
    # write, scopes included, goes through these two.
    _impl: Backend
    _get: Callable[[], Values]
    _set: Callable[[Values], object]
    # Set per class: a store class's layout (None for plain stores), and the
    # names that attribute access never treats as keys.
    _layout: ClassVar[Layout | None] = None

    def __init_subclass__(
        cls,
        /,
        *,
        backend: BackendKind | None = None,
        propagate: bool | None = None,
        **options: Any,
    ) -> None:
        """Check a store class's fields and options when it is created."""
        super().__init_subclass__()
        if _plain_class is None:
            return  # ContextStore itself
        given = {"backend": backend, "propagate": propagate, **options}
        layout = declare(cls, _Store, _MEMBERS, {k: v for k, v in given.items() if v is not None})
        cls._layout = layout
        type.__setattr__(cls, "__setattr__", _field_setattr)
        type.__setattr__(cls, "__delattr__", _field_delattr)

    def __init__(
        self,
        name: str | None = None,
        *,
        backend: BackendKind | None = None,
        defaults: Defaults = None,
        propagate: bool | None = None,
    ) -> None:
        layout = self._layout
        kind: BackendKind
        if layout is None:
            if name is None:
                msg = (
                    "a ContextStore needs a name, such as ContextStore('myapp.request'); "
                    "a store class (class RequestState(ContextStore): ...) may leave it out."
                )
                raise TypeError(msg)
            kind = "context" if backend is None else backend
            if kind not in BACKENDS:  # a str from a config file, say
                msg = (
                    f"unknown backend {backend!r}; valid backends are "
                    f"{', '.join(repr(b) for b in BACKENDS)}."
                )
                raise ValueError(msg)
            propagate = True if propagate is None else propagate
            factories = None
            origin = None
        else:
            cls = type(self)
            given = [
                option
                for option, value in (
                    ("backend", backend),
                    ("defaults", defaults),
                    ("propagate", propagate),
                )
                if value is not None
            ]
            if given:
                msg = (
                    f"{cls.__qualname__}() got {', '.join(given)}=: a store class takes "
                    f"backend and propagate as class options (class {cls.__qualname__}"
                    "(ContextStore, backend='thread', propagate=False): ...) and its "
                    "defaults from its fields."
                )
                raise TypeError(msg)
            if name is None:
                name = f"{cls.__module__}.{cls.__qualname__}"
            kind, propagate = layout.backend, layout.propagate
            factories = layout.factories
            origin = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(name, str):
            raise TypeError(f"store name must be a str, got {type(name).__name__} {name!r}.")
        if not name.strip():
            msg = "store name must be a non-empty string such as 'myapp.request'."
            raise ValueError(msg)
        if not isinstance(propagate, bool):
            raise TypeError(f"propagate must be True or False, got {propagate!r}.")
        if layout is None:
            checked = checked_defaults(defaults, name, _MEMBERS)
            definition = StoreDefinition(kind, propagate, checked)
        else:
            checked = dict(layout.constants)
            definition = StoreDefinition(
                kind,
                propagate,
                checked,
                origin=origin,
                fields=layout.fields,
                factories=factories,
            )
        fresh, factory = _start(name, checked, factories)
        create = functools.partial(
            BACKEND_CLASSES[kind], name, propagate, definition, fresh, factory
        )
        REGISTRY.register(name, definition, create, functools.partial(_adopt, self))

    # -- identity -----------------------------------------------------------

    @property
    def name(self) -> str:
        """The store's name, which no store of another definition has.

        .. versionadded:: 0.1.0
        """
        return self._impl.name

    @property
    def backend(self) -> BackendKind:
        """``"context"`` or ``"thread"``.

        .. versionadded:: 0.1.0
        """
        return self._impl.kind

    @property
    def propagate(self) -> bool:
        """Whether this store travels with captured context (see ``propagate=``).

        .. versionadded:: 0.1.0
        """
        return self._impl.propagate

    def __repr__(self) -> str:
        impl = self._impl
        extra = "" if impl.propagate else " propagate=False"
        return f"<{type(self).__name__} {impl.name!r} backend={impl.kind!r}{extra}>"

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
        values = self._get()
        try:
            return values[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            pass
        if not isinstance(key, str):
            raise key_type_error(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, or ``default`` if it is not set.

        .. versionadded:: 0.1.0
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        return self._get().get(key, default)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            raise key_type_error(key)
        return key in self._get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def keys(self) -> KeysView[str]:
        """Return the keys set now; later writes don't change the result.

        .. versionadded:: 0.1.0
        """
        return self._get().keys()

    def items(self) -> ItemsView[str, Any]:
        """Return the items set now; later writes don't change the result.

        .. versionadded:: 0.1.0
        """
        return self._get().items()

    def values(self) -> ValuesView[Any]:
        """Return the values set now; later writes don't change the result.

        .. versionadded:: 0.1.0
        """
        return self._get().values()

    def snapshot(self) -> Mapping[str, Any]:
        """Return a read-only copy of the current values.

        The copy never changes: writes made after the call, here or anywhere,
        are not seen through it. Taking one costs O(1).

        .. versionadded:: 0.1.0
        """
        return MappingProxyType(self._get())

    # -- mapping: writes ----------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise key_type_error(key)
        values = self._get().copy()
        values[key] = value
        self._set(values)

    def __delitem__(self, key: str) -> None:
        if not isinstance(key, str):
            raise key_type_error(key)
        values = self._get()
        if key not in values:
            raise KeyError(key)
        values = values.copy()
        del values[key]
        self._set(values)

    @overload
    def pop(self, key: str, /) -> Any: ...
    @overload
    def pop(self, key: str, default: Any, /) -> Any: ...

    def pop(self, key: str, default: Any = MISSING, /) -> Any:
        """Remove ``key`` and return its value, or ``default`` if it is not set.

        Raises:
            KeyError: ``key`` is not set and no default was given.

        .. versionadded:: 0.1.0
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        values = self._get()
        if key not in values:
            if default is MISSING:
                raise KeyError(key)
            return default
        values = values.copy()
        value = values.pop(key)
        self._set(values)
        return value

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the most recently set ``(key, value)`` pair.

        Raises:
            KeyError: The store is empty.

        .. versionadded:: 0.1.0
        """
        values = self._get()
        if not values:
            msg = f"popitem(): {self!r} is empty in this context"
            raise KeyError(msg)
        values = values.copy()
        item = values.popitem()
        self._set(values)
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, setting it to ``default`` first if unset.

        .. versionadded:: 0.1.0
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        values = self._get()
        if key in values:
            return values[key]
        values = values.copy()  # a Scoped copy keeps its record
        values[key] = default
        self._set(values)
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
                raise key_type_error(key)
        if incoming:
            values = self._get().copy()
            values.update(incoming)
            self._set(values)

    def clear(self) -> None:
        """Remove every value, defaults included, in the current thread or task.

        .. versionadded:: 0.1.0
        """
        values = self._get()
        self._set(values.emptied() if type(values) is Scoped else EMPTY)

    # -- scopes -------------------------------------------------------------

    def scope(
        self, values: Mapping[str, Any] | None = None, /, **keywords: Any
    ) -> StoreScope[Self]:
        """Set values for the duration of a block or a call.

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
        and their exits later restore a state without its changes. As a
        decorator, each call enters a scope of its own, so interleaving
        calls undo their own entries; one scope object entered twice in one
        thread or task, though, can't tell its two entries apart, and its
        exits undo the innermost first: make one ``store.scope(...)`` per
        ``with`` block where exits may come out of order.

        An exit that runs in another context or thread (an async generator
        closed by another task) undoes the scope there if that context
        inherited it, and otherwise changes nothing there; it never raises.
        It can't reach the context where the scope was entered, which keeps
        the scope's values, as a plain :class:`contextvars.ContextVar` would.

        Args:
            values: Values to set, under any str keys.
            **keywords: Values to set, by keys that could be read by
                attribute: a field of a store class, or, for a plain store,
                any name but a store member's (``name``, ``items``...). Pass
                other keys in ``values``: ``store.scope({"name": "ada"})``.

        Returns:
            The scope. Entering it returns this store.

        Raises:
            TypeError: A keyword is not a field of this store class, or names
                a store member; a key of ``values`` is not a str.

        Example:
            >>> from contextual import ContextStore
            >>> log_ctx = ContextStore("example.scope")
            >>> with log_ctx.scope(job="nightly"):
            ...     log_ctx["job"]
            'nightly'
            >>> "job" in log_ctx
            False

        .. versionadded:: 0.1.0
        .. versionchanged:: 0.2.0
           Takes a mapping of any str keys; keywords that name a store member
           (or, for a store class, that are not fields) raise
           :class:`TypeError`.
        """
        if keywords:
            layout = self._layout
            if layout is None:
                if not _MEMBER_NAMES.isdisjoint(keywords):
                    raise self._member_keywords(keywords)
            elif not layout.fields.issuperset(keywords):
                raise self._not_fields(keywords, layout)
            if values is not None:
                keywords = {**checked_values(values, source="scope() values"), **keywords}
        elif values is not None:
            keywords = checked_values(values, source="scope() values")
        # StoreScope's fields filled in here, not by its __init__: a Python
        # frame less on every 'with store.scope(...)'.
        scope: StoreScope[Self] = _new_object(StoreScope)
        scope._store, scope._impl, scope._values, scope._entered = self, self._impl, keywords, False  # noqa: SLF001 (the store fills in its scope: a third of scope()'s cost)
        return scope

    def _member_keywords(self, keywords: Mapping[str, Any]) -> TypeError:
        clashes = sorted(_MEMBER_NAMES.intersection(keywords))
        key = clashes[0]
        msg = (
            f"scope() keyword {key!r} names ContextStore.{key} ({_MEMBERS[key]}): "
            f"store.{key} would return that, never the value. Pass such keys in a "
            f"mapping: store.scope({{{key!r}: ...}})."
        )
        return TypeError(msg)

    def _not_fields(self, keywords: Mapping[str, Any], layout: Layout) -> TypeError:
        unknown = sorted(set(keywords) - layout.fields)
        msg = (
            f"{type(self).__qualname__} has no field {', '.join(map(repr, unknown))}; its "
            f"fields are {sorted(layout.fields)}. Declare it as a field, or pass keys that "
            f"are not fields in a mapping: store.scope({{{unknown[0]!r}: ...}})."
        )
        return TypeError(msg)


class ContextStore(_Store):
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
    Where a key would be used by attribute (a ``defaults`` key, a
    :meth:`scope` keyword), such a name is refused with an error, so that
    ``store.name`` can never quietly mean something else than the key.

    Subclass ContextStore to declare a store's keys as typed fields, read and
    written by attribute (see :ref:`store-classes`)::

        class RequestState(ContextStore, backend="context"):
            tenant: str | None = None
            tags: list[str] = field(default_factory=list)


        current = RequestState()  # named after the class: "myapp.RequestState"

    Args:
        name: Identifies the store in snapshots and across processes, so one
            name is one store. Creating a store again with the name and the
            same definition (backend, ``propagate`` and defaults) makes a new
            store object over the live store's values, which replaces the
            old one as the store :func:`~contextual.get_store` returns, as
            happens when a notebook cell runs again or ``importlib.reload()``
            runs a module again: every object, old and new, sees the same
            values. A different definition under the name of a live store is
            refused; the name is free again once every store of that name is
            garbage collected. Optional for a store class, whose name is then
            its module and qualified name (``"myapp.RequestState"``).
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
            ``defaults=lambda: {"tags": []}``. A key of a mapping may not
            name a store member (``name``, ``items``...): that raises
            :class:`ValueError` too. A factory that raises leaves
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
            A store class gives its fields' defaults instead.
        propagate: Whether this store travels when context is captured and
            carried into pool workers, threads and processes; ``False`` keeps
            it in the thread or task that wrote it (a registry of per-thread
            connections, say). ``True`` by default.

    ``backend`` and ``propagate`` of a store class are class options
    (``class RequestState(ContextStore, backend="thread")``), and its
    fields give its defaults: passing any of the three when creating one
    raises :class:`TypeError`.

    Raises:
        TypeError: ``name`` is missing (plain ContextStore) or not a str,
            ``defaults`` is neither a mapping nor a callable, or has a
            non-str key; a store class was given ``backend``, ``defaults``
            or ``propagate``.
        ValueError: ``name`` is empty or a live store of another definition
            has it, ``backend`` is not one of ``"context"`` and
            ``"thread"``, or a ``defaults`` mapping holds a value not known
            to be immutable or a key that names a store member.

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
       definition makes a store over the same values, which replaces the old
       one in the registry; it used to raise :class:`ValueError`.
    .. versionchanged:: 0.2.0
       ContextStore can be subclassed to declare typed fields; ``defaults``
       keys that name a store member raise :class:`ValueError`.
    .. versionchanged:: 0.2.0
       A ``defaults`` mapping with a value not known to be immutable (a
       list, a dict, a set...) raises :class:`ValueError`; it used to be
       shared by every thread and task. Make such values in a factory.
    """

    __slots__ = ()

    # -- attribute access ----------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Python calls this only after normal lookup failed, so methods and
        # properties always win over keys of the same name. A name that
        # starts with '_' is never a key: checked first, since before
        # __init__ has set the slots, self._get would land here again.
        # ("_" <= name < "`" says that in two compares, where slicing costs
        # more: "`" is the character after "_".)
        if not "_" <= name < "`":
            try:
                return self._get()[name]
            except KeyError:
                pass
            msg = f"{self!r} has no value {name!r} in this context"
        else:
            msg = (
                f"{type(self).__name__!r} object has no attribute {name!r} (names that start "
                f"with '_' are never keys by attribute; use item access: store[{name!r}])"
            )
        raise AttributeError(msg, name=name, obj=self)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_" <= name < "`" or name in _MEMBER_NAMES:  # see __getattr__
            raise self._not_by_attribute(name)
        values = self._get().copy()
        values[name] = value
        self._set(values)

    def __delattr__(self, name: str) -> None:
        if "_" <= name < "`" or name in _MEMBER_NAMES:  # see __getattr__
            raise self._not_by_attribute(name)
        values = self._get()
        if name not in values:
            msg = f"{self!r} has no value {name!r} in this context"
            raise AttributeError(msg, name=name, obj=self)
        values = values.copy()
        del values[name]
        self._set(values)

    def _not_by_attribute(self, name: str) -> AttributeError:
        msg = (
            f"{name!r} can't be a key by attribute: names that start with '_' or name "
            f"a ContextStore method or property are reserved. Use item access "
            f"instead: store[{name!r}]."
        )
        return AttributeError(msg, name=name, obj=self)

    def __dir__(self) -> Iterable[str]:
        keys = [k for k in self._get() if k.isidentifier() and k not in _MEMBER_NAMES]
        return sorted({*super().__dir__(), *keys})


_plain_class = ContextStore


def _adopt(store: _Store, impl: Backend) -> _Store:
    """Attach ``store`` to its backend; the registry calls this, under its lock."""
    object.__setattr__(store, "_impl", impl)
    object.__setattr__(store, "_get", impl.get)
    object.__setattr__(store, "_set", impl.set)
    return store


def backend_of(store: _Store) -> Backend:
    """Return the backend that holds ``store``'s values.

    The one door from a store to its storage: propagation, logging, the test
    helpers, the executors and the DB helpers use the backend's interface,
    never the store's private attributes.
    """
    return store._impl  # noqa: SLF001 (the store module's own accessor for its backend)


# -- store classes: attribute hooks -------------------------------------------


def _field_setattr(self: _Store, name: str, value: Any) -> None:
    layout = self._layout
    if layout is None or name not in layout.fields:
        raise _not_a_field(self, name)
    values = self._get().copy()
    values[name] = value
    self._set(values)


def _field_delattr(self: _Store, name: str) -> None:
    layout = self._layout
    if layout is None or name not in layout.fields:
        raise _not_a_field(self, name)
    values = self._get()
    if name not in values:
        msg = f"field {name!r} of {self!r} is not set in this context"
        raise AttributeError(msg, name=name, obj=self)
    values = values.copy()
    del values[name]
    self._set(values)


def _not_a_field(self: _Store, name: str) -> AttributeError:
    layout = self._layout
    fields = sorted(layout.fields) if layout is not None else []
    msg = (
        f"{type(self).__qualname__} has no field {name!r}; its fields are {fields}. "
        f"Declare it as a field, or use item access for keys that are not fields: "
        f"store[{name!r}] = ..."
    )
    return AttributeError(msg, name=name, obj=self)


# What each member of ContextStore is, for messages; and their names, which
# are never keys by attribute.
_MEMBERS: Final[dict[str, str]] = {
    key: (
        "a property"
        if isinstance(value, property)
        else "a method"
        if callable(value)
        else "an attribute"
    )
    for key in dir(ContextStore)
    for value in (getattr(ContextStore, key, None),)
}
_MEMBER_NAMES: Final = frozenset(_MEMBERS)


@final
class StoreScope(AsyncToo[_S]):
    """What :meth:`ContextStore.scope` returns: a context manager and decorator.

    A scope object holds the values to set and nothing else; the record of
    each entry lives in the context or thread that entered it. So one object
    can be entered any number of times, nested or concurrently, and every
    exit finds its own entry. Exiting a scope that was never entered raises
    :class:`~contextual.ScopeError`.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_entered", "_impl", "_store", "_values")

    _store: _S
    _impl: Backend
    _values: Values
    _entered: bool

    def __init__(self) -> None:
        msg = "create a StoreScope with store.scope(**values)"
        raise TypeError(msg)

    def __repr__(self) -> str:
        return f"<StoreScope of {self._store!r} keys={sorted(self._values)}>"

    def __enter__(self) -> _S:
        # enter_scope(), inlined: a frame less on every scope.
        impl = self._impl
        found = impl.get()
        sets = self._values
        values = _new_scoped(found, **sets)
        values.sets, values.found = sets, found
        impl.set(values)
        # Only ever set to True, so concurrent entries can't disagree.
        self._entered = True
        return self._store

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # exit_scope()'s common case, inlined: a frame less on every scope.
        impl = self._impl
        values = impl.get()
        if type(values) is Scoped and values.sets is self._values:
            impl.set(values.found)
            return
        if not exit_scope(impl, self._values) and not self._entered:
            msg = (
                f"{self!r} was exited without being entered. Use it as "
                "'with store.scope(...):' so entry and exit pair up."
            )
            raise ScopeError(msg)

    def __call__(self, fn: _F) -> _F:
        """Decorate ``fn`` so that every call runs inside this scope."""
        # A scope object holds no per-entry state, so every call enters it.
        # Each call enters a scope of its own: two calls that interleave (two
        # coroutines on one thread) must each undo their own entry.
        return decorate(fn, self._again, what="scope()")

    def _again(self) -> StoreScope[_S]:
        """Return a new scope of the same store and values, for one entry."""
        scope: StoreScope[_S] = _new_object(StoreScope)
        scope._store, scope._impl, scope._values = self._store, self._impl, dict(self._values)
        scope._entered = False
        return scope


def enter_scope(impl: Backend, sets: Values) -> None:
    """Publish ``sets`` over the current values, recording the entry.

    ``sets`` must be a dict made for this entry: its identity is what
    :func:`exit_scope` finds the entry by.
    """
    found = impl.get()
    values = _new_scoped(found, **sets)
    values.sets, values.found = sets, found
    impl.set(values)


def exit_scope(impl: Backend, sets: Values) -> bool:
    """Undo the entry that set ``sets`` here; return whether it was active here.

    An exit in a thread or context that never saw the scope (a generator
    finished elsewhere), or a second exit, finds nothing of the scope's to
    undo, and changes nothing.
    """
    values = impl.get()
    try:
        innermost = values.sets is sets  # type: ignore[attr-defined]
    except AttributeError:  # plain values: no scope is active here
        innermost = False
    if innermost:
        impl.set(values.found)  # type: ignore[attr-defined]
        return True
    found = repair.find(values, sets)
    if found is None:
        return False
    repair.exit_out_of_order(impl, *found)
    return True


_new_scoped: Final = Scoped
_new_object: Final = object.__new__


REGISTRY: Final[Registry[Backend, _Store]] = Registry()
"""Every live store of this process, by name."""


def get_store(name: str) -> ContextStore:
    """Return the live store named ``name``.

    After a store was defined again the same way (see ``name`` of
    :class:`ContextStore`), the newest store of the name.

    Args:
        name: The name the store was created with.

    Raises:
        LookupError: No live store has that name (it was never created in this
            process, or every reference to it was dropped).

    .. versionadded:: 0.1.0
    """
    return cast("ContextStore", REGISTRY.get(name))


def list_stores() -> list[ContextStore]:
    """Return every live store, in the order they were created.

    .. versionadded:: 0.1.0
    """
    return cast("list[ContextStore]", REGISTRY.stores())


def propagating_stores() -> list[ContextStore]:
    """Return every live ``propagate=True`` store, both backends."""
    return cast("list[ContextStore]", REGISTRY.propagating())


def carried_thread_backends() -> list[Backend]:
    """Return the live backends of the ``propagate=True`` ``"thread"`` stores.

    Those whose values :func:`~contextual.capture` takes from the thread.
    Lock-free: it reads the registry's view, as capture does.
    """
    backends = []
    for ref in REGISTRY.view.carried_by_thread:
        backend = ref()
        if backend is not None:
            backends.append(backend)
    return backends
