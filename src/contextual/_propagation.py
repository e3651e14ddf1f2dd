"""Propagation: capture everything registered, and carry it into other work.

A :class:`Snapshot` holds two things, both taken in the calling thread:

* a copy of the current :class:`contextvars.Context`: every ContextVar,
  the ``"context"`` stores' and other libraries' alike, at O(1) cost
  whatever their number;
* the current values of every ``propagate=True`` ``"thread"`` store, which
  no Context can carry.

Running work in a snapshot enters a fresh copy of that Context and publishes
the thread stores' values in the running thread, then puts the thread back
exactly as it was. Nothing is ever written into the captured objects, so one
snapshot can run any number of times, at once, in any threads.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import pickle
import threading
from collections.abc import Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, final

from . import _registry

if TYPE_CHECKING:
    from ._store import ContextStore, _State

__all__ = ["ContextThread", "Snapshot", "capture"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

# The format version of Snapshot.to_dict(), checked by from_dict().
_FORMAT: Final = 1


@final
class Snapshot:
    """Context captured in one thread, to run work in anywhere else.

    Take one with :func:`capture`. What work run in a snapshot sees:

    * every ContextVar as it was at capture, ``"context"`` stores and other
      libraries' variables alike, except ``propagate=False`` stores, which
      start fresh (their defaults);
    * every ``propagate=True`` ``"thread"`` store's values as they were in the
      capturing thread; ``propagate=False`` thread stores keep the running
      thread's own values.

    Each run starts from the snapshot, never from an earlier run: runs of one
    snapshot, at once in several threads or one after another, never see
    each other's writes, and writes never flow back to the snapshot or the
    caller (the choice :func:`asyncio.to_thread` makes). When a run ends, the
    running thread is exactly as before: its context, and the values of its
    thread stores.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_context", "_threads")

    _context: contextvars.Context
    # (store, state to publish) for each propagating thread store.
    _threads: tuple[tuple[ContextStore, _State], ...]

    def __init__(self) -> None:
        msg = "take a Snapshot with contextual.capture(), or rebuild one with Snapshot.from_dict()"
        raise TypeError(msg)

    @classmethod
    def _make(
        cls,
        context: contextvars.Context,
        threads: tuple[tuple[ContextStore, _State], ...],
    ) -> Snapshot:
        self = object.__new__(cls)
        self._context = context
        self._threads = threads
        return self

    def __repr__(self) -> str:
        names = sorted(store.name for store, _ in self._threads)
        return f"<Snapshot of a context with thread stores {names}>"

    def __reduce__(self) -> str | tuple[Any, ...]:
        msg = (
            "a Snapshot holds a contextvars.Context, which can't be pickled. Send "
            "snapshot.to_dict() to the other process and rebuild it there with "
            "Snapshot.from_dict(data)."
        )
        raise TypeError(msg)

    def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call ``fn(*args, **kwargs)`` in a fresh copy of this snapshot.

        Returns:
            What ``fn`` returns; what it raises propagates unchanged, after
            the running thread has been put back as it was.

        .. versionadded:: 0.1.0
        """
        if self._threads:
            return self._context.copy().run(_run_with_threads, self._threads, fn, args, kwargs)
        return self._context.copy().run(fn, *args, **kwargs)

    def wrap(self, fn: Callable[_P, _T], /) -> Callable[_P, _T]:
        """Return a callable that runs ``fn`` in this snapshot on every call.

        For a coroutine function the result is a coroutine function, and the
        coroutine runs in the snapshot at every step, whichever task awaits
        it: ContextVars from a copy of the snapshot's context, ``"thread"``
        stores from the snapshot's values (put back in the loop's thread
        whenever the coroutine is suspended, so other tasks on that thread
        never see them).

        .. versionadded:: 0.1.0
        """
        if inspect.iscoroutinefunction(fn):
            coroutine_fn: Callable[..., Coroutine[Any, Any, Any]] = fn

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                return await _InSnapshot(self, coroutine_fn(*args, **kwargs))

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            return self.run(fn, *args, **kwargs)

        return run

    # -- out of process -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the propagating stores' values as plain, picklable data.

        The result maps each ``propagate=True`` store's name to a dict of its
        values, under the key ``"stores"``, with a format version. Other
        libraries' ContextVars stay behind: only stores are known by name in
        another process.

        Raises:
            TypeError: A value can't be pickled; the message names the store
                and the key.

        .. versionadded:: 0.1.0
        """
        stores: dict[str, dict[str, Any]] = {}
        for store in _registry.propagating_stores():
            if store.backend == "context":
                state = store._state_in(self._context)  # noqa: SLF001
                # None: its defaults factory never ran there; the receiving
                # side runs its own.
                if state is not None:
                    stores[store.name] = dict(state[0])
        for store, state in self._threads:
            stores[store.name] = dict(state[0])
        _check_picklable(stores)
        return {"format": _FORMAT, "stores": stores}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """Rebuild a snapshot from :meth:`to_dict` data, in this process.

        Stores are resolved by name among this process's live stores (import
        the modules that create them first); each gets the values that its
        namesake had, whatever its backend here. The context starts empty:
        stores not named in ``data``, and every other ContextVar, start fresh.

        Raises:
            TypeError: ``data`` is not what :meth:`to_dict` returns.
            LookupError: A store named in ``data`` doesn't exist here. Nothing
                is applied.

        .. versionadded:: 0.1.0
        """
        stores = _checked_data(data)
        resolved: list[tuple[ContextStore, dict[str, Any]]] = []
        missing: list[str] = []
        for name, values in stores.items():
            try:
                resolved.append((_registry.get_store(name), values))
            except LookupError:  # noqa: PERF203 (collect every missing name for one message)
                missing.append(name)
        if missing:
            msg = (
                f"no live store is named {', '.join(map(repr, sorted(missing)))} in this "
                "process, so the snapshot can't be applied. Create those stores at import "
                "time in a module that this process imports (under 'spawn', the module "
                "of the function you submit is imported before it runs)."
            )
            raise LookupError(msg)
        context = contextvars.Context()
        threads: list[tuple[ContextStore, _State]] = []
        for store, values in resolved:
            if store.backend == "context":
                context.run(store._publish, (values, None, None))  # noqa: SLF001
            else:
                threads.append((store, (values, None, None)))
        return cls._make(context, tuple(threads))


def _run_with_threads(
    threads: tuple[tuple[ContextStore, _State], ...],
    fn: Callable[..., _T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> _T:
    saved = [(store, store._state()) for store, _ in threads]  # noqa: SLF001
    try:
        for store, state in threads:
            store._publish(state)  # noqa: SLF001
        return fn(*args, **kwargs)
    finally:
        for store, state in saved:
            store._publish(state)  # noqa: SLF001


def capture() -> Snapshot:
    """Capture the current context, to run work in elsewhere.

    Takes, in the calling thread, a copy of the current
    :class:`contextvars.Context` and the values of every ``propagate=True``
    ``"thread"`` store. The cost doesn't grow with the number of ContextVars
    or of keys in ``"context"`` stores.

    Returns:
        The snapshot; see :class:`Snapshot` for what work run in it sees.

    Example:
        >>> import threading
        >>> from contextual import ContextStore, capture
        >>> job = ContextStore("example.capture")
        >>> job["id"] = 7
        >>> snapshot = capture()
        >>> seen = []
        >>> worker = threading.Thread(target=snapshot.wrap(lambda: seen.append(job.get("id"))))
        >>> worker.start()
        >>> worker.join()
        >>> seen
        [7]

    .. versionadded:: 0.1.0
    """
    context = contextvars.copy_context()
    for store in _registry.local_context_stores():
        # propagate=False context stores must not travel: give them the
        # state of a context that never wrote, in the copy only.
        store._forget_in(context)  # noqa: SLF001
    threads = tuple(
        (store, (store._current(), None, None))  # noqa: SLF001
        for store in _registry.propagating_thread_stores()
    )
    return Snapshot._make(context, threads)


# -- coroutines ----------------------------------------------------------------


class _InSnapshot:
    """Await a coroutine so that each of its steps runs in a snapshot.

    A coroutine runs in the context of whichever task drives it, so the only
    way to give it another is to enter that context around every ``send`` and
    ``throw``. The same copy of the snapshot's context is entered each time,
    so the coroutine sees its own earlier writes; ``"thread"`` stores get the
    coroutine's values for the length of a step and the thread's own back
    when it suspends.
    """

    __slots__ = ("_context", "_coro", "_threads")

    def __init__(self, snapshot: Snapshot, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._context = snapshot._context.copy()  # noqa: SLF001
        self._threads = list(snapshot._threads)  # noqa: SLF001

    def __await__(self) -> Generator[Any, Any, Any]:
        context, coro = self._context, self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    yielded = context.run(self._step, coro.send, value)
                else:
                    yielded = context.run(self._step, coro.throw, error)
            except StopIteration as stop:
                return stop.value
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                context.run(self._step, _close, coro)
                raise
            except BaseException as exc:  # noqa: BLE001 (delivered into the coroutine)
                value, error = None, exc

    def _step(self, method: Callable[[Any], Any], argument: Any) -> Any:
        threads = self._threads
        if not threads:
            return method(argument)
        saved = [(store, store._state()) for store, _ in threads]  # noqa: SLF001
        try:
            for store, state in threads:
                store._publish(state)  # noqa: SLF001
            return method(argument)
        finally:
            # Keep what this step wrote for the next step, then put the
            # thread's own values back for the other tasks on this loop.
            self._threads = [(store, store._state()) for store, _ in threads]  # noqa: SLF001
            for store, state in saved:
                store._publish(state)  # noqa: SLF001


def _close(coro: Coroutine[Any, Any, Any]) -> None:
    coro.close()


# -- out of process: checks ------------------------------------------------------


def _check_picklable(stores: dict[str, dict[str, Any]]) -> None:
    try:
        pickle.dumps(stores)
    except Exception:  # noqa: BLE001, S110 (find the culprit below and name it)
        pass
    else:
        return
    for name, values in stores.items():
        for key, value in values.items():
            try:
                pickle.dumps(value)
            except Exception as exc:  # noqa: PERF203 (the slow path, once, to name the value)
                msg = (
                    f"store {name!r} key {key!r} holds a {type(value).__name__} that can't be "
                    f"pickled ({type(exc).__name__}: {exc}), so it can't be sent to another "
                    "process. Store a picklable value (an ID instead of a connection, say), "
                    "or create the store with propagate=False so it stays in this process."
                )
                raise TypeError(msg) from exc
    raise TypeError(  # pragma: no cover - a value that pickles alone but not with the rest
        "the store values can't be pickled together, though each one can on its own."
    )


def _checked_data(data: object) -> dict[str, dict[str, Any]]:
    expected = (
        "expected the dict returned by Snapshot.to_dict(), "
        "{'format': 1, 'stores': {store name: {key: value}}}"
    )
    if not isinstance(data, Mapping):
        raise TypeError(f"{expected}; got {type(data).__name__}.")
    if data.get("format") != _FORMAT:
        msg = (
            f"{expected}; got format {data.get('format')!r}. Both processes must run "
            "compatible versions of contextual."
        )
        raise TypeError(msg)
    stores = data.get("stores")
    if not isinstance(stores, Mapping):
        raise TypeError(f"{expected}; 'stores' is {type(stores).__name__}.")
    result: dict[str, dict[str, Any]] = {}
    for name, values in stores.items():
        if not isinstance(name, str) or not isinstance(values, Mapping):
            raise TypeError(f"{expected}; got the entry {name!r}: {values!r}.")
        if not all(isinstance(key, str) for key in values):
            raise TypeError(f"{expected}; store {name!r} has a non-str key.")
        result[name] = dict(values)
    return result


# -- threads ---------------------------------------------------------------------


def _in_empty_context(start: Callable[[], None]) -> None:
    # Where new threads inherit their starter's context (free-threaded 3.14,
    # thread_inherit_context), a worker started from a submit() would keep
    # that submit's context, and its values alive, for its whole life. Start
    # it from an empty Context instead, on every interpreter.
    contextvars.Context().run(start)


class ContextThread(threading.Thread):
    """A :class:`threading.Thread` whose ``run()`` sees its starter's context.

    :meth:`start` captures (:func:`capture`) the context of the thread that calls it,
    and ``run()`` (the target, or a subclass's override) runs in that
    snapshot: the starter's ContextVars and ``"thread"`` stores, copied. The
    thread's writes never reach the starter.

    .. versionadded:: 0.1.0
    """

    def start(self) -> None:
        """Capture the caller's context, then start the thread as usual."""
        snapshot = capture()
        run = self.run
        carried = functools.partial(_run_once, self, snapshot, run)
        # An instance attribute shadows run() for this one start, whatever
        # class defines it; _run_once removes it again to break the cycle.
        self.run = carried  # type: ignore[method-assign]
        try:
            _in_empty_context(super().start)
        except BaseException:
            del self.run
            raise


def _run_once(thread: threading.Thread, snapshot: Snapshot, run: Callable[[], None]) -> None:
    del thread.run
    snapshot.run(run)
