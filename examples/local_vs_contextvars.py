"""threading.local vs contextvars under asyncio: two tasks, one thread.

threading.local gives each OS thread its own values, but every task of an
event loop runs on the same thread: when one task awaits and another sets
the "current user", the first task wakes up as the wrong user. A
ContextStore with the default "context" backend is built on contextvars:
each task runs in its own copy of the context, so each keeps its own value,
and nothing a task sets reaches the code that started it.

asyncio Events order the two tasks so that the clash happens on every run.

Run: python examples/local_vs_contextvars.py
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from contextual import ContextStore

if TYPE_CHECKING:
    from collections.abc import Callable

local = threading.local()
session = ContextStore("examples.local_vs_contextvars", defaults={"user": None})


def set_local(user: str) -> None:
    """Remember the user in the thread's threading.local."""
    local.user = user


def get_local() -> str | None:
    """Read the user from the thread's threading.local."""
    return getattr(local, "user", None)


def set_stored(user: str) -> None:
    """Remember the user in the current task's context."""
    session.user = user


def get_stored() -> str | None:
    """Read the current task's user."""
    user: str | None = session.user
    return user


async def serve_two_requests(
    set_user: Callable[[str], None], get_user: Callable[[], str | None]
) -> list[str]:
    """Serve ada's and grace's requests as two tasks; return what each one saw.

    ada's task sets its user, then awaits (as it would await a database)
    while grace's task sets hers; then ada's task reads its user back.
    """
    ada_logged_in = asyncio.Event()
    grace_logged_in = asyncio.Event()

    async def ada() -> str:
        set_user("ada")
        ada_logged_in.set()
        await grace_logged_in.wait()
        return f"task for ada   runs as user={get_user()}"

    async def grace() -> str:
        await ada_logged_in.wait()
        set_user("grace")
        grace_logged_in.set()
        return f"task for grace runs as user={get_user()}"

    return list(await asyncio.gather(ada(), grace()))


async def main() -> None:
    """Show the clash with threading.local, then each task's own value."""
    for title, set_user, get_user in (
        ("threading.local (the bug)", set_local, get_local),
        ('ContextStore, "context" backend (the fix)', set_stored, get_stored),
    ):
        print(title)
        for line in await serve_two_requests(set_user, get_user):
            print(f"  {line}")
        print(f"  after the tasks, main sees user={get_user()}")


if __name__ == "__main__":
    asyncio.run(main())
