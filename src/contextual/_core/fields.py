"""Store classes: fields declared with annotations, read and written by attribute.

A subclass of :class:`~contextual.ContextStore` declares its keys the way a
dataclass declares fields::

    class RequestState(ContextStore, backend="context"):
        tenant: str | None = None
        tags: list[str] = field(default_factory=list)

When the class is created, :func:`declare` checks every field, replaces each
one's class attribute by a property that reads the key, and gives the class
the attribute hooks of a store with declared fields. Type checkers see the
annotations only, so ``store.tenant`` is a ``str | None`` to them, with no
plugin.
"""

from __future__ import annotations

import inspect
import typing
from types import FunctionType
from typing import TYPE_CHECKING, Any, Final, TypeVar, final, overload

from .definition import IMMUTABLE_VALUES, known_immutable, rebuilt

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .backends import BackendKind, Values

__all__ = ["Field", "Layout", "declare", "field"]

_T = TypeVar("_T")


class _NoDefault:
    __slots__ = ()


NO_DEFAULT: Final = _NoDefault()


@final
class Field:
    """What :func:`field` returns: a field's default or default factory."""

    __slots__ = ("default", "factory")

    def __init__(self, default: object, factory: Callable[[], Any] | None) -> None:
        self.default = default
        self.factory = factory

    def __repr__(self) -> str:
        if self.factory is not None:
            return f"field(default_factory={self.factory!r})"
        if self.default is NO_DEFAULT:
            return "field()"
        return f"field(default={self.default!r})"


@overload
def field(*, default: _T) -> _T: ...
@overload
def field(*, default_factory: Callable[[], _T]) -> _T: ...
@overload
def field() -> Any: ...


def field(*, default: Any = NO_DEFAULT, default_factory: object = None) -> Any:
    """Declare a field of a store class with a default or a default factory.

    ``default_factory`` is called with no arguments once in each thread
    (backend ``"thread"``) or each context that never wrote (backend
    ``"context"``), on the first access there, so each one gets its own
    object: the way to give a field a list, a dict or any other mutable
    start value. ``default`` takes a value known to be immutable, like
    ``tenant: str | None = None`` written without :func:`field`. Neither
    declares a field without a default, like an annotation alone.

    Args:
        default: The field's value in every fresh thread or context.
        default_factory: A zero-argument callable that makes it.

    Raises:
        ValueError: Both are given (as :func:`dataclasses.field` does).
        TypeError: ``default_factory`` is not callable.

    Example:
        >>> from contextual import ContextStore, field
        >>> class Basket(ContextStore):
        ...     items_seen: list[str] = field(default_factory=list)
        >>> basket = Basket("example.field")
        >>> basket.items_seen.append("apple")
        >>> basket.items_seen
        ['apple']

    .. versionadded:: 0.2.0
    """
    if default_factory is not None:
        if default is not NO_DEFAULT:
            msg = "field() takes default= or default_factory=, not both."
            raise ValueError(msg)
        if not callable(default_factory):
            msg = (
                f"default_factory must be a zero-argument callable such as list or dict, "
                f"got {type(default_factory).__name__} {default_factory!r}."
            )
            raise TypeError(msg)
    return Field(default, default_factory)


@final
class Layout:
    """What :func:`declare` found for a store class: its options and fields."""

    __slots__ = ("backend", "constants", "factories", "fields", "propagate")

    def __init__(
        self,
        backend: BackendKind,
        propagate: bool,
        constants: Values,
        factories: dict[str, Callable[[], Any]],
        fields: frozenset[str],
    ) -> None:
        self.backend = backend
        self.propagate = propagate
        # The defaults of fields that have one, by kind.
        self.constants = constants
        self.factories = factories
        # Every field, with a default or without.
        self.fields = fields


def declare(
    cls: type,
    base: type,
    members: Mapping[str, str],
    options: dict[str, Any],
) -> Layout:
    """Check the store class ``cls`` and turn its fields into properties.

    Args:
        cls: The new class, a subclass of ``base``.
        base: ContextStore.
        members: What each of ``base``'s members is ("a method"...).
        options: The class keywords given (``backend=``, ``propagate=``).

    Returns:
        The class's layout: its options and every field, inherited ones
        included.
    """
    name = cls.__qualname__
    _refuse_body(cls)
    inherited = _inherited(cls, base)
    backend, propagate = _options(name, options, inherited)
    constants = dict(inherited.constants if inherited else {})
    factories = dict(inherited.factories if inherited else {})
    fields = set(inherited.fields if inherited else ())
    _refuse_members_over_fields(cls, base, fields)
    for key, annotation in inspect.get_annotations(cls).items():
        if _is_class_variable(annotation):
            continue
        _check_name(cls, base, key, members)
        value = cls.__dict__.get(key, NO_DEFAULT)
        declared = value if isinstance(value, Field) else Field(value, None)
        constants.pop(key, None)
        factories.pop(key, None)
        fields.add(key)
        if declared.factory is not None:
            factories[key] = declared.factory
        elif declared.default is not NO_DEFAULT:
            if not known_immutable(declared.default):
                msg = (
                    f"field {key!r} of store class {name} has a default not known to be "
                    f"immutable: {type(declared.default).__name__} "
                    f"{_short(declared.default)}. A default is shared by every thread and "
                    "task, so a change made to it in place would show in all of them. "
                    f"Give each its own: {key}: ... = field(default_factory="
                    f"{_factory_for(declared.default)}). Or use a default among "
                    f"{IMMUTABLE_VALUES}."
                )
                raise ValueError(msg)
            constants[key] = declared.default
        type.__setattr__(cls, key, _field_property(key))
    return Layout(backend, propagate, constants, factories, frozenset(fields))


def _refuse_body(cls: type) -> None:
    """Refuse what a store class's bases or body may not have."""
    name = cls.__qualname__
    store_bases = [
        b.__qualname__ for b in cls.__bases__ if isinstance(b.__dict__.get("_layout"), Layout)
    ]
    if len(store_bases) > 1:
        msg = (
            f"store class {name} derives from more than one store class "
            f"({', '.join(store_bases)}): a store has one backend and one set of fields. "
            "Derive from one, and declare the other's fields in it."
        )
        raise TypeError(msg)
    for special, why in _REFUSED_SPECIALS.items():
        if special in cls.__dict__:
            msg = f"store class {name} defines {special}, {why.format(name=name)}"
            raise TypeError(msg)


_ONCE: Final = (
    "which would run once, when the store is created, not in each thread or context. "
    "Give fields defaults instead, or a field(default_factory=...) for a value each thread "
    "or context makes for itself; a store's name is passed when it is created: "
    "{name}('myapp.name')."
)
_OWN: Final = (
    "which a store class can't have: writing and deleting fields by attribute is the "
    "store's own. Use a method or a property for behaviour of your own."
)
# The special methods a store class's body may not define, and why.
_REFUSED_SPECIALS: Final = {
    "__init__": _ONCE,
    "__new__": _ONCE,
    "__setattr__": _OWN,
    "__delattr__": _OWN,
}


def _inherited(cls: type, base: type) -> Layout | None:
    """The layout of the nearest store class ``cls`` derives from, if any."""
    for parent in cls.__mro__[1:]:
        if parent is base:
            return None
        layout = parent.__dict__.get("_layout")
        if isinstance(layout, Layout):
            return layout
    return None  # pragma: no cover - every store class derives from base


def _options(name: str, options: dict[str, Any], inherited: Layout | None) -> tuple[Any, bool]:
    unknown = sorted(set(options) - {"backend", "propagate"})
    if unknown:
        msg = (
            f"store class {name} got unknown class options {unknown}; a store class "
            "takes backend= ('context' or 'thread') and propagate= (True or False)."
        )
        raise TypeError(msg)
    backend = options.get("backend")
    if backend is None:
        backend = inherited.backend if inherited else "context"
    elif backend not in ("context", "thread"):
        msg = (
            f"store class {name} has backend={backend!r}; valid backends are 'context' "
            "and 'thread'."
        )
        raise ValueError(msg)
    propagate = options.get("propagate")
    if propagate is None:
        propagate = inherited.propagate if inherited else True
    elif not isinstance(propagate, bool):
        msg = f"store class {name} has propagate={propagate!r}; it must be True or False."
        raise TypeError(msg)
    return backend, propagate


def _check_name(cls: type, base: type, key: str, members: Mapping[str, str]) -> None:
    name = cls.__qualname__
    what = None
    if key.startswith("_"):
        what = "a name that starts with '_', which is never a key by attribute"
    elif key in members:
        what = f"ContextStore.{key} ({members[key]})"
    else:
        own = cls.__dict__.get(key)
        if _defined_in_body(cls, key, own):
            what = f"{_kind(own)} defined in the class body"
        else:
            owner = _member_owner(cls, base, key)
            if owner is not None:
                what = f"{_kind(owner.__dict__[key])} of {owner.__qualname__}"
    if what is not None:
        msg = (
            f"field {key!r} of store class {name} collides with {what}: "
            f"store.{key} could not read the field. Rename the field; a key of that "
            f"name can be used by item access only: store[{key!r}]."
        )
        raise TypeError(msg)


def _refuse_members_over_fields(cls: type, base: type, fields: set[str]) -> None:
    """Refuse a member of ``cls``'s body that hides a field it inherits."""
    annotations = inspect.get_annotations(cls)
    for key in fields:
        if key in cls.__dict__ and key not in annotations:
            msg = (
                f"store class {cls.__qualname__} defines {key!r}, which is a field of "
                f"its base class {_field_owner(cls, base, key)}: store.{key} could not "
                "read the field. Rename it; to change the field's default, declare the "
                f"field again with its annotation: {key}: ... = <default>."
            )
            raise TypeError(msg)


def _field_owner(cls: type, base: type, key: str) -> str:
    for parent in cls.__mro__[1:]:
        layout = parent.__dict__.get("_layout")
        if isinstance(layout, Layout) and key in layout.fields:
            return parent.__qualname__
    return base.__qualname__  # pragma: no cover - only called for an inherited field


def _member_owner(cls: type, base: type, key: str) -> type | None:
    """Return the base of ``cls`` (a mixin too) that defines ``key``, not as a field."""
    for parent in cls.__mro__[1:]:
        if parent in base.__mro__:
            continue
        layout = parent.__dict__.get("_layout")
        if key in parent.__dict__ and not (isinstance(layout, Layout) and key in layout.fields):
            return parent
    return None


def _defined_in_body(cls: type, key: str, value: object) -> bool:
    """Whether ``value``, found under ``key`` in ``cls``'s body, is a ``def`` or property there."""
    if isinstance(value, (property, classmethod, staticmethod)):
        return True
    # A function written in the body has the body's qualified name; one
    # given as a default (handler: Callable[[], None] = log_it) has its own.
    return isinstance(value, FunctionType) and value.__qualname__ == f"{cls.__qualname__}.{key}"


def _kind(value: object) -> str:
    if isinstance(value, property):
        return "a property"
    if isinstance(value, (FunctionType, classmethod, staticmethod)):
        return "a method"
    return "an attribute"


def _is_class_variable(annotation: object) -> bool:
    if isinstance(annotation, str):
        head = annotation.split("[", 1)[0].strip()
        return head in {"ClassVar", "typing.ClassVar", "t.ClassVar", "typing_extensions.ClassVar"}
    return annotation is typing.ClassVar or typing.get_origin(annotation) is typing.ClassVar


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _factory_for(value: object) -> str:
    """Return code of a factory that makes ``value`` afresh, for an error message."""
    kind = type(value)
    if kind in {list, dict, set, bytearray} and not value:
        return kind.__name__
    made = rebuilt(value)
    if made.endswith("(...)"):
        return f"lambda: {kind.__name__}(...)"
    return f"lambda: {made}"


def _field_property(key: str) -> property:
    """The property that reads field ``key`` by attribute.

    A plain Python getter: CPython 3.12 and later inline its call, and on
    3.10 and 3.11 it still costs less than going through ``__getitem__``.
    """

    def read(self: Any) -> Any:
        values = self._get()
        try:
            return values[key]
        except KeyError:
            msg = (
                f"field {key!r} of {self!r} is not set in this context: it has no default "
                "and was never written here, or it was deleted."
            )
            raise AttributeError(msg, name=key, obj=self) from None

    read.__name__ = read.__qualname__ = key
    return property(read, doc=f"The field {key!r}: the value of the key {key!r} here.")
