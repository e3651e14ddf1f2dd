"""The exceptions contextual adds to the standard library's."""

from __future__ import annotations

__all__ = [
    "ContextualError",
    "NoRequestError",
    "ScopeError",
    "StoreDefaultsError",
]


class ContextualError(Exception):
    """Base class of every exception that contextual defines itself.

    Where a standard exception fits, contextual raises that one (``KeyError``,
    ``TypeError``, ``ValueError``...); its own exceptions also derive from the
    standard class they refine, so ``except RuntimeError`` still catches a
    :class:`ScopeError`.

    .. versionadded:: 0.1.0
    """


class ScopeError(ContextualError, RuntimeError):
    """A scope was used out of order: entered twice, or exited without entry.

    .. versionadded:: 0.1.0
    """


class NoRequestError(ContextualError, LookupError):
    """No request is open here, and the call needs one.

    Raised by :func:`~contextual.update_request` outside every
    :func:`~contextual.request_context` (and outside the request the
    middleware opens). The message says where requests are opened.

    .. versionadded:: 0.2.0
    """


class StoreDefaultsError(ContextualError, RuntimeError):
    """A store's ``defaults`` factory raised, so the store has no values here.

    The message names the store, and the factory's own exception is the
    ``__cause__``. The factory runs again on the next access in that thread
    or context, so the error lasts until the factory succeeds. Until then
    each read of the store there raises this error, and so does each
    :func:`~contextual.capture` in a thread where a ``propagate=True``
    ``"thread"`` store is broken: every :meth:`ContextExecutor.submit
    <contextual.ContextExecutor.submit>`, :meth:`ContextThread.start
    <contextual.ContextThread.start>`, :func:`~contextual.to_thread` and
    :meth:`ContextProcessPoolExecutor.submit
    <contextual.ContextProcessPoolExecutor.submit>` there.

    The factory's exception is never raised as it is: a :class:`KeyError`
    or :class:`AttributeError` from a factory would otherwise read as a
    missing key (``hasattr(store, "user")`` would be false, and ``getattr``
    would return its default).

    .. versionadded:: 0.2.0
    """
