"""Executors that carry context: threads, the event loop's, processes.

Kept apart from the snapshot machinery so that ``import contextual`` doesn't
import :mod:`concurrent.futures`, :mod:`multiprocessing` or :mod:`asyncio`;
``contextual`` loads this module on first use of a name it defines.
"""

from __future__ import annotations

import functools
import pickle
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from contextual._core.store import backend_of, list_stores

from .carriers import applied_all, capture_all, check_text_map
from .snapshot import Snapshot, _in_empty_context, capture
from .wire import MAX_BYTES, MAX_VALUE_BYTES, check_characters, envelope, within_limits

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from .carriers import Carrier
    from .wire import Dropped

__all__ = [
    "ContextExecutor",
    "ContextProcessPoolExecutor",
    "set_default_executor",
    "to_thread",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Carried(functools.partial[Any]):
    """``partial(snapshot.run, fn)``: what ContextExecutor submits.

    A partial subclass, so that calling it costs no Python frame of its own,
    and so that submit() can tell a task that map() already carried.
    """

    __slots__ = ()


class ContextExecutor(ThreadPoolExecutor):
    """A :class:`~concurrent.futures.ThreadPoolExecutor` that carries context.

    :meth:`submit` and :meth:`map` :func:`capture` the caller's context at
    call time, in the caller, and each task runs in that snapshot: it sees
    the ContextVars and ``"thread"`` stores the caller saw, and nothing that
    an earlier task on the same worker set. Its writes never reach the caller
    or the next task. Worker threads start from an empty context on every
    interpreter, so no worker keeps the context of the submit that started
    it. ``initializer`` runs in that empty context.

    Everything else is the standard executor's.

    .. versionadded:: 0.1.0
    """

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Capture the caller's context and schedule ``fn(*args, **kwargs)`` to run in it."""
        task = fn if type(fn) is _Carried else _Carried(capture().run, fn)
        return super().submit(task, *args, **kwargs)

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        **kwargs: Any,
    ) -> Iterator[_T]:
        """Like :meth:`~concurrent.futures.Executor.map`; every call runs in one snapshot."""
        return super().map(
            _Carried(capture().run, fn), *iterables, timeout=timeout, chunksize=chunksize, **kwargs
        )

    def _adjust_thread_count(self) -> None:
        _in_empty_context(super()._adjust_thread_count)


# -- asyncio -------------------------------------------------------------------


async def to_thread(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``fn`` in a thread of the loop's default executor, in the caller's context.

    Like :func:`asyncio.to_thread`, and it also carries ``"thread"`` stores.

    .. versionadded:: 0.1.0
    """
    import asyncio  # noqa: PLC0415 (asyncio costs 40 ms to import; load it on use)

    loop = asyncio.get_running_loop()
    snapshot = capture()
    return await loop.run_in_executor(None, functools.partial(snapshot.run, fn, *args, **kwargs))


def set_default_executor(
    loop: asyncio.AbstractEventLoop | None = None, *, max_workers: int | None = None
) -> ContextExecutor:
    """Give an event loop a :class:`ContextExecutor` as its default executor.

    Afterwards ``loop.run_in_executor(None, fn)`` (and :func:`asyncio.to_thread`)
    run ``fn`` in the calling task's context, ``"thread"`` stores included.

    Args:
        loop: The loop; by default the running loop.
        max_workers: Passed to :class:`ContextExecutor`.

    Returns:
        The new executor; the loop shuts it down when it closes.

    .. versionadded:: 0.1.0
    """
    if loop is None:
        import asyncio  # noqa: PLC0415 (asyncio costs 40 ms to import; load it on use)

        loop = asyncio.get_running_loop()
    executor = ContextExecutor(max_workers=max_workers, thread_name_prefix="contextual")
    loop.set_default_executor(executor)
    return executor


# -- processes -------------------------------------------------------------------


class ContextProcessPoolExecutor(ProcessPoolExecutor):
    """A :class:`~concurrent.futures.ProcessPoolExecutor` that carries stores.

    :meth:`submit` (and so :meth:`~concurrent.futures.Executor.map`)
    captures the caller's propagating stores, as :meth:`Snapshot.to_dict`
    data, and the task runs in the worker process with
    :meth:`Snapshot.from_dict` applied: the stores of the same names there
    hold the caller's values; stores the worker doesn't have are skipped. It
    works under every start method (``fork``, ``spawn``, ``forkserver``).

    Every worker process starts with every store fresh, whatever ``fork``
    copied from the parent, before ``initializer`` runs; after each task it
    is put back as it was, so nothing leaks from one task into the next
    (``propagate=False`` thread stores belong to the worker and keep what its
    tasks write, as on a thread). Other libraries' ContextVars don't travel:
    a Context can't be pickled. OpenTelemetry's span context is the
    exception, once :func:`contextual.integrations.opentelemetry.install`
    ran here: its propagator writes it out at submit, and the task runs
    with it current, so a span the task starts is a child of the span that
    submitted it (the worker imports the integration to read it, and need
    not install it).

    What is carried crosses a process boundary, so :meth:`submit` checks
    it as every carrier of contextual does (HTTP, Celery), and refuses in
    the caller, naming the store and key, with nothing sent:

    * a value that can't be pickled: :class:`TypeError`;
    * a store name, key or value that holds a control or format character
      (line breaks, DEL, bidirectional overrides such as U+202E,
      zero-width characters, U+2028), also inside lists, tuples, sets and dicts:
      :class:`ValueError`, as :meth:`Snapshot.from_dict` raises (the worker
      checks again there);
    * more than 4096 bytes for one key and its value, or 8192 bytes for
      every store together (the limits W3C Baggage sets for HTTP), each
      key and its value measured pickled on its own: :class:`ValueError`,
      with the size and the limit. Send
      large data as an argument of the task; carry IDs in stores;
    * a span context that no HTTP header
      could carry as it is: a key that is not an HTTP field name or a value
      that is not printable ASCII, or more than 8192 bytes in all (keys and
      values, measured apart from the stores' limits): :class:`ValueError`,
      naming the carrier.

    A value that pickles here but can't be unpickled in the worker fails
    that task alone, with a :class:`TypeError` naming the store.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       Refuses control and format characters, and values over the size
       limits, at submit time. Carries OpenTelemetry's span context.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(max_workers, mp_context, _start_worker, (initializer, initargs), **kwargs)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Capture the caller's stores and schedule ``fn(*args, **kwargs)`` in a worker.

        Raises:
            TypeError: A carried value can't be pickled. Nothing is sent.
            ValueError: A carried name, key or value holds a control or
                format character, or the carried values, or a carried span
                context, are over their size limits. Nothing is sent.
            StoreDefaultsError: The ``defaults`` factory of a
                ``propagate=True`` ``"thread"`` store failed in this thread.
        """
        payload = _payload(capture().to_dict()["stores"])
        carried = capture_all()
        if carried:
            for carrier, text_map in carried:
                check_text_map(carrier.name, text_map)
            return super().submit(_run_with_carried, carried, payload, fn, *args, **kwargs)
        return super().submit(_run_from_payload, payload, fn, *args, **kwargs)


def _start_worker(initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    # Under fork the worker holds copies of the forking thread's values,
    # propagate=False ones included (a per-thread connection, say): start
    # from nothing, as under spawn.
    for store in list_stores():
        backend_of(store).reset_here()
    if initializer is not None:
        initializer(*initargs)


def _payload(stores: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """Check the carried stores and pickle each one's values apart, to name any at fault.

    Raises:
        TypeError: A value can't be pickled.
        ValueError: A name, key or value breaks the character rule, or the
            stores are over the limits of :func:`~.wire.within_limits`,
            each entry measured pickled.
    """
    if not stores:
        return {}
    check_characters(stores)
    payload: dict[str, bytes] = {}
    for name, values in stores.items():
        try:
            pickled = pickle.dumps(values)
        except Exception:  # noqa: BLE001 (find the value at fault below)
            _raise_unpicklable(name, values)
        payload[name] = pickled
    if not _surely_within_limits(stores, payload):
        _, dropped = within_limits(stores, _pickled_size)
        if dropped:
            _raise_over_limits(stores, dropped)
    return payload


def _surely_within_limits(stores: dict[str, dict[str, Any]], payload: dict[str, bytes]) -> bool:
    """Tell, from the stores' pickles alone, that :func:`~.wire.within_limits` would drop nothing.

    The pickle of one item of a dict is never longer than the pickle of
    the whole dict (a subset of the same objects, the same framing), so a
    store's pickle bounds each of its entries. When those bounds keep every
    entry within the limits, measuring the entries one by one, which would
    double the cost of a submit's checks, tells nothing more.
    """
    bound = 0
    for name, pickled in payload.items():
        if len(pickled) > MAX_VALUE_BYTES:
            return False
        bound += len(pickled) * len(stores[name])
    return bound <= MAX_BYTES


def _pickled_size(key: str, value: object) -> int:
    """Measure one carried key and its value as a process pool sends them: pickled."""
    return len(pickle.dumps({key: value}))


def _raise_over_limits(stores: dict[str, dict[str, Any]], dropped: list[Dropped]) -> NoReturn:
    """Refuse the submit: a pool sends all of the context or none of it."""
    for entry in dropped:
        if entry.limit == "value":
            msg = (
                f"store {entry.store!a} key {entry.key!a} takes {entry.size} bytes pickled, "
                f"over the limit of {MAX_VALUE_BYTES} bytes for one carried key and value, so "
                "nothing was sent to the worker process. Carry an ID and look the data up in "
                "the worker, pass large data as an argument of the task, or create the store "
                "with propagate=False so that it stays in this process."
            )
            raise ValueError(msg)
    sizes = sorted(
        (
            (_pickled_size(key, value), name, key)
            for name, values in stores.items()
            for key, value in values.items()
        ),
        reverse=True,
    )
    total = sum(size for size, _, _ in sizes)
    largest = ", ".join(
        f"store {name!a} key {key!a} ({size} bytes)" for size, name, key in sizes[:3]
    )
    msg = (
        f"the stores carried to the worker process take {total} bytes (each key and its "
        "value pickled, summed), over the "
        f"limit of {MAX_BYTES} bytes for everything one task carries, so nothing was sent. "
        f"The largest values: {largest}. Carry IDs and look the data up in the worker, pass "
        "large data as arguments of the task, or create stores that hold it with "
        "propagate=False so that they stay in this process."
    )
    raise ValueError(msg)


def _raise_unpicklable(name: str, values: dict[str, Any]) -> NoReturn:
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
        f"the values of store {name!r} can't be pickled together, though each one can."
    )


def _run_from_payload(
    payload: dict[str, bytes], fn: Callable[..., _T], /, *args: Any, **kwargs: Any
) -> _T:
    return _snapshot_from(payload).run(fn, *args, **kwargs)


def _run_with_carried(
    carried: tuple[tuple[Carrier, Mapping[str, str]], ...],
    payload: dict[str, bytes],
    fn: Callable[..., _T],
    /,
    *args: Any,
    **kwargs: Any,
) -> _T:
    return _snapshot_from(payload).run(_in_carried, carried, fn, args, kwargs)


def _in_carried(
    carried: tuple[tuple[Carrier, Mapping[str, str]], ...],
    fn: Callable[..., _T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> _T:
    # Inside the snapshot's context: what the carriers make current ends with the run.
    with applied_all(carried):
        return fn(*args, **kwargs)


def _snapshot_from(payload: dict[str, bytes]) -> Snapshot:
    stores: dict[str, Any] = {}
    for name, pickled in payload.items():
        try:
            stores[name] = pickle.loads(pickled)  # noqa: S301 (sent by our own submit)
        except Exception as exc:  # noqa: PERF203 (name the store whose values failed)
            msg = (
                f"the values of store {name!r} could not be unpickled in the worker process "
                f"({type(exc).__name__}: {exc}). Define the classes of stored values at the "
                "top level of a module the worker can import."
            )
            raise TypeError(msg) from exc
    return Snapshot.from_dict(envelope(stores), missing="ignore")
