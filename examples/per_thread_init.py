"""Per-thread initialisation: every thread starts with no jobs and a count of 0.

The classic tutorial subclasses threading.local and sets the initial values
in __init__, which runs once in each thread that touches the object. Put
them in the class body instead, a common slip, and every thread shares one
list: a class attribute belongs to the class, not to a thread.

A ContextStore with the "thread" backend and a defaults factory does what
that __init__ does: the factory runs once in each thread, on its first
access, and that thread's values start from what it returns. Its jobs are
a tuple, and each job stores a new one instead of appending in place, as
docs/explanation/copy-on-write.md advises: a snapshot of the store, or the
copy a ContextExecutor carries to a pool task, holds the same object, and a
change in place would show there too.

A store class says the same with typed fields, and needs no factory for
values that are immutable: class Buffer(ContextStore, backend="thread")
with jobs: tuple[str, ...] = () and count: int = 0. A field that needs a
list of its own in each thread takes field(default_factory=list);
examples/typed_store.py shows one, in threads and in a ContextExecutor.

The threads run one after another here (each is joined before the next
starts), so that the output is the same on every run.

Run: python examples/per_thread_init.py
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, ClassVar

from contextual import ContextStore

if TYPE_CHECKING:
    from collections.abc import Callable


class Buffer(threading.local):
    """The slip: a class attribute, so one list for all threads."""

    jobs: ClassVar[list[str]] = []


shared = Buffer()

factory_calls = 0
factory_lock = threading.Lock()


def fresh_state() -> dict[str, Any]:
    """Return the initial values of one thread, like threading.local's __init__."""
    global factory_calls  # noqa: PLW0603 (counts the calls to show it runs once per thread)
    with factory_lock:
        factory_calls += 1
    return {"jobs": (), "count": 0}


buffer = ContextStore("examples.per_thread_init", backend="thread", defaults=fresh_state)


def with_class_attribute(worker: int) -> str:
    """Add two jobs to the thread's buffer, the buggy way."""
    for part in "ab":
        shared.jobs.append(f"job {worker}{part}")
    return f"jobs={shared.jobs}"


def with_factory(worker: int) -> str:
    """Add two jobs to the thread's buffer, from the store."""
    for part in "ab":
        buffer.jobs = (*buffer.jobs, f"job {worker}{part}")
        buffer.count += 1
    return f"jobs={buffer.jobs} count={buffer.count}"


def run_threads(work: Callable[[int], str]) -> None:
    """Run ``work`` in three threads, one at a time, and print what each saw."""
    seen: dict[int, str] = {}

    def run(worker: int) -> None:
        seen[worker] = work(worker)

    for worker in range(3):
        thread = threading.Thread(target=run, args=(worker,))
        thread.start()
        thread.join()
        print(f"  worker-{worker} sees {seen[worker]}")


def main() -> None:
    """Show the shared list, then the per-thread one."""
    print("threading.local subclass with a class-level list (the bug)")
    run_threads(with_class_attribute)
    print("ContextStore with a defaults factory (the fix)")
    run_threads(with_factory)
    print(f"the factory ran {factory_calls} times: once in each thread")
    print(f"main thread sees jobs={buffer.jobs} count={buffer.count}")
    print(f"the factory ran {factory_calls} times: main's first access ran it too")


if __name__ == "__main__":
    main()
