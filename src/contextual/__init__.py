"""contextual: context that follows the work.

One store API over :mod:`contextvars` and :class:`threading.local`, scoped
changes that always restore, and propagation of everything registered into
threads, pools, asyncio and other processes.

``import contextual`` imports the standard library only. The helpers that
stand on it are modules of their own, :mod:`contextual.db` (a connection per
thread, transactions) and :mod:`contextual.spinner`, and integrations live
in ``contextual.integrations``: each is imported only when asked for.
"""

import importlib as _importlib
import typing as _typing

from ._core.errors import ContextualError, NoRequestError, ScopeError, StoreDefaultsError
from ._core.fields import field
from ._core.publish import publish as _publish
from ._core.publish import publish_all as _publish_all
from ._core.store import BACKENDS, ContextStore, StoreScope, get_store, list_stores
from ._propagation.snapshot import ContextThread, Snapshot, capture
from ._request.logfilter import ContextFilter, RecordFactory, install_record_factory
from ._request.request import (
    RequestContext,
    current_request,
    get_current_user,
    get_request_id,
    new_request_id,
    request_context,
    update_request,
)
from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._propagation.executors import (
        ContextExecutor,
        ContextProcessPoolExecutor,
        set_default_executor,
        to_thread,
    )

__all__ = [
    "BACKENDS",
    "ContextExecutor",
    "ContextFilter",
    "ContextProcessPoolExecutor",
    "ContextStore",
    "ContextThread",
    "ContextualError",
    "NoRequestError",
    "RecordFactory",
    "RequestContext",
    "ScopeError",
    "Snapshot",
    "StoreDefaultsError",
    "StoreScope",
    "__version__",
    "capture",
    "current_request",
    "field",
    "get_current_user",
    "get_request_id",
    "get_store",
    "install_record_factory",
    "list_stores",
    "new_request_id",
    "request_context",
    "set_default_executor",
    "to_thread",
    "update_request",
]

# Names whose module imports concurrent.futures, multiprocessing and asyncio
# (40 ms and more): loaded on first use, so that importing contextual stays
# cheap for code that never needs them.
_LAZY = {
    "ContextExecutor": "._propagation.executors",
    "ContextProcessPoolExecutor": "._propagation.executors",
    "set_default_executor": "._propagation.executors",
    "to_thread": "._propagation.executors",
}

# Names that 0.1 exported here and that live in a helper module since 0.2:
# the error says where, rather than only that the name is missing.
_MOVED = {
    **dict.fromkeys(
        (
            "CommitOutcomeUnknownError",
            "DBAPIConnection",
            "ThreadLocalDB",
            "Transaction",
            "TransactionError",
            "TransactionManager",
            "TransactionState",
        ),
        "contextual.db",
    ),
    **dict.fromkeys(("Spinner", "SpinnerHandler"), "contextual.spinner"),
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        if name in _MOVED:
            new = _MOVED[name]
            msg += f"; since 0.2 it is imported from {new}: from {new} import {name}"
        raise AttributeError(msg, name=name, obj=None)
    value = _publish(__name__, getattr(_importlib.import_module(module, __name__), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


_publish_all(globals())
