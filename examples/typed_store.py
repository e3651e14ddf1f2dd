"""A store class: typed fields, and a list that each thread makes for itself.

The classic threading.local tutorial subclasses threading.local and sets
the start values in __init__. A store class declares them instead, the way
a dataclass declares its fields: each annotated name is a field, read and
written by attribute, with the type a type checker sees (no plugin) and the
default it starts with. A list can't be a default, since every thread
would share it; field(default_factory=...) makes one in each thread
instead, on the first access there.

1. Three threads record the pages their visitor sees: each thread gets its
   own list, and the factory runs once in each.
2. A ContextExecutor task sees its caller's values, and a list the factory
   made in the caller's thread is one of them: the task gets that list
   itself, not a new one. A write to the store stays in the task; an
   append to the list is an append to the caller's list.
3. A task handed over from a thread that never read the list carries no
   list: it makes its own.

The threads run one after another here (each is joined before the next
starts), so that the output is the same on every run.

Run: python examples/typed_store.py
"""

from __future__ import annotations

import threading

from contextual import ContextExecutor, ContextStore, field

factory_calls = 0
factory_lock = threading.Lock()


def new_page_list() -> list[str]:
    """Return an empty list of pages, counting the calls to show when it runs."""
    global factory_calls  # noqa: PLW0603 (counts the calls to show it runs once per thread)
    with factory_lock:
        factory_calls += 1
    return []


class Visit(ContextStore, backend="thread"):
    """The current thread's visit: who it is for, and the pages seen."""

    user: str | None = None
    pages: list[str] = field(default_factory=new_page_list)


visit = Visit("examples.typed_store")


def browse(worker: int) -> str:
    """Visit two pages as the thread's own user, and report what the store holds."""
    visit.user = f"user-{worker}"
    for page in ("/home", f"/item/{worker}"):
        visit.pages.append(page)
    return f"user={visit.user} pages={visit.pages}"


def checkout() -> str:
    """Report what the task sees, then write to the store and append to the list."""
    seen = f"user={visit.user} pages={visit.pages}"
    visit.user = "someone else"  # a write: the caller never sees it
    visit.pages.append("/paid")  # in place: the caller's own list
    return seen


def in_threads() -> None:
    """Part 1: three threads, one after another, each with its own list."""
    seen: dict[int, str] = {}

    def run(worker: int) -> None:
        seen[worker] = browse(worker)

    for worker in range(3):
        thread = threading.Thread(target=run, args=(worker,))
        thread.start()
        thread.join()
        print(f"  worker-{worker} sees {seen[worker]}")
    print(f"  the factory ran {factory_calls} times: once in each thread")
    print(f"  main thread sees user={visit.user} pages={visit.pages}: its first read made a list")


def in_a_pool(pool: ContextExecutor) -> None:
    """Part 2: a task submitted from the main thread, which has a list."""
    with visit.scope(user="ada"):
        visit.pages.append("/cart")
        print(f"  the task saw {pool.submit(checkout).result()}")
        print(f"  the caller sees user={visit.user} pages={visit.pages}")
    print(f"  the factory ran {factory_calls} times in all: the task made no list")


def from_a_fresh_thread(pool: ContextExecutor) -> None:
    """Part 3: a task submitted from a thread that never read the list."""
    seen: list[str] = []

    def submit() -> None:
        task_pages = pool.submit(lambda: visit.pages).result()
        seen.append(f"pages={task_pages}, the caller's: {task_pages is visit.pages}")

    thread = threading.Thread(target=submit)
    thread.start()
    thread.join()
    print(f"  the task saw {seen[0]}")


def main() -> None:
    """Show the three parts."""
    print("1. threads: each makes its own list, on its first access")
    in_threads()
    with ContextExecutor(max_workers=1) as pool:
        print("2. a ContextExecutor task gets its caller's values, the list included")
        in_a_pool(pool)
        print("3. a caller that never read the list hands over none")
        from_a_fresh_thread(pool)


if __name__ == "__main__":
    main()
