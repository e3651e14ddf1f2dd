"""One decorator for every context manager of the library that also decorates."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from types import TracebackType

__all__ = ["AsyncToo", "decorate"]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


class AsyncToo(Generic[_T]):
    """Makes a synchronous context manager usable with ``async with`` too.

    Entering and exiting never await anything, so ``async with`` does just
    what ``with`` does.
    """

    __slots__ = ()

    def __enter__(self) -> _T:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> _T:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def decorate(fn: _F, enter: Callable[[], AbstractContextManager[Any]], *, what: str) -> _F:
    """Return ``fn`` wrapped so that each call runs inside ``enter()``.

    A coroutine function (or an object with an ``async def __call__``) gets
    a coroutine function, whose body runs inside. Generator functions are
    refused: the context would stay open across every ``yield``, in the
    caller's code. A plain function that returns a coroutine is refused when
    it does, since the context closed before the coroutine's body ran.

    Args:
        fn: The function to decorate.
        enter: Makes the context manager for one call.
        what: How error messages name the decorator, such as ``"scope()"``.
    """
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        msg = (
            f"{what} can't decorate the generator function {fn.__qualname__}: it would "
            "stay open across every yield, in the caller's context. Use it as a 'with' "
            "block inside the generator, around the code that needs it."
        )
        raise TypeError(msg)
    if not callable(fn):
        raise TypeError(f"{what} decorates functions, got {type(fn).__name__} {fn!r}.")

    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (an object with async __call__)
    ):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with enter():
                return await fn(*args, **kwargs)

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with enter():
            result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):
            # The context closed before the coroutine's body could run in it.
            result.close()
            msg = (
                f"{fn!r} returned a coroutine, so {what} closed before its body ran. "
                "Decorate the 'async def' function itself, or use 'async with' inside it."
            )
            raise TypeError(msg)
        return result

    return run  # type: ignore[return-value]
