"""ContextFilter: put context into every log record, safely.

The filter runs for every record a handler emits, on the hot path of every
log call, in whatever thread or task emits it. So it reads each store's
current state directly, never raises, and never touches what the record
already holds.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias, final

from contextual._core.fork import renew_locks_after_fork
from contextual._core.store import ContextStore, backend_of, get_store, list_stores

from .request import REQUEST_ID_KEY, REQUEST_KEY, REQUEST_STORE, USER_KEY, Deferred, resolved_safely

if TYPE_CHECKING:
    from contextual._core.backends import Values

__all__ = [
    "RESERVED_ATTRIBUTES",
    "ContextFilter",
    "FieldCollector",
    "FieldSource",
    "RecordFactory",
    "install_record_factory",
]

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

#: A source of fields that no store holds (a trace ID, a task ID): called
#: with no arguments for every record, in the code that logs, it returns the
#: fields to add, every one of them every time.
FieldSource: TypeAlias = Callable[[], Mapping[str, Any]]


class FieldCollector:
    """Gather the fields to inject from stores and defaults; shared by the filter and processors.

    Args:
        stores: A store, a store name, or an iterable of those. With none,
            the request fields ``request_id`` and ``user_id``.
        defaults: ``{field: default}``: fields to inject always, with the
            default when no store holds a value for them or the value is
            ``None``. With no stores and no defaults, ``request_id`` and
            ``user_id`` default to ``"-"``.
        sources: Callables returning further fields (:data:`FieldSource`),
            called on every :meth:`collect`; a store's value for the same
            key wins, and a source that raises adds nothing.
    """

    __slots__ = (
        "_all_keys",
        "_defaults",
        "_missing",
        "_names",
        "_resolved",
        "_sources",
        "_with_request",
    )

    def __init__(
        self,
        stores: ContextStore | str | Iterable[ContextStore | str] = (),
        *,
        defaults: Mapping[str, Any] | None = None,
        sources: Iterable[Callable[[], Mapping[str, Any]]] = (),
    ) -> None:
        specs = _store_specs(stores)
        _check_defaults(defaults)
        self._sources = _check_sources(sources)
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
        # Store names no store had at first use, warned about once each.
        self._missing: set[str] = set()

    def collect(self) -> dict[str, Any]:
        """Return the fields for the code running now: the stores' values, sources, defaults."""
        fields: dict[str, Any] = {}
        if self._all_keys:
            self._from_stores(fields)
            if self._with_request:
                # The RequestContext object itself: no format string wants it.
                fields.pop(REQUEST_KEY, None)
                user = fields.get(USER_KEY)
                if type(user) is Deferred:
                    fields[USER_KEY] = resolved_safely(user)
        else:
            values = _read_request()
            for key in self._defaults:
                value = values.get(key)
                if value is not None:
                    fields[key] = value
            user = fields.get(USER_KEY)
            if type(user) is Deferred:
                fields[USER_KEY] = resolved_safely(user)
        for source in self._sources:
            add_from_source(fields, source)
        for key, default in self._defaults.items():
            if fields.get(key) is None:
                fields[key] = default
        return fields

    def _from_stores(self, fields: dict[str, Any]) -> None:
        resolved = self._resolved
        # Later stores first, so that the first store holding a key wins.
        for index in range(len(resolved) - 1, -1, -1):
            spec = resolved[index]
            found = self._resolve(index, spec) if isinstance(spec, str) else spec
            if found is not None:
                fields.update(found())

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
            # Not created yet, so it holds nothing; or a typo, which would
            # otherwise leave the fields out of every line, silently.
            with _missing_lock:
                first = name not in self._missing
                self._missing.add(name)  # before warning: a warning may be logged
            if first:
                _warn_missing(name)
            return None
        reader = backend_of(store).get
        self._resolved[index] = reader
        return reader

    def defaults(self) -> dict[str, Any]:
        """Return the configured fields with their defaults."""
        return dict(self._defaults)

    @property
    def sources(self) -> tuple[FieldSource, ...]:
        """The field sources, in order."""
        return self._sources

    @property
    def all_keys(self) -> bool:
        """Whether every key of the stores is collected, not only the fields."""
        return self._all_keys


def add_from_source(fields: dict[str, Any], source: FieldSource) -> None:
    """Add what ``source`` returns where ``fields`` holds nothing (or ``None``); never raise."""
    try:
        produced = source()
        for key, value in produced.items():
            if fields.get(key) is None:
                fields[key] = value
    except Exception:  # noqa: BLE001 (a log call must never fail because of context)
        return


def _warn_missing(name: str) -> None:
    known = ", ".join(repr(store.name) for store in list_stores()) or "none"
    try:
        warnings.warn(
            f"no store is named {name!r}: the log fields of that store are left out until one "
            f"is created with that name. Check the name given to ContextFilter (or to "
            f"add_context() or patch_context()); the stores that exist now: {known}.",
            RuntimeWarning,
            stacklevel=2,
        )
    except Warning:
        # Warnings made errors (-W error): a log call can't raise, and the
        # record keeps its fields.
        return


# Guards each collector's set of names warned about: one warning per name.
_missing_lock: Final = threading.Lock()


def _check_sources(sources: object) -> tuple[FieldSource, ...]:
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Iterable):
        msg = (
            f"sources must be an iterable of callables that return a mapping of fields "
            f"(such as [trace_fields]), got {type(sources).__name__} {sources!r}."
        )
        raise TypeError(msg)
    if isinstance(sources, Sequence):
        # By index: dictConfig's list resolves "ext://module.name" items on
        # indexing only, not when iterated.
        checked = tuple(sources[index] for index in range(len(sources)))
    else:
        checked = tuple(sources)
    for source in checked:
        if not callable(source):
            msg = (
                f"each source must be a callable that takes no arguments and returns a "
                f"mapping of fields, got {type(source).__name__} {source!r}."
            )
            raise TypeError(msg)
    return checked


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
    for records propagated from child loggers. Where no handler can take
    it, :func:`install_record_factory` adds the same fields to every record
    as it is made. With a
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
            stores exist. A name that no store has at the first record is
            reported once, as a :class:`RuntimeWarning` (a typo would
            otherwise leave its fields out of every line); the store's
            fields appear as soon as a store of that name is created.
            By default, the request fields.
        defaults: ``{field: default}``; see above.
        sources: Callables that return further fields, such as
            :func:`contextual.integrations.opentelemetry.trace_fields`
            (``trace_id``, ``span_id``) and
            :func:`contextual.integrations.celery.task_fields`
            (``task_id``, ``parent_task_id``): each is called for every
            record, in the code that logs, and must return all its fields
            every time. A store's value for the same key wins; a source
            that raises adds nothing to that record. None by default, and
            then nothing is paid for them.
        name: Passed to :class:`logging.Filter` (it doesn't restrict this
            filter, which never drops a record).

    Raises:
        TypeError: ``stores``, ``defaults`` or ``sources`` is of the wrong type.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       ``sources``; a store name no store has is reported.
    """

    def __init__(
        self,
        stores: ContextStore | str | Iterable[ContextStore | str] = (),
        *,
        defaults: Mapping[str, Any] | None = None,
        sources: Iterable[Callable[[], Mapping[str, Any]]] = (),
        name: str = "",
    ) -> None:
        super().__init__(name)
        self._collector = FieldCollector(stores, defaults=defaults, sources=sources)
        self._sources = self._collector.sources
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
        if (
            self._request_fields is not None
            and not self._sources
            and [k for k, _ in self._request_fields] == [REQUEST_ID_KEY, USER_KEY]
        ):
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
                if type(value) is Deferred:
                    value = resolved_safely(value)
                attributes[USER_KEY] = two[1] if value is None else value
            return True
        request_fields = self._request_fields
        if request_fields is not None:
            if self._sources:
                _add_request_fields_and_sources(attributes, request_fields, self._sources)
            else:
                _add_request_fields(attributes, request_fields)
            return True
        for key, value in self._collector.collect_safely().items():
            name = _attribute_name(key)
            if name not in attributes:
                attributes[name] = value
        return True


def _add_request_fields_and_sources(
    attributes: dict[str, Any],
    request_fields: tuple[tuple[str, Any], ...],
    sources: tuple[FieldSource, ...],
) -> None:
    # The collector's rule (a store's value, else a source's, else the
    # default), without its dicts: trace IDs go into every line.
    produced: dict[str, Any] = {}
    for source in sources:
        add_from_source(produced, source)
    values = _read_request()
    for key, default in request_fields:
        from_source = produced.pop(key, None)
        if key in attributes:
            continue
        value = values.get(key)
        if type(value) is Deferred:
            value = resolved_safely(value)
        if value is None:
            value = from_source
        attributes[key] = default if value is None else value
    for key, value in produced.items():
        name = _attribute_name(key)
        if name not in attributes:
            attributes[name] = value


def _add_request_fields(
    attributes: dict[str, Any], request_fields: tuple[tuple[str, Any], ...]
) -> None:
    values = _read_request()
    for key, default in request_fields:
        if key not in attributes:
            value = values.get(key)
            if type(value) is Deferred:
                value = resolved_safely(value)
            attributes[key] = default if value is None else value


@final
class RecordFactory:
    """A log-record factory that adds context to every record it makes.

    Made and installed by :func:`install_record_factory`; call it as
    :func:`logging.getLogRecordFactory` would be called. It makes each
    record with the factory that was installed before it, then adds the
    fields a :class:`ContextFilter` with the same arguments would add.

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_active", "_filter", "_previous")

    def __init__(
        self, context_filter: ContextFilter, previous: Callable[..., logging.LogRecord]
    ) -> None:
        self._filter = context_filter
        self._previous = previous
        self._active = True

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        """Make a record with the previous factory, and add the context fields to it."""
        record = self._previous(*args, **kwargs)
        if self._active:
            self._filter.filter(record)
        return record

    def uninstall(self) -> None:
        """Stop adding fields: put the previous factory back, if this one is still installed.

        If another factory was installed on top of this one since (it calls
        this one), this factory stays in that chain but adds nothing more.
        Calling it again does nothing.

        .. versionadded:: 0.2.0
        """
        with _factory_lock:
            self._active = False
            if logging.getLogRecordFactory() is self:
                logging.setLogRecordFactory(self._previous)


# Installing reads the current factory and then replaces it: two threads
# installing at once must not lose one of them.
_factory_lock: Final = threading.Lock()
renew_locks_after_fork(globals(), "_factory_lock", "_missing_lock")


def install_record_factory(
    stores: ContextStore | str | Iterable[ContextStore | str] = (),
    *,
    defaults: Mapping[str, Any] | None = None,
    sources: Iterable[Callable[[], Mapping[str, Any]]] = (),
) -> RecordFactory:
    """Add context to every log record, however loggers and handlers are set up.

    Installs a :func:`log-record factory <logging.setLogRecordFactory>`
    that makes each record with the factory installed before it (the
    standard one, or another library's: they compose), then adds the same
    fields as ``ContextFilter(stores, defaults=defaults, sources=sources)``,
    read in the code that logs. This is how OpenTelemetry's logging
    instrumentation adds its fields.

    Prefer :class:`ContextFilter` on your handlers, and reach for this when
    you can't attach a filter where it would run: records of other
    libraries' loggers that reach handlers you don't configure, a
    ``logger.addFilter()`` setup (a logger's filters don't see the records
    of its child loggers, and a format naming ``%(request_id)s`` would
    then fail on those), or formatters and handlers made by a framework.
    The differences:

    * every record pays for the fields, also those no handler emits
      (a filtered-out DEBUG record is still made, the fields included);
    * a field the factory adds can't also be passed in ``extra=``: the
      standard :meth:`logging.Logger.makeRecord` refuses ``extra`` keys the
      record already has, with :class:`KeyError` ("Attempt to overwrite
      ..."). With the filter, the call's ``extra=`` wins.

    Args:
        stores: As for :class:`ContextFilter`.
        defaults: As for :class:`ContextFilter`.
        sources: As for :class:`ContextFilter`.

    Returns:
        The installed factory; its :meth:`~RecordFactory.uninstall` takes it out.

    Raises:
        TypeError: ``stores``, ``defaults`` or ``sources`` is of the wrong type.

    Example:
        >>> import logging
        >>> from contextual import install_record_factory, request_context
        >>> factory = install_record_factory()
        >>> with request_context(request_id="r-42"):
        ...     record = logging.getLogger("example").makeRecord(
        ...         "example", logging.INFO, "f.py", 1, "hello", None, None
        ...     )
        >>> record.request_id, record.user_id
        ('r-42', '-')
        >>> factory.uninstall()

    .. versionadded:: 0.2.0
    """
    context_filter = ContextFilter(stores, defaults=defaults, sources=sources)
    with _factory_lock:
        factory = RecordFactory(context_filter, logging.getLogRecordFactory())
        logging.setLogRecordFactory(factory)
    return factory


def _attribute_name(key: str) -> str:
    return _RENAME_PREFIX + key if key in RESERVED_ATTRIBUTES else key
