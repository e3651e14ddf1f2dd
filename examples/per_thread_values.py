"""Each thread sees its own value, and each thread gets its own initial state.

The classic threading.local tutorial, with a ContextStore: a store with the
"thread" backend gives every OS thread its own values, and a defaults factory
runs once per thread, the way __init__ of a threading.local subclass does.

Run: python examples/per_thread_values.py
"""

from __future__ import annotations

import random
import threading

from contextual import ContextStore

# One random generator per thread, created lazily on first use in that thread.
state = ContextStore(
    "examples.per_thread",
    backend="thread",
    defaults=lambda: {"rng": random.Random(threading.get_ident()), "handled": 0},
)


def handle(job: int, results: dict[int, tuple[str, int]], lock: threading.Lock) -> None:
    """Do one job in the current thread, recording what this thread saw."""
    state.handled += 1
    state.job = job
    with lock:
        results[job] = (threading.current_thread().name, state.job)


def main() -> None:
    """Run four jobs on four threads and show that none saw another's values."""
    results: dict[int, tuple[str, int]] = {}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=handle, args=(job, results, lock), name=f"worker-{job}")
        for job in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for job, (thread_name, seen) in sorted(results.items()):
        print(f"{thread_name} handled job {job} and saw job={seen}")
    # Nothing that the workers wrote is visible in the main thread.
    print(f"main thread: job={getattr(state, 'job', None)} handled={state.handled}")


if __name__ == "__main__":
    main()
