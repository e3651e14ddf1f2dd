"""Typed store classes and task functions that child processes import by name.

Under ``spawn`` a worker process starts empty and imports this module when it
unpickles a task function, which defines the classes and creates the stores
below: the receiving side of a typed store's values.

Tests write to these stores only inside a ``scope`` or in a thread of their
own, so that no value (nor a default_factory's result) stays behind in the
main thread for the next test.
"""

from __future__ import annotations

import os

from contextual import ContextStore, field


class Job(ContextStore):
    """Values that follow a job (backend ``"context"``)."""

    tenant: str | None = None
    tags: list[str] = field(default_factory=list)
    # Made afresh in each context: shows the process that made it.
    born_in: int = field(default_factory=os.getpid)


class Worker(ContextStore, backend="thread"):
    """Values of one OS thread (backend ``"thread"``)."""

    tenant: str | None = None
    tags: list[str] = field(default_factory=list)
    born_in: int = field(default_factory=os.getpid)


job = Job("tests.typed.job")
worker = Worker("tests.typed.worker")
STORES = {"context": job, "thread": worker}


def look(backend: str) -> dict[str, object]:
    """Report the values this process sees in the store of ``backend``, and its pid."""
    store = STORES[backend]
    return {"values": dict(store), "pid": os.getpid()}


def tag_and_look(backend: str, tag: str) -> dict[str, object]:
    """Append ``tag`` to the store's tags in place, then report what this process sees."""
    STORES[backend].tags.append(tag)
    return look(backend)
