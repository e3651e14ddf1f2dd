"""The shared-global bug: one thread's "current user" shows up in another's request.

A module-level global is one value for the whole process. When two threads
serve two requests at once, the second request's user overwrites the
first's, and the first request goes on as the wrong user. Events order the
two threads here so that the clash happens on every run, not only under load.

The fix: keep the current user in a ContextStore. With the "thread" backend
(like threading.local) each thread reads back what it wrote itself, and the
main thread, which wrote nothing, still sees the default.

Run: python examples/shared_global_bug.py
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from contextual import ContextStore

if TYPE_CHECKING:
    from collections.abc import Callable

current_user: str | None = None  # the bug: one slot for every thread


def set_global(user: str) -> None:
    """Remember the user in the module-level global."""
    global current_user  # noqa: PLW0603 (the global is the bug this example shows)
    current_user = user


def get_global() -> str | None:
    """Read the user from the module-level global."""
    return current_user


# The fix: each thread gets its own user.
session = ContextStore("examples.shared_global.session", backend="thread", defaults={"user": None})


def set_stored(user: str) -> None:
    """Remember the user for the current thread."""
    session.user = user


def get_stored() -> str | None:
    """Read the current thread's user."""
    user: str | None = session.user
    return user


def serve_two_requests(
    set_user: Callable[[str], None], get_user: Callable[[], str | None]
) -> dict[str, str | None]:
    """Serve ada's and grace's requests on two threads; return who each one saw.

    ada's thread sets its user first, then waits while grace's thread sets
    hers, and only then reads the user back to do its work.
    """
    ada_logged_in = threading.Event()
    grace_logged_in = threading.Event()
    seen: dict[str, str | None] = {}

    def ada() -> None:
        set_user("ada")
        ada_logged_in.set()
        grace_logged_in.wait()
        seen["ada"] = get_user()

    def grace() -> None:
        ada_logged_in.wait()
        set_user("grace")
        grace_logged_in.set()
        seen["grace"] = get_user()

    threads = [threading.Thread(target=ada), threading.Thread(target=grace)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


def main() -> None:
    """Show the bug with the global, then the fix with the store."""
    for title, set_user, get_user in (
        ("module-level global (the bug)", set_global, get_global),
        ("ContextStore (the fix)", set_stored, get_stored),
    ):
        print(title)
        seen = serve_two_requests(set_user, get_user)
        for user in ("ada", "grace"):
            print(f"  request for {user:<5} runs as user={seen[user]}")
        print(f"  main thread sees user={get_user()}")


if __name__ == "__main__":
    main()
