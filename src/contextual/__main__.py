"""``python -m contextual``: a short demonstration of what the library does."""

from __future__ import annotations

import argparse
import asyncio
import threading

from . import ContextStore, __version__

DESCRIPTION = """\
Show, in a few lines of output, how a ContextStore keeps each thread's and
each asyncio task's values apart, and how store.scope() always restores.
Needs no set-up and leaves nothing behind."""


def _threads(store: ContextStore) -> list[str]:
    lines: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(3)

    def handle(user: str) -> None:
        store["user"] = user
        barrier.wait()  # all three have written before any reads back
        with lock:
            lines.append(f"  thread for {user:<5} sees user={store['user']}")

    threads = [threading.Thread(target=handle, args=(u,)) for u in ("ada", "grace", "linus")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(lines)


async def _tasks(store: ContextStore) -> list[str]:
    async def handle(request_id: str) -> str:
        with store.scope(request_id=request_id):
            await asyncio.sleep(0)  # let the other tasks run in between
            return f"  task {request_id} sees request_id={store['request_id']}"

    return list(await asyncio.gather(*(handle(f"req-{i}") for i in range(1, 4))))


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m contextual", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"contextual {__version__}")
    parser.parse_args(argv)

    per_thread = ContextStore("contextual.demo.thread", backend="thread")
    per_task = ContextStore("contextual.demo.task", defaults={"request_id": None})

    print(f"contextual {__version__}: context that follows the work\n")
    print('1. backend="thread": each OS thread keeps its own values')
    print("\n".join(_threads(per_thread)))
    print(f"  main thread sees user={per_thread.get('user')} (nothing leaked)\n")

    print('2. backend="context": each asyncio task keeps its own values')
    print("\n".join(asyncio.run(_tasks(per_task))))
    print(f"  after the tasks: request_id={per_task.request_id}\n")

    print("3. store.scope() restores everything on exit, even on error")
    try:
        with per_task.scope(request_id="req-9"):
            per_task["note"] = "written inside the scope"
            msg = "simulated failure"
            raise RuntimeError(msg)  # noqa: TRY301
    except RuntimeError:
        pass
    print(f"  after the failed block: {dict(per_task)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
