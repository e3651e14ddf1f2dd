"""contextual: context that follows the work.

One store API over :mod:`contextvars` and :class:`threading.local`, scoped
changes that always restore, and (in later layers) propagation of everything
registered into threads, pools, asyncio and other processes.

``import contextual`` imports the standard library only; integrations live in
``contextual.integrations`` and are imported on demand.
"""

from ._errors import ContextualError, ScopeError
from ._registry import get_store, list_stores
from ._store import BACKENDS, ContextStore, StoreScope
from ._version import __version__

__all__ = [
    "BACKENDS",
    "ContextStore",
    "ContextualError",
    "ScopeError",
    "StoreScope",
    "__version__",
    "get_store",
    "list_stores",
]

# Public objects report the public module in reprs, tracebacks and docs.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("contextual._"):
        _obj.__module__ = __name__
del _name, _obj
