"""The suite's summary: one line for every test skipped for lack of a server.

Runs pytest (pytester, in-process) on a file of tests that need the servers
of support.servers, with the plugin that tests/conftest.py loads.
"""

from __future__ import annotations

import pytest

from support.servers import POSTGRES_VARIABLE, REDIS_VARIABLE, REQUIRE_VARIABLE

TESTS = """
import pytest

from support.servers import postgres_dsn, redis_url


@pytest.mark.parametrize("n", range(3))
def test_needs_postgres(n):
    postgres_dsn()


@pytest.fixture(scope="module")
def broker():
    return redis_url()


def test_needs_redis(broker):
    pass


def test_needs_both():
    redis_url()
    postgres_dsn()


def test_skips_for_another_reason():
    pytest.skip("not on this platform")


def test_passes():
    pass
"""


@pytest.fixture
def no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (POSTGRES_VARIABLE, REDIS_VARIABLE, REQUIRE_VARIABLE):
        monkeypatch.delenv(variable, raising=False)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_needs_servers=TESTS)
    return pytester.runpytest("-p", "support.server_skips", "-p", "no:cacheprovider", *args)


def test_one_line_for_every_test_skipped_for_lack_of_a_server(pytester, no_servers):
    result = _run(pytester, "-ra")
    result.assert_outcomes(passed=1, skipped=6)  # every skip still counts
    lines = result.outlines
    needs = "3 need PostgreSQL (set CONTEXTUAL_TEST_POSTGRES_DSN), 2 need Redis (set "
    assert [line for line in lines if "no server" in line] == [
        f"SKIPPED [5] no server: {needs}CONTEXTUAL_TEST_REDIS_URL); see README.md"
    ]
    assert not [line for line in lines if "PostgreSQL server" in line or "Redis server" in line]
    # Other reasons are listed as pytest lists them.
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_needs_servers.py:*: not on this platform"])


def test_without_skips_in_the_short_summary_there_is_no_line_either(pytester, no_servers):
    result = _run(pytester, "-rfE")
    result.assert_outcomes(passed=1, skipped=6)
    assert not [line for line in result.outlines if "no server" in line or "SKIPPED" in line]


def test_required_servers_fail_their_tests_and_fold_nothing(pytester, no_servers, monkeypatch):
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    result = _run(pytester, "-ra")
    result.assert_outcomes(passed=1, skipped=1, failed=4, errors=1)
    assert not [line for line in result.outlines if "no server:" in line]
    result.stdout.fnmatch_lines(
        ["E *Failed: no PostgreSQL server: *; CONTEXTUAL_REQUIRE_SERVERS is set, *"]
    )
