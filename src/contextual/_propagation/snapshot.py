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
import threading
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast, final

from contextual._core.backends import run_with_threads
from contextual._core.store import REGISTRY, backend_of, get_store
from contextual._request.request import REQUEST_STORE, USER_KEY, resolved_safely

from .wire import check_characters, envelope, open_envelope

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Generator, Mapping

    from contextual._core.backends import ContextBackend, ThreadBackend, ThreadEntry
    from contextual._core.store import ContextStore

__all__ = ["ContextThread", "Snapshot", "capture", "stores_here"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


@final
class Snapshot:
    """Context captured in one thread, to run work in anywhere else.

    Take one with :func:`capture`. What work run in a snapshot sees:

    * every ContextVar as it was at capture, ``"context"`` stores and other
      libraries' variables alike, except ``propagate=False`` stores, which
      start fresh (their defaults);
    * every ``propagate=True`` ``"thread"`` store's values as they were in the
      capturing thread.

    Each run starts from the snapshot, never from an earlier run: runs of one
    snapshot, at once in several threads or one after another, never see
    each other's writes, and writes never flow back to the snapshot or the
    caller (the choice :func:`asyncio.to_thread` makes). When a run ends, the
    running thread's context and the values of the thread stores that the
    snapshot carried are exactly as before.

    Two kinds of store are the running thread's own, not the snapshot's, and
    keep what a run writes to them: ``propagate=False`` thread stores (a
    per-thread connection, say, meant to outlive one task) and stores
    created after the capture.

    A snapshot holds its values, and the thread stores it carries, until it
    is dropped.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_context", "_threads")

    _context: contextvars.Context
    _threads: tuple[ThreadEntry, ...]

    def __init__(
        self,
        context: contextvars.Context | None = None,
        threads: tuple[ThreadEntry, ...] = (),
        /,
    ) -> None:
        if context is None:
            msg = (
                "take a Snapshot with contextual.capture(), or rebuild one with "
                "Snapshot.from_dict()"
            )
            raise TypeError(msg)
        self._context = context
        self._threads = threads

    def __repr__(self) -> str:
        names = sorted(entry[0].name for entry in self._threads)
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
            result: _T = self._context.copy().run(run_with_threads, self._threads, fn, args, kwargs)
            return result
        return self._context.copy().run(fn, *args, **kwargs)

    def wrap(self, fn: Callable[_P, _T], /) -> Callable[_P, _T]:
        """Return a callable that runs ``fn`` in this snapshot on every call.

        For a coroutine function (or an object with an ``async def
        __call__``) the result is a coroutine function, and the coroutine runs
        in the snapshot at every step, whichever task awaits it: ContextVars
        from a copy of the snapshot's context, ``"thread"`` stores from the
        snapshot's values (put back in the loop's thread whenever the
        coroutine is suspended, so other tasks on that thread never see
        them). A plain function that returns a coroutine gets the same
        treatment for the coroutine it returns.

        Raises:
            TypeError: ``fn`` is an async generator function, whose steps
                can't be given a context this way.

        .. versionadded:: 0.1.0
        """
        if inspect.isasyncgenfunction(fn):
            msg = (
                f"Snapshot.wrap() can't wrap the async generator function {fn.__qualname__}. "
                "Wrap a coroutine function that iterates it instead."
            )
            raise TypeError(msg)
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 (an object with async __call__)
        ):
            coroutine_fn: Callable[..., Coroutine[Any, Any, Any]] = fn  # type: ignore[assignment]

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                return await self._around(coroutine_fn(*args, **kwargs))

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            result = self.run(fn, *args, **kwargs)
            if inspect.iscoroutine(result):
                return _drive(self._around(result))  # type: ignore[return-value]
            return result

        return run

    # -- out of process -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the propagating stores' values as plain data.

        The result maps, under the key ``"stores"``, the name of each
        ``propagate=True`` store that holds anything but its constant
        defaults to a dict of its values (values a defaults factory made
        count: they are the thread's or context's own); a store whose
        factory never ran there is left out, and so is every store that
        only holds its ``defaults`` mapping. A ``"format"`` key versions it. Other libraries'
        ContextVars stay behind: only stores are known by name in another
        process. Pickle it, or encode it any way the values allow.

        Nothing is checked here. :meth:`from_dict` checks the characters of
        what arrives, and :class:`ContextProcessPoolExecutor` checks
        characters and sizes before it sends anything; a transport of your
        own should also keep within the sizes it can carry.

        .. versionadded:: 0.1.0
        .. versionchanged:: 0.2.0
           What it returns is checked where it arrives: :meth:`from_dict`
           refuses control and format characters.
        """
        stores = _stores_of(self._context, self._threads)
        request = stores.get(REQUEST_STORE.name)
        if request is not None and USER_KEY in request:
            # A user looked up on first read travels as the user itself.
            request[USER_KEY] = resolved_safely(request[USER_KEY])
        return envelope(stores)

    def _around(self, coro: Coroutine[Any, Any, _T]) -> _InSnapshot:
        """Return an awaitable that runs ``coro`` in a fresh copy of this snapshot."""
        return _InSnapshot(self._context.copy(), self._threads, coro)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, missing: Literal["raise", "ignore"] = "raise"
    ) -> Snapshot:
        """Rebuild a snapshot from :meth:`to_dict` data, in this process.

        Stores are resolved by name among this process's live stores (import
        the modules that create them first); each gets the values that its
        namesake had, whatever its backend here. Stores not named in ``data``,
        and every other ContextVar, start fresh.

        ``data`` is treated as input from outside this process (another
        process, a queue, your own transport), because the values end up in
        log lines, headers and terminals. Besides its shape, every str in it
        is checked (store names, keys, and values, also inside lists, tuples
        and dicts): none may hold a control or format character (Unicode
        categories Cc and Cf: line breaks, DEL, the bidirectional overrides
        such as U+202E, zero-width characters) nor U+2028 or U+2029, which
        would start or rewrite a line wherever the value is shown. Any other
        character travels, a no-break space or ``"東京"`` alike. Nothing of
        ``data`` is applied when any part is refused.

        Args:
            data: What :meth:`to_dict` returned, in this or another process.
            missing: What to do about names no live store has here:
                ``"raise"`` a :class:`LookupError`, or ``"ignore"`` them (no
                code here can read a store that doesn't exist).

        Raises:
            TypeError: ``data`` is not what :meth:`to_dict` returns.
            ValueError: A store name, key or value holds a refused
                character. The message names the store and key, escaped
                with ``ascii()``, and quotes no value.
            LookupError: With ``missing="raise"``, a store named in ``data``
                doesn't exist here. Nothing is applied.

        .. versionadded:: 0.1.0
        .. versionchanged:: 0.2.0
           Refuses text that holds a control or format character, with a
           :class:`ValueError`.
        """
        if missing not in ("raise", "ignore"):
            msg = f"missing must be 'raise' or 'ignore', got {missing!r}."
            raise ValueError(msg)
        stores, _ = open_envelope(data, strict=True)
        check_characters(stores)
        resolved: list[tuple[ContextStore, dict[str, Any]]] = []
        unknown: list[str] = []
        for name, values in stores.items():
            try:
                resolved.append((get_store(name), values))
            except LookupError:  # noqa: PERF203 (collect every missing name for one message)
                unknown.append(name)
        if unknown and missing == "raise":
            msg = (
                f"no live store is named {', '.join(map(repr, sorted(unknown)))} in this "
                "process, so the snapshot can't be applied. Create those stores at import "
                "time in a module that this process imports (under 'spawn', the module "
                "of the function you submit is imported before it runs), or pass "
                "missing='ignore'."
            )
            raise LookupError(msg)
        context = contextvars.Context()
        threads: list[ThreadEntry] = []
        for store, values in resolved:
            backend_of(store).seed(values, context, threads)
        named = {store.name for store, _ in resolved}
        for ref in REGISTRY.view.carried_by_thread:
            other = cast("ThreadBackend | None", ref())
            if other is not None and other.name not in named:
                # Fresh for the run, and put back after it, like the others:
                # a task's writes must not reach the next task here either.
                threads.append(other.entry(other.fresh))
        return Snapshot(context, tuple(threads))


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
    return Snapshot(*_taken())


def _taken() -> tuple[contextvars.Context, tuple[ThreadEntry, ...]]:
    """What a snapshot of here holds: a copy of the context, and the thread stores' entries."""
    view = REGISTRY.view
    context = contextvars.copy_context()
    for ref in view.acts_on_capture:
        backend = cast("ContextBackend | None", ref())
        if backend is not None:
            # propagate=False context stores must not travel: in the copy
            # only, they start fresh.
            backend.on_capture(context)
    threads: list[ThreadEntry] = []
    for ref in view.carried_by_thread:
        thread_backend = cast("ThreadBackend | None", ref())
        if thread_backend is not None:
            threads.append(thread_backend.carried())
    return context, tuple(threads)


def _stores_of(
    context: contextvars.Context, threads: tuple[ThreadEntry, ...]
) -> dict[str, dict[str, Any]]:
    """The values of the propagating stores in ``context`` and ``threads``, by store name."""
    stores: dict[str, dict[str, Any]] = {}
    for ref in REGISTRY.view.propagating:
        backend = ref()
        if backend is None:
            continue
        # None: a thread store (no Context holds one), or nothing set
        # there. Either way the receiving side's own defaults serve.
        values = backend.values_in(context)
        if values is not None:
            stores[backend.name] = dict(values)
    for backend, _, values in threads:
        if values is not None and values is not backend.fresh:
            stores[backend.name] = dict(values)
    return stores


def stores_here() -> dict[str, dict[str, Any]]:
    """Return what ``capture().to_dict()["stores"]`` would, with the user left unread.

    For senders that pick some keys to send: a user looked up on first
    read (a :class:`~contextual._request.request.Deferred`) is looked up
    only if the sender keeps it.
    """
    return _stores_of(*_taken())


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

    def __init__(
        self,
        context: contextvars.Context,
        threads: tuple[ThreadEntry, ...],
        coro: Coroutine[Any, Any, Any],
    ) -> None:
        self._coro = coro
        self._context = context
        self._threads = threads

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
            finally:
                # An exception kept here would hold its traceback, and the
                # traceback this frame: a cycle on every cancellation.
                value = error = None
            try:
                value = yield yielded
            except GeneratorExit:
                context.run(self._step, _close, coro)
                raise
            except BaseException as exc:  # noqa: BLE001 (delivered into the coroutine)
                error = exc

    def _step(self, method: Callable[[Any], Any], argument: Any) -> Any:
        threads = self._threads
        if not threads:
            return method(argument)
        saved = [(backend, backend.save_here()) for backend, _, _ in threads]
        try:
            for backend, _, values in threads:
                backend.restore_here(values)
            return method(argument)
        finally:
            # Keep what this step wrote for the next step, then put the
            # thread's own values back for the other tasks on this loop.
            self._threads = tuple(backend.entry(backend.save_here()) for backend, _, _ in threads)
            for backend, values in saved:
                backend.restore_here(values)
            del argument  # the same cycle as above, through a thrown exception


async def _drive(awaitable: _InSnapshot) -> Any:
    return await awaitable


def _close(coro: Coroutine[Any, Any, Any]) -> None:
    coro.close()


# -- threads ---------------------------------------------------------------------


def _in_empty_context(start: Callable[[], None]) -> None:
    # Where new threads inherit their starter's context (free-threaded 3.14,
    # thread_inherit_context), a worker started from a submit() would keep
    # that submit's context, and its values alive, for its whole life. Start
    # it from an empty Context instead, on every interpreter.
    contextvars.Context().run(start)


class ContextThread(threading.Thread):
    """A :class:`threading.Thread` whose ``run()`` sees its starter's context.

    :meth:`start` captures (:func:`capture`) the context of the thread that
    calls it, and ``run()`` (the target, or a subclass's override) runs in
    that snapshot: the starter's ContextVars and ``"thread"`` stores, copied.
    The thread's writes never reach the starter.

    .. versionadded:: 0.1.0
    """

    def start(self) -> None:
        """Capture the caller's context, then start the thread as usual."""
        if self.__dict__.get("_contextual_started"):
            # Let threading say it ("threads can only be started once")
            # without touching the run() of the start that happened.
            super().start()
        # Marked only once the capture succeeded: a start refused there (a
        # store's failing defaults factory) leaves the thread unstarted,
        # and the next start() must still carry the context.
        snapshot = capture()
        self._contextual_started = True
        # An instance attribute shadows run() for this one start, whatever
        # class defines it; _run_once removes it again, which also breaks
        # the cycle thread -> partial -> thread.
        self.run = functools.partial(_run_once, self, snapshot, self.run)  # type: ignore[method-assign]
        try:
            _in_empty_context(super().start)
        except BaseException:
            self.__dict__.pop("run", None)
            raise


def _run_once(thread: threading.Thread, snapshot: Snapshot, run: Callable[[], None]) -> None:
    thread.__dict__.pop("run", None)
    snapshot.run(run)
