"""A structlog processor that adds context to every event (extra ``structlog``).

Add it to your processor chain, before the renderer::

    import structlog
    from contextual.integrations.structlog import add_context

    structlog.configure(processors=[add_context(), structlog.processors.JSONRenderer()])

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contextual._request.logfilter import FieldCollector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, MutableMapping

    from contextual import ContextStore

__all__ = ["add_context"]


class add_context:  # noqa: N801 (a processor factory, named like one)
    """Return a processor that adds the same fields as :class:`~contextual.ContextFilter`.

    By default ``request_id`` and ``user_id`` (``"-"`` outside a request);
    given stores and defaults, every key the stores hold plus the named
    fields. A key the event already has keeps the event's value. Values are
    read in the code that logs, so they follow its thread or task.

    Args:
        stores: A store, a store name, or an iterable of those.
        defaults: ``{field: default}`` for fields to add always.
        sources: Callables that return further fields, as for
            :class:`~contextual.ContextFilter` (``trace_fields`` from
            :mod:`contextual.integrations.opentelemetry`, ``task_fields``
            from :mod:`contextual.integrations.celery`).

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       ``sources``.
    """

    __slots__ = ("_collector",)

    def __init__(
        self,
        stores: ContextStore | str | Iterable[ContextStore | str] = (),
        *,
        defaults: Mapping[str, Any] | None = None,
        sources: Iterable[Callable[[], Mapping[str, Any]]] = (),
    ) -> None:
        self._collector = FieldCollector(stores, defaults=defaults, sources=sources)

    def __call__(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Add the fields to ``event_dict`` (the structlog processor protocol)."""
        del logger, method_name
        fields = self._collector.collect_safely()
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict
