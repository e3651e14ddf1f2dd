"""contextual: context that follows the work.

One store API over :mod:`contextvars` and :class:`threading.local`, scoped
changes that always restore, and propagation of everything registered into
threads, pools, asyncio and other processes.

``import contextual`` imports the standard library only; integrations live in
``contextual.integrations`` and are imported on demand.
"""

import importlib as _importlib
import typing as _typing

from ._errors import (
    CommitOutcomeUnknownError,
    ContextualError,
    ScopeError,
    StoreDefaultsError,
    TransactionError,
)
from ._fields import field
from ._logfilter import ContextFilter
from ._propagation import ContextThread, Snapshot, capture
from ._request import (
    RequestContext,
    current_request,
    get_current_user,
    get_request_id,
    new_request_id,
    request_context,
)
from ._spinner import Spinner, SpinnerHandler
from ._store import BACKENDS, ContextStore, StoreScope, get_store, list_stores
from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._db import DBAPIConnection, ThreadLocalDB
    from ._executors import (
        ContextExecutor,
        ContextProcessPoolExecutor,
        set_default_executor,
        to_thread,
    )
    from ._transaction import Transaction, TransactionManager, TransactionState

__all__ = [
    "BACKENDS",
    "CommitOutcomeUnknownError",
    "ContextExecutor",
    "ContextFilter",
    "ContextProcessPoolExecutor",
    "ContextStore",
    "ContextThread",
    "ContextualError",
    "DBAPIConnection",
    "RequestContext",
    "ScopeError",
    "Snapshot",
    "Spinner",
    "SpinnerHandler",
    "StoreDefaultsError",
    "StoreScope",
    "ThreadLocalDB",
    "Transaction",
    "TransactionError",
    "TransactionManager",
    "TransactionState",
    "__version__",
    "capture",
    "current_request",
    "field",
    "get_current_user",
    "get_request_id",
    "get_store",
    "list_stores",
    "new_request_id",
    "request_context",
    "set_default_executor",
    "to_thread",
]

# Names whose modules import concurrent.futures, multiprocessing or asyncio
# (40 ms and more), or sqlite3: loaded on first use, so that importing contextual stays
# cheap for code that never needs them.
_LAZY = {
    "ContextExecutor": "._executors",
    "ContextProcessPoolExecutor": "._executors",
    "set_default_executor": "._executors",
    "to_thread": "._executors",
    "DBAPIConnection": "._db",
    "ThreadLocalDB": "._db",
    "Transaction": "._transaction",
    "TransactionManager": "._transaction",
    "TransactionState": "._transaction",
}


def _publish(obj: _typing.Any) -> _typing.Any:
    # Public objects report the public module in reprs, tracebacks and docs.
    if getattr(obj, "__module__", "").startswith("contextual._"):
        obj.__module__ = __name__
    return obj


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg, name=name, obj=None)
    value = _publish(getattr(_importlib.import_module(module, __name__), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


for _name in __all__:
    if _name not in _LAZY:
        _publish(globals()[_name])
del _name
