"""A spinner while slow work runs in the main thread: the classic "supervisor".

The supervisor shows a spinner, calls a slow function and waits for its
result. The spinner's own thread animates meanwhile, and it stops the moment
the work is done: between frames it waits on a threading.Event, not in a
sleep. The classic version of this demonstration writes that thread, the Event
and the line clearing by hand; a Spinner also hides and restores the cursor,
and keeps CI logs clean.

On a terminal you see the animation, then a final line with the time taken;
in a pipe or a CI log, one line when it starts and one when it ends. The
spinner writes to stderr, the answer goes to stdout.

Run: python examples/spinner_supervisor.py [seconds of work, default 3]
"""

from __future__ import annotations

import sys
import time

from contextual.spinner import Spinner


def slow(seconds: float) -> int:
    """Stand for slow work: a long computation, a download, a query."""
    time.sleep(seconds)
    return 42


def supervisor(seconds: float) -> int:
    """Run the slow work with a spinner, and return its result."""
    with Spinner("thinking!"):
        return slow(seconds)


def main(argv: list[str]) -> None:
    """Run the supervisor and print the answer."""
    seconds = float(argv[0]) if argv else 3.0
    print(f"Answer: {supervisor(seconds)}")


if __name__ == "__main__":
    main(sys.argv[1:])
