"""The core: stores over their two backends, scopes, fields and the registry.

The layers above use it through :class:`~contextual.ContextStore`'s public
API and a small private interface: the backend object that
:func:`contextual._core.store.backend_of` returns, the scope entry and exit
that the request context uses, the registry's view of the live stores that
propagation copies, and the after-fork hook (:mod:`contextual._core.fork`).
The core imports the standard library only, and nothing of the layers above.
"""
