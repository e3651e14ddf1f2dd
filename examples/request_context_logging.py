"""Logging context: every log line carries its own request's ID and user.

Passing the request ID down to every function that logs is tedious, and a
global for it mixes up concurrent requests. Open each request with
request_context() and attach a ContextFilter to the log handler: every
record gets the request_id and user_id of the request that logged it, also
from a ContextExecutor worker thread, and "-" outside any request.

The request IDs are fixed here so that the output is the same on every
run; leave request_id out and request_context() makes a fresh one.

Run: python examples/request_context_logging.py
"""

from __future__ import annotations

import logging
import sys

from contextual import ContextExecutor, ContextFilter, request_context

log = logging.getLogger("examples.shop")


def setup_logging() -> None:
    """Send the shop's records to stdout, with the request fields in each line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ContextFilter())  # on the handler, so child loggers get it too
    handler.setFormatter(logging.Formatter("[%(request_id)s user=%(user_id)s] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def load_orders() -> int:
    """Work that runs on a pool thread: it logs without being told the request."""
    log.info("worker: loading orders")
    return 3


def handle(pool: ContextExecutor, path: str) -> None:
    """Handle one request: log, hand work to the pool, log its result."""
    log.info("GET %s", path)
    count = pool.submit(load_orders).result()
    log.info("done: %d orders", count)


def main() -> None:
    """Serve three requests, one without a user, and log outside them too."""
    setup_logging()
    log.info("shop starting")
    # One worker thread serves every request: each task still sees its own.
    with ContextExecutor(max_workers=1) as pool:
        with request_context(request_id="req-1", user_id="ada"):
            handle(pool, "/orders")
        with request_context(request_id="req-2", user_id="grace"):
            handle(pool, "/orders?page=2")
        with request_context(request_id="req-3"):  # not logged in
            handle(pool, "/")
        pool.submit(load_orders).result()  # submitted outside any request
    log.info("shop stopped")


if __name__ == "__main__":
    main()
