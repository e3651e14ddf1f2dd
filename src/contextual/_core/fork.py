"""One after-fork mechanism: what each module renews in a forked child.

A forked child has one thread, the one that called ``os.fork()``. A lock
that another thread of the parent held at that moment stays held forever
in the child, and per-thread resources of the parent (connections, spinner
threads) are not the child's. Every module that keeps such state registers
here, once, at import: :func:`after_fork_in_child` for what it must reset,
:func:`renew_locks_after_fork` for its module-level locks. One
``os.register_at_fork`` hook runs them all, in the order they registered.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["after_fork_in_child", "renew_locks_after_fork"]

_H = TypeVar("_H", bound="Callable[[], None]")

# Each entry gives its hook, or None once the hook's object is gone.
_hooks: list[Callable[[], Callable[[], object] | None]] = []
_hooks_lock = threading.Lock()


def after_fork_in_child(hook: _H) -> _H:
    """Run ``hook`` in every child this process forks, right after the fork.

    Use as a decorator on a module-level function, or pass a bound method
    for one object's state: a method is held weakly, so registering it
    keeps its object alive no longer than it would live, and its hook ends
    with it (each ``ThreadLocalDB`` registers one). Hooks run in the order
    they were registered, in the child only. One that raises is reported on
    stderr, as ``os.register_at_fork`` reports its own callables, and the
    hooks after it still run: a lock left unrenewed would hang the child.
    """
    entry: Callable[[], Callable[[], object] | None]
    if isinstance(hook, types.MethodType):
        entry = weakref.WeakMethod(hook)
    else:
        entry = functools.partial(_itself, hook)
    with _hooks_lock:
        # Dead objects' hooks go as new ones come: the list stays as long
        # as what lives.
        _hooks[:] = [*(alive for alive in _hooks if alive() is not None), entry]
    return hook


def _itself(hook: Callable[[], object]) -> Callable[[], object]:
    return hook


def renew_locks_after_fork(namespace: dict[str, Any], *names: str) -> None:
    """After each ``os.fork()``, bind a new :class:`threading.Lock` to each of ``names``.

    Pass the module's ``globals()``: code that reads the lock through the
    module global gets the new one in the child.
    """

    @after_fork_in_child
    def renew() -> None:  # pragma: no cover - runs in forked children only
        for name in names:
            namespace[name] = threading.Lock()


def _run_hooks() -> None:  # pragma: no cover - runs in forked children only
    global _hooks_lock  # noqa: PLW0603 (the parent's may have been held at the fork)
    _hooks_lock = threading.Lock()
    for entry in tuple(_hooks):
        hook = entry()
        if hook is None:
            continue  # its object was collected
        try:
            hook()
        except BaseException as exc:  # noqa: BLE001 (reported; the hooks after it must run)
            _report(exc, hook)


def _report(exc: BaseException, hook: object) -> None:  # pragma: no cover - in forked children
    # As os.register_at_fork reports a callable that raises: on stderr, and on.
    import traceback  # noqa: PLC0415 (only a broken hook needs it)

    sys.stderr.write(f"Exception ignored in an after-fork hook of contextual: {hook!r}\n")
    traceback.print_exception(exc)


if hasattr(os, "register_at_fork"):  # pragma: no branch (every POSIX system)
    os.register_at_fork(after_in_child=_run_hooks)
