"""The core: stores over their two backends, scopes, fields and the registry.

Everything above uses it through :class:`~contextual.ContextStore`'s public
API and one small private interface, the backend object that
:func:`contextual._core.store.backend_of` returns. The core imports the
standard library only, and nothing of the layers above it.
"""
