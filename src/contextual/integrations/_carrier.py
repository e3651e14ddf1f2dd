"""What may leave the process, and how it comes back: shared by the HTTP and Celery integrations.

Context that crosses a process boundary is untrusted on arrival and may be
private on departure. An :class:`AllowList` names the stores, and within
them the keys, that travel; everything else stays. The request ID always
travels: it is what ties the log lines of the two sides together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, final

from contextual import get_store
from contextual._propagation.snapshot import stores_here
from contextual._propagation.wire import REQUEST_ID_KEY, REQUEST_STORE_NAME, USER_KEY
from contextual._request.request import resolved_safely

__all__ = ["AllowList", "AllowSpec", "applied"]

AllowSpec = Mapping[str, "bool | Iterable[str]"] | Iterable[str] | None
"""Which stores and keys may travel: ``None`` (the request ID only), an
iterable of store names (every key of those stores), or a mapping of store
name to ``True`` (every key) or to an iterable of key names."""


@final
class AllowList:
    """The stores and keys that may cross a process boundary, in either direction.

    The request ID (``request_id`` of the request store) is always allowed.
    On the way out, :meth:`select` keeps only allowed keys of the current
    context; on the way in, it drops whatever the sender had no business
    sending, so a peer can never set a key that was not allowed.

    Args:
        allow: ``None`` for the request ID alone; store names (every key);
            or ``{store name: True | [key, ...]}``.
    """

    __slots__ = ("_stores",)

    _stores: dict[str, frozenset[str] | None]

    def __init__(self, allow: AllowSpec = None) -> None:
        stores: dict[str, frozenset[str] | None] = {REQUEST_STORE_NAME: frozenset({REQUEST_ID_KEY})}
        if allow is None:
            self._stores = stores
            return
        if isinstance(allow, str):
            msg = (
                f"allow takes store names in a list or a mapping, got the string {allow!r}; "
                f"write allow=[{allow!r}]."
            )
            raise TypeError(msg)
        items: Iterable[tuple[object, object]]
        if isinstance(allow, Mapping):
            items = allow.items()
        else:
            try:
                items = [(name, True) for name in allow]
            except TypeError:
                msg = (
                    "allow must be None, store names, or a mapping of store name to True or "
                    f"to key names; got {type(allow).__name__} {allow!r}."
                )
                raise TypeError(msg) from None
        for name, keys in items:
            if not isinstance(name, str) or not name:
                msg = f"allow names stores by their name (a non-empty str), got {name!r}."
                raise TypeError(msg)
            allowed = _keys(name, keys)
            if name == REQUEST_STORE_NAME and allowed is not None:
                allowed |= {REQUEST_ID_KEY}  # always travels
            stores[name] = allowed
        self._stores = stores

    def __repr__(self) -> str:
        parts = [
            f"{name!r}: {'all' if keys is None else sorted(keys)}"
            for name, keys in sorted(self._stores.items())
        ]
        return f"AllowList({{{', '.join(parts)}}})"

    def allows(self, store: str, key: str) -> bool:
        """Tell whether ``key`` of the store named ``store`` may travel."""
        keys = self._stores.get(store, frozenset())
        return keys is None or key in keys

    def select(self, stores: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Keep the allowed stores and keys of ``stores`` (``Snapshot.to_dict()["stores"]``)."""
        selected: dict[str, dict[str, Any]] = {}
        for name, values in stores.items():
            keys = self._stores.get(name, frozenset())
            kept = dict(values) if keys is None else {k: v for k, v in values.items() if k in keys}
            if kept:
                selected[name] = kept
        return selected

    def outgoing(self) -> dict[str, dict[str, Any]]:
        """The allowed values of the current context: what a message or request carries."""
        selected = self.select(stores_here())
        request = selected.get(REQUEST_STORE_NAME)
        if request is not None and USER_KEY in request:
            # Looked up only now that it is known to travel (a Django user
            # costs a query).
            request[USER_KEY] = resolved_safely(request[USER_KEY])
        return selected


def _keys(store: str, keys: object) -> frozenset[str] | None:
    """One allow-list entry as a set of keys, or None for every key."""
    if keys is True:
        return None
    if keys is False:
        return frozenset()
    if isinstance(keys, str) or not isinstance(keys, Iterable):
        msg = f"allow[{store!r}] must be True (every key) or key names in a list, got {keys!r}."
        raise TypeError(msg)
    names = frozenset(keys)
    for key in names:
        if not isinstance(key, str):
            msg = f"allow[{store!r}] names keys by str, got {key!r}."
            raise TypeError(msg)
    return names


@contextlib.contextmanager
def applied(stores: Mapping[str, Mapping[str, Any]]) -> Iterator[None]:
    """Set ``stores`` (already selected) for a block, in stores of the same name here.

    Each store is changed with a scope, so at the end of the block every
    store is exactly as it was, whatever the block did: nothing is reset to
    ``None``. Names no live store has here are ignored: no code here can
    read them.
    """
    with contextlib.ExitStack() as stack:
        for name, values in stores.items():
            try:
                store = get_store(name)
            except LookupError:
                continue
            stack.enter_context(store.scope(values))
        yield
