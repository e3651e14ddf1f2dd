"""Pooled threads: the request ID that goes missing, and the one that lingers.

A pool's threads were started before your request, and a ThreadPoolExecutor
runs your task on one of them as it is: the task sees nothing of your
request, so its log line has no request ID; and a value one task sets on a
pooled thread is still there for the next task on that thread. A
ContextExecutor captures the caller's context at submit() and runs each task
in it, so the task sees the caller's values and leaves nothing behind.

Run: python examples/pooled_threads.py
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from contextual import ContextExecutor, ContextStore

request = ContextStore("examples.pooled.request", defaults={"request_id": None})
worker_state = ContextStore("examples.pooled.worker", backend="thread")


def task(number: int) -> str:
    """Report what this task sees, then leave a value behind on its thread."""
    leftover = worker_state.get("set_by")
    worker_state["set_by"] = f"task {number}"
    return f"task {number}: request_id={request.request_id} leftover={leftover}"


def run(pool_class: type[ThreadPoolExecutor]) -> None:
    """Submit two tasks from two requests to a one-thread pool of this class."""
    print(pool_class.__name__)
    with pool_class(max_workers=1) as pool:
        # Start the pool's thread now, outside any request, as a server's pool
        # is: where a new thread inherits its starter's context (Python 3.14,
        # sys.flags.thread_inherit_context), one that the first submit() below
        # started would begin with request 1's values.
        pool.submit(lambda: None).result()
        for number in (1, 2):
            with request.scope(request_id=f"req-{number}"):
                print(" ", pool.submit(task, number).result())


def main() -> None:
    """Show the problem with the plain pool, then the fix."""
    run(ThreadPoolExecutor)
    run(ContextExecutor)


if __name__ == "__main__":
    main()
