"""What a store is defined with: checked defaults, and when two definitions are the same.

A store's definition is its backend, ``propagate``, and what a fresh thread
or context starts with: a ``defaults`` mapping of values known to be
immutable, a ``defaults`` factory, or (for a store class) the fields'
defaults and default factories. The registry compares definitions when a
name is defined again, so that a re-run notebook cell or
``importlib.reload()`` counts as the same store, and anything else under a
live name is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from types import BuiltinFunctionType, CodeType, FunctionType, ModuleType
from typing import Any, Final, TypeAlias, cast, final

from .backends import MISSING, BackendKind, Values

__all__ = [
    "IMMUTABLE_VALUES",
    "Checked",
    "Defaults",
    "StoreDefinition",
    "checked_defaults",
    "checked_values",
    "key_type_error",
    "known_immutable",
    "rebuilt",
]

Defaults: TypeAlias = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
# Defaults once checked: a dict of values known to be immutable, or a factory.
Checked: TypeAlias = Values | Callable[[], Mapping[str, Any]] | None


def key_type_error(key: object) -> TypeError:
    return TypeError(
        f"ContextStore keys must be str, got {type(key).__name__} {key!r}. "
        "Convert the key with str() or use a string constant."
    )


def checked_values(values: object, *, source: str) -> Values:
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


def checked_defaults(defaults: object, name: str, members: Mapping[str, str]) -> Checked:
    """Return ``defaults`` checked: a dict of immutable values, the factory, or None.

    ``members`` maps the name of each store member to what it is ("a
    method", "a property"): a key of a defaults mapping may not be one, since
    reading it by attribute would return the member.
    """
    if defaults is None:
        return None
    if isinstance(defaults, Mapping):
        values = checked_values(defaults, source=f"defaults of store {name!r}")
        _refuse_members(values, name, members)
        mutable = {key: value for key, value in values.items() if not known_immutable(value)}
        if mutable:
            listed = ", ".join(
                f"{key!r} ({type(value).__name__})" for key, value in mutable.items()
            )
            fresh = ", ".join(f"{key!r}: {rebuilt(value)}" for key, value in mutable.items())
            msg = (
                f"defaults of store {name!r} hold values not known to be immutable: {listed}. "
                "A defaults mapping is shared by every thread and task, so a change made to "
                "one of these in place would show in all of them. Pass a factory instead, "
                f"which makes fresh values for each thread or context: defaults=lambda: "
                f"{{{fresh}}} (with your other defaults in the same dict). Or use "
                f"{IMMUTABLE_VALUES}."
            )
            raise ValueError(msg)
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


def known_immutable(value: object) -> bool:
    """Whether ``value`` may be shared by every thread and task: see ContextStore's defaults."""
    if _is_scalar(value) or isinstance(value, (Enum, type, FunctionType)):
        # Functions and classes count too: Python shares them by reference
        # everywhere, and no code keeps per-request state in one.
        return True
    if isinstance(value, BuiltinFunctionType):
        # len, time.monotonic; not [].append, which carries its list.
        return isinstance(value.__self__, ModuleType)
    if type(value) is tuple or type(value) is frozenset:
        return all(known_immutable(item) for item in value)
    return False


IMMUTABLE_VALUES: Final = (
    "immutable values: None, numbers, str, bytes, dates and times, UUIDs, enum members, "
    "functions and classes, and tuples and frozensets of these"
)


def _refuse_members(values: Values, name: str, members: Mapping[str, str]) -> None:
    for key in values:
        member = members.get(key)
        if member is not None:
            msg = (
                f"defaults of store {name!r} have the key {key!r}, which names "
                f"ContextStore.{key} ({member}): store.{key} would return that, never the "
                "value. Rename the key, or leave it out of defaults and use it by item "
                f"only: store[{key!r}] = ..."
            )
            raise ValueError(msg)


def rebuilt(value: object) -> str:
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

    __slots__ = ("backend", "defaults", "factories", "fields", "origin", "propagate")

    def __init__(  # noqa: PLR0913 (keyword-only: what only a store class has)
        self,
        backend: BackendKind,
        propagate: bool,
        defaults: Checked,
        *,
        origin: str | None = None,
        fields: frozenset[str] = frozenset(),
        factories: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.backend = backend
        self.propagate = propagate
        self.defaults = defaults
        # A store class's module and qualified name (None for a plain
        # store), its fields, and their default factories.
        self.origin = origin
        self.fields = fields
        self.factories = dict(factories or {})

    def differences(self, other: StoreDefinition) -> list[str]:
        """Return the names of what differs from ``other``; empty if nothing does."""
        found = []
        if self.origin != other.origin:
            found.append("store class")
        if self.fields != other.fields:
            found.append("fields")
        if self.backend != other.backend:
            found.append("backend")
        if self.propagate != other.propagate:
            found.append("propagate")
        if not _same_defaults(self.defaults, other.defaults):
            found.append("defaults")
        mine, theirs = self.factories, other.factories
        if mine.keys() != theirs.keys() or not all(_same(mine[k], theirs[k]) for k in mine):
            found.append("default factories")
        return found

    def __str__(self) -> str:
        defaults = self.defaults
        shown = _shown(defaults) if isinstance(defaults, FunctionType) else repr(defaults)
        text = f"backend={self.backend!r}, propagate={self.propagate!r}, defaults={shown}"
        if self.origin is not None:
            text = f"store class {self.origin} with fields {sorted(self.fields)}, {text}"
        if self.factories:
            factories = ", ".join(
                f"{key!r}: {_shown(factory)}" for key, factory in self.factories.items()
            )
            text += f", default factories={{{factories}}}"
        return text


def _shown(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)
    return f"{getattr(fn, '__module__', '?')}.{name}" if isinstance(name, str) else repr(fn)


def _same_defaults(a: Checked, b: Checked) -> bool:
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
    return type(a) is frozenset and known_immutable(a) and a == b


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
        return MISSING


def _code_shape(code: CodeType) -> CodeType:
    """Return ``code`` without line numbers, nested code included, to compare it."""
    consts = tuple(_code_shape(c) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_firstlineno=1, co_linetable=b"", co_consts=consts)
