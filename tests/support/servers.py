"""Where the tests find the real servers that ``.ci/run`` starts.

Each server's address comes from an environment variable that ``.ci/run``
exports (``.ci/start-postgres`` and ``.ci/start-redis`` print them). Without
it, the tests that need the server skip, unless ``CONTEXTUAL_REQUIRE_SERVERS``
is set, as in CI, where a missing server fails them instead. The skips are
summed up in one line of the short test summary (support.server_skips).
"""

from __future__ import annotations

import os

import pytest

POSTGRES_VARIABLE = "CONTEXTUAL_TEST_POSTGRES_DSN"
REDIS_VARIABLE = "CONTEXTUAL_TEST_REDIS_URL"
REQUIRE_VARIABLE = "CONTEXTUAL_REQUIRE_SERVERS"

#: Each server: the variable that gives its address, the script that starts one.
SERVERS = {
    "PostgreSQL": (POSTGRES_VARIABLE, ".ci/start-postgres"),
    "Redis": (REDIS_VARIABLE, ".ci/start-redis"),
}


def _address(server: str) -> str:
    variable, script = SERVERS[server]
    found = os.environ.get(variable)
    if found:
        return found
    reason = f"no {server} server: set {variable} ({script} prints one)"
    if os.environ.get(REQUIRE_VARIABLE):
        pytest.fail(f"{reason}; {REQUIRE_VARIABLE} is set, so this can't be skipped")
    pytest.skip(reason)


def postgres_dsn() -> str:
    """The test PostgreSQL server's DSN; skips (fails in CI) when there is none."""
    return _address("PostgreSQL")


def redis_url() -> str:
    """The test Redis server's URL; skips (fails in CI) when there is none."""
    return _address("Redis")
