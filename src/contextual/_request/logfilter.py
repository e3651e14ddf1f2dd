"""ContextFilter: put context into every log record, safely.

The filter runs for every record a handler emits, on the hot path of every
log call, in whatever thread or task emits it. So it reads each store's
current state directly, never raises, and never touches what the record
already holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from contextual._core.store import ContextStore, backend_of, get_store

from .request import REQUEST_ID_KEY, REQUEST_KEY, REQUEST_STORE, USER_KEY

if TYPE_CHECKING:
    from contextual._core.backends import Values

__all__ = ["RESERVED_ATTRIBUTES", "ContextFilter", "FieldCollector"]

#: The attributes every :class:`logging.LogRecord` has, plus the two that
#: formatters add. A context key with one of these names is injected with the
#: prefix ``ctx_`` instead (``name`` becomes ``ctx_name``).
RESERVED_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("n", logging.INFO, "p", 0, "m", None, None).__dict__
) | {"message", "asctime"}

_RENAME_PREFIX: Final = "ctx_"

_REQUEST_DEFAULTS: Final = {REQUEST_ID_KEY: "-", USER_KEY: "-"}

# The request store's reader of the current values: one call, C-level.
_read_request: Final = backend_of(REQUEST_STORE).get


#: A store, or the name of one: what the filter and its peers take.
StoreSpec = ContextStore | str


class FieldCollector:
    """Gather the fields to inject from stores and defaults; shared by the filter and processors.

    Args:
        stores: A store, a store name, or an iterable of those. With none,
            the request fields ``request_id`` and ``user_id``.
        defaults: ``{field: default}``: fields to inject always, with the
            default when no store holds a value for them or the value is
            ``None``. With no stores and no defaults, ``request_id`` and
            ``user_id`` default to ``"-"``.
    """

    __slots__ = ("_all_keys", "_defaults", "_names", "_resolved", "_with_request")

    def __init__(
        self,
        stores: ContextStore | str | Iterable[ContextStore | str] = (),
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        specs = _store_specs(stores)
        _check_defaults(defaults)
        if not specs:
            # The request fields, and only those, plus any other field named
            # in defaults (no store holds it: it always has its default).
            specs = [REQUEST_STORE]
            self._all_keys = False
        else:
            self._all_keys = True
        self._with_request = any(
            spec is REQUEST_STORE or spec == REQUEST_STORE.name for spec in specs
        )
        # Wherever the request store is read, its fields print "-" when unset.
        base = _REQUEST_DEFAULTS if self._with_request else {}
        self._defaults = {**base, **(defaults or {})}
        self._names = tuple(spec for spec in specs if isinstance(spec, str))
        # Readers of each store's state, resolved lazily for stores given by
        # name (a logging config may load before the module that creates them).
        self._resolved: list[Callable[[], Values] | str] = [
            spec if isinstance(spec, str) else backend_of(spec).get for spec in specs
        ]

    def collect(self) -> dict[str, Any]:
        """Return the fields for the code running now: the stores' values, then defaults."""
        resolved = self._resolved
        fields: dict[str, Any] = {}
        if self._all_keys:
            # Later stores first, so that the first store holding a key wins.
            for index in range(len(resolved) - 1, -1, -1):
                spec = resolved[index]
                found = self._resolve(index, spec) if isinstance(spec, str) else spec
                if found is not None:
                    fields.update(found())
            if self._with_request:
                # The RequestContext object itself: no format string wants it.
                fields.pop(REQUEST_KEY, None)
            for key, default in self._defaults.items():
                if fields.get(key) is None:
                    fields[key] = default
            return fields
        values = _read_request()
        for key, default in self._defaults.items():
            value = values.get(key)
            fields[key] = default if value is None else value
        return fields

    def collect_safely(self) -> dict[str, Any]:
        """Like :meth:`collect`, but never raises: on a failure, the defaults."""
        try:
            return self.collect()
        except Exception:  # noqa: BLE001 (a log call must never fail because of context)
            return self.defaults()

    def _resolve(self, index: int, name: str) -> Callable[[], Values] | None:
        try:
            store = get_store(name)
        except LookupError:
            return None  # not created yet: it holds nothing
        reader = backend_of(store).get
        self._resolved[index] = reader
        return reader

    def defaults(self) -> dict[str, Any]:
        """Return the configured fields with their defaults."""
        return dict(self._defaults)

    @property
    def all_keys(self) -> bool:
        """Whether every key of the stores is collected, not only the fields."""
        return self._all_keys


def _check_defaults(defaults: object) -> None:
    if defaults is None or (
        isinstance(defaults, Mapping) and all(isinstance(k, str) for k in defaults)
    ):
        return
    msg = f"defaults must be a mapping of field names (str) to default values, got {defaults!r}."
    raise TypeError(msg)


def _store_specs(stores: object) -> list[StoreSpec]:
    if isinstance(stores, (ContextStore, str)):
        return [stores]
    if not isinstance(stores, Iterable):
        raise TypeError(_bad_stores(stores))
    specs = list(stores)
    for spec in specs:
        if not isinstance(spec, (ContextStore, str)):
            raise TypeError(_bad_stores(spec))
    return specs


def _bad_stores(value: object) -> str:
    return (
        f"stores must be a ContextStore, a store name, or an iterable of those; got "
        f"{type(value).__name__} {value!r}."
    )


class ContextFilter(logging.Filter):
    """A :class:`logging.Filter` for handlers that adds context to every record.

    ``ContextFilter()`` adds ``request_id`` and ``user_id`` (see
    :func:`~contextual.request_context`) to every record the handler sees,
    as ``"-"`` outside a request or in a request without a user, so that a
    format such as ``"%(request_id)s %(message)s"`` works for every record,
    other libraries' included. Given stores, it adds every key they hold for
    the code that emits the record (the first store holding a key wins),
    plus every field named in ``defaults``, with its default when no store
    holds it or the value is ``None``.

    It never raises and always returns ``True``: a failure inside leaves the
    record with the configured defaults. It never replaces what the record
    already has: a field passed in the call's ``extra=`` keeps the caller's
    value, and a context key named like a standard :class:`~logging.LogRecord`
    attribute (``name``, ``msg``, ``args``, ``levelname``...; see
    ``RESERVED_ATTRIBUTES``) is added with the prefix ``ctx_`` instead
    (``%(ctx_name)s``), so no context value can corrupt a line.

    Given stores, every key they hold reaches every record, and so every
    formatter and handler (a JSON formatter, a process-bound queue): keep
    secrets and unpicklable objects out of those stores, or name only the
    fields you want with ``defaults`` and no stores. A value that the call
    passes in ``extra=`` is the caller's, even ``None``.

    Attach it to the *handler*, not to a logger: logger filters don't run
    for records propagated from child loggers. With a
    :class:`~logging.handlers.QueueHandler`, attach it to the
    ``QueueHandler``: it then reads the context in the thread that logs, and
    the :class:`~logging.handlers.QueueListener` thread formats records that
    already carry it.

    From :func:`logging.config.dictConfig`::

        "filters": {"context": {"()": "contextual.ContextFilter",
                                "stores": ["myapp.tenant"],
                                "defaults": {"tenant": "none"}}}

    Args:
        stores: A store, a store name, or an iterable of those; names are
            looked up on first use, so the config may load before the
            stores exist. By default, the request fields.
        defaults: ``{field: default}``; see above.
        name: Passed to :class:`logging.Filter` (it doesn't restrict this
            filter, which never drops a record).

    Raises:
        TypeError: ``stores`` or ``defaults`` is of the wrong type.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        stores: ContextStore | str | Iterable[ContextStore | str] = (),
        *,
        defaults: Mapping[str, Any] | None = None,
        name: str = "",
    ) -> None:
        super().__init__(name)
        self._collector = FieldCollector(stores, defaults=defaults)
        # The common case, ContextFilter() for the request fields, takes a
        # path of its own: it runs for every record, and a log call costs
        # only a few microseconds.
        self._request_fields: tuple[tuple[str, Any], ...] | None = (
            None
            if self._collector.all_keys
            else tuple((_attribute_name(k), v) for k, v in self._collector.defaults().items())
        )
        # ContextFilter() as such, or with other defaults for the two
        # request fields: the defaults of request_id and user_id, for a path
        # written out for them (a loop over two fields costs a third more).
        self._two_request_fields: tuple[Any, Any] | None = None
        if self._request_fields is not None and [k for k, _ in self._request_fields] == [
            REQUEST_ID_KEY,
            USER_KEY,
        ]:
            self._two_request_fields = (self._request_fields[0][1], self._request_fields[1][1])

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields to ``record``; always return ``True``."""
        attributes = record.__dict__
        two = self._two_request_fields
        if two is not None:
            values = _read_request()
            if REQUEST_ID_KEY not in attributes:
                value = values.get(REQUEST_ID_KEY)
                attributes[REQUEST_ID_KEY] = two[0] if value is None else value
            if USER_KEY not in attributes:
                value = values.get(USER_KEY)
                attributes[USER_KEY] = two[1] if value is None else value
            return True
        request_fields = self._request_fields
        if request_fields is not None:
            values = _read_request()
            for key, default in request_fields:
                if key not in attributes:
                    value = values.get(key)
                    attributes[key] = default if value is None else value
            return True
        for key, value in self._collector.collect_safely().items():
            name = _attribute_name(key)
            if name not in attributes:
                attributes[name] = value
        return True


def _attribute_name(key: str) -> str:
    return _RENAME_PREFIX + key if key in RESERVED_ATTRIBUTES else key
