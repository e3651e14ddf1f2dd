"""Stores and task functions that child processes import by name.

Under ``spawn`` and ``forkserver`` a worker process starts empty and imports
this module when it unpickles a task function, which creates the stores
below: the receiving side of Snapshot.from_dict().
"""

from __future__ import annotations

import os

from contextual import ContextStore

request = ContextStore("tests.process.request", defaults={"user": None})
connection = ContextStore("tests.process.connection", backend="thread")
local_only = ContextStore("tests.process.local", backend="thread", propagate=False)


def look() -> dict[str, object]:
    """Report what this process sees in every store."""
    return {
        "request": dict(request),
        "connection": dict(connection),
        "local_only": dict(local_only),
        "pid": os.getpid(),
    }


def write_then_look(tag: str) -> dict[str, object]:
    """Report what this task saw, then leave values behind for the next task."""
    seen = look()
    request["left_by"] = tag
    connection["left_by"] = tag
    local_only["left_by"] = tag
    return seen


class UnpicklableInWorker:
    """Pickles in the parent, refuses to be rebuilt in a worker process."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse, ())


def _refuse() -> None:
    msg = "this value can't be rebuilt here"
    raise RuntimeError(msg)


_remembered: list[str] = []


def remember(tag: str) -> None:
    """A worker initializer: keep ``tag`` for remembered() to return."""
    _remembered.append(tag)


def remembered() -> str:
    """Return what the initializer of this worker process was given."""
    return _remembered[-1]
