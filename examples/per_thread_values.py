"""Each thread sees its own values, even while the threads run at the same time.

The classic threading.local tutorial, with a ContextStore: a store with the
"thread" backend gives every OS thread its own values, and every thread
starts from the store's defaults.

Four workers run at once: each writes its job and counts it, waits at a
barrier until all four have written, then reads back. A module-level object
shared by the threads would by then hold whichever job was written last, and
a count of 4, in every worker; each worker reads its own job from the store,
and a count of 1. (per_thread_init.py shows a defaults factory, which runs
once in each thread, like the __init__ of a threading.local subclass.)

Run: python examples/per_thread_values.py
"""

from __future__ import annotations

import threading

from contextual import ContextStore

WORKERS = 4

state = ContextStore("examples.per_thread", backend="thread", defaults={"job": None, "handled": 0})


def handle(
    job: int,
    all_written: threading.Barrier,
    results: dict[int, tuple[str, int, int]],
    lock: threading.Lock,
) -> None:
    """Do one job in the current thread, recording what this thread read back."""
    state.job = job
    state.handled += 1
    # No worker reads back until all have written: a value that the threads
    # shared would by then hold the last job written, in every worker.
    all_written.wait()
    with lock:
        results[job] = (threading.current_thread().name, state.job, state.handled)


def main() -> None:
    """Run four jobs on four threads at once and show that none saw another's values."""
    results: dict[int, tuple[str, int, int]] = {}
    lock = threading.Lock()
    all_written = threading.Barrier(WORKERS)
    threads = [
        threading.Thread(
            target=handle, args=(job, all_written, results, lock), name=f"worker-{job}"
        )
        for job in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for job, (thread_name, seen, handled) in sorted(results.items()):
        print(
            f"{thread_name} wrote job={job}, waited for the others, "
            f"then read job={seen} handled={handled}"
        )
    # Nothing that the workers wrote is visible in the main thread.
    print(f"main thread: job={state.job} handled={state.handled}")


if __name__ == "__main__":
    main()
