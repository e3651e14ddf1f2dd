"""Helpers for your own test suite: catch values left behind, and start clean.

Context bugs hide between tests and between requests: a value set by one and
never undone shows up, much later, in another. These helpers make them fail
where they happen.

A pytest fixture that fails every test that leaves a value behind in any
store (put it in your ``conftest.py``)::

    import pytest
    from contextual.testing import no_leaks


    @pytest.fixture(autouse=True)
    def _no_context_leaks():
        with no_leaks():
            yield

Or check one test, with or without parentheses::

    @no_leaks
    def test_checkout(): ...

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

from contextual import ContextStore, ContextualError, list_stores
from contextual._core.backends import Saved
from contextual._core.decorate import AsyncToo, decorate
from contextual._core.store import backend_of

__all__ = ["LeakError", "empty_stores", "no_leaks"]

_F = TypeVar("_F", bound=Callable[..., Any])


class LeakError(ContextualError, AssertionError):
    """Values were left behind in a store: raised by :func:`no_leaks`.

    .. versionadded:: 0.1.0
    """


def _selected(stores: tuple[ContextStore, ...]) -> list[ContextStore]:
    for store in stores:
        if not isinstance(store, ContextStore):
            raise TypeError(f"expected ContextStore objects, got {type(store).__name__} {store!r}.")
    return list(stores) if stores else list_stores()


class _Helper(AsyncToo[None]):
    """A context manager (sync and async) that also decorates functions.

    As a decorator it makes a fresh instance for every call, so concurrent
    calls never share one; a single instance serves one block at a time.
    """

    __slots__ = ("_active", "_stores")

    _stores: tuple[ContextStore, ...]
    _active: bool

    # The typing spec lets __new__ return what isn't an instance (the
    # decorated function here); mypy follows it at call sites but flags the
    # definition.
    @overload
    def __new__(cls, fn: _F, /) -> _F: ...  # type: ignore[misc]
    @overload
    def __new__(cls, *stores: ContextStore) -> Self: ...

    def __new__(cls, *stores: Any) -> Any:
        # Used bare (@no_leaks), the class is called with the function. An
        # instance there would be no function, so pytest would skip the test
        # with only a collection warning; decorate the function instead. A
        # store is never callable, so this can't take a store for a function.
        if len(stores) == 1 and callable(stores[0]):
            return decorate(stores[0], functools.partial(cls._make, ()), what=f"{cls.__name__}()")
        return cls._make(stores)

    @classmethod
    def _make(cls, stores: tuple[ContextStore, ...]) -> Self:
        self = object.__new__(cls)
        self._stores = stores
        self._active = False
        return self

    def _enter(self) -> None:
        raise NotImplementedError

    def _exit(self, failed: bool) -> None:
        raise NotImplementedError

    def __enter__(self) -> None:
        if self._active:
            msg = (
                f"this {type(self).__name__}() is already active; it serves one block at a "
                f"time. Make one per block: 'with {type(self).__name__}(...):'."
            )
            raise RuntimeError(msg)
        self._enter()
        self._active = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._active:
            msg = f"{type(self).__name__}() was exited without being entered."
            raise RuntimeError(msg)
        self._active = False
        self._exit(exc_type is not None)

    def __call__(self, fn: _F) -> _F:
        """Decorate ``fn``: every call runs inside a fresh instance."""
        make = functools.partial(type(self)._make, self._stores)
        return decorate(fn, make, what=f"{type(self).__name__}()")


class no_leaks(_Helper):  # noqa: N801 (used like a function: with no_leaks(): ...)
    """Fail if a block leaves any store different from how it found it.

    On entry, records the values that the current thread or task sees in
    each store (every live store, or the ones given); on exit, compares. A
    key added, removed or rebound raises :class:`LeakError` naming the store
    and the keys; if the block raised, its own exception propagates instead.
    Stores created inside the block are not checked.

    Use it as a context manager (``with`` or ``async with``), or as a
    decorator for functions and coroutine functions: around a test, a
    request handler, or a task that runs on a pooled thread. As a
    decorator, ``@no_leaks`` without parentheses is ``@no_leaks()``: it
    returns a plain function (a coroutine function for an ``async def``), so
    pytest collects a decorated test and passes it its fixtures.

    Args:
        *stores: The stores to check; by default every live store.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       ``@no_leaks`` works without parentheses. It used to return an object
       that pytest skipped with only a collection warning.
    """

    __slots__ = ("_entry",)

    def _enter(self) -> None:
        self._entry = [(s, dict(s.snapshot())) for s in _selected(self._stores)]

    def _exit(self, failed: bool) -> None:
        entry, self._entry = self._entry, []
        if failed:
            return  # the block's own error says more than a leak report would
        problems = [_describe(store, before, dict(store.snapshot())) for store, before in entry]
        report = [p for p in problems if p]
        if report:
            raise LeakError("values were left behind:\n" + "\n".join(report))


class empty_stores(_Helper):  # noqa: N801 (used like a function: with empty_stores(): ...)
    """Run a block with every store empty, then put every store back.

    In the current thread or task, each store (every live store, or the ones
    given) is emptied, defaults included, for the length of the block; on
    exit each gets back exactly the state it had, also when the block raises.
    A context manager (``with`` or ``async with``) and a decorator for
    functions and coroutine functions; ``@empty_stores`` without
    parentheses is ``@empty_stores()``.

    Args:
        *stores: The stores to empty; by default every live store.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       ``@empty_stores`` works without parentheses.
    """

    __slots__ = ("_saved",)

    _saved: Saved

    def _enter(self) -> None:
        backends = [backend_of(store) for store in _selected(self._stores)]
        self._saved = Saved(backends)
        for backend in backends:
            backend.empty_here()

    def _exit(self, failed: bool) -> None:
        del failed  # restored either way
        self._saved.restore()


def _describe(store: ContextStore, before: dict[str, Any], after: dict[str, Any]) -> str:
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    rebound = sorted(k for k in before.keys() & after.keys() if not _same(before[k], after[k]))
    parts = [
        f"{label} {keys}"
        for label, keys in (("added", added), ("removed", removed), ("rebound", rebound))
        if keys
    ]
    return f"  {store!r}: {', '.join(parts)}" if parts else ""


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 (a value whose == fails or is ambiguous differs)
        return False
