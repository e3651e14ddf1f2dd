"""A loguru patcher that adds context to every record (extra ``loguru``).

Install it once::

    from loguru import logger
    from contextual.integrations.loguru import patch_context

    logger.configure(patcher=patch_context())
    logger.add(sys.stderr, format="{extra[request_id]} {message}")

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contextual._request.logfilter import FieldCollector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from contextual import ContextStore

__all__ = ["patch_context"]


class patch_context:  # noqa: N801 (a patcher factory, named like one)
    """Return a loguru patcher that fills ``record["extra"]`` like ContextFilter.

    By default ``request_id`` and ``user_id`` (``"-"`` outside a request);
    given stores and defaults, every key the stores hold plus the named
    fields. A key already in ``extra`` (from ``logger.bind()`` or
    ``logger.contextualize()``) keeps its value. Values are read in the code
    that logs.

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

    def __call__(self, record: Mapping[str, Any]) -> None:
        """Add the fields to ``record["extra"]`` (the loguru patcher protocol)."""
        fields = self._collector.collect_safely()
        extra = record["extra"]
        for key, value in fields.items():
            extra.setdefault(key, value)
