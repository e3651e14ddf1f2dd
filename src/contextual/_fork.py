"""Module-level locks that a forked child gets afresh."""

from __future__ import annotations

import os
import threading
from typing import Any


def renew_locks_after_fork(namespace: dict[str, Any], *names: str) -> None:
    """After each ``os.fork()``, bind a new :class:`threading.Lock` to each of ``names``.

    Pass the module's ``globals()``: code that reads the lock through the
    module global gets the new one in the child. The forking thread is the
    child's only thread, so a lock that another thread of the parent held at
    the fork would never be released there.
    """

    def renew() -> None:  # pragma: no cover - runs in forked children only
        for name in names:
            namespace[name] = threading.Lock()

    if hasattr(os, "register_at_fork"):  # pragma: no branch (every POSIX system)
        os.register_at_fork(after_in_child=renew)
