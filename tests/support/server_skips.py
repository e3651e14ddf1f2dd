"""A pytest plugin: one summary line for every test skipped for lack of a server.

Without ``.ci/run``'s servers (see support.servers), about a hundred tests
skip, each with the same reason, and ``-ra`` would list them line by line,
burying every other skip reason. This plugin takes those skips out of the
short test summary and writes one line for all of them instead::

    SKIPPED [107] no server: 96 need PostgreSQL (set CONTEXTUAL_TEST_POSTGRES_DSN), 11 need ...

Other skips are listed as before, and the final count still counts every
skip. With ``CONTEXTUAL_REQUIRE_SERVERS`` set, a missing server fails its
tests instead, and nothing is folded. ``tests/conftest.py`` loads the plugin.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator

import pytest

from support.servers import SERVERS


def server_of(report: pytest.TestReport) -> str | None:
    """The server whose absence skipped this test, or None for any other outcome."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = report.longrepr[2].removeprefix("Skipped: ")
    for server, (variable, _) in SERVERS.items():
        if reason.startswith(f"no {server} server: set {variable} "):
            return server
    return None


def summary_line(counts: Counter[str]) -> str:
    """One line for all the skips of ``counts`` (``{server: skipped tests}``)."""
    needs = [
        f"{n} need {server} (set {SERVERS[server][0]})" for server, n in sorted(counts.items())
    ]
    return f"SKIPPED [{counts.total()}] no server: {', '.join(needs)}; see README.md"


def _lists_skips(config: pytest.Config) -> bool:
    """Whether the short test summary lists skips (``-r`` with ``s``, ``a`` or ``A``)."""
    shown: set[str] = set()
    for char in config.option.reportchars:
        if char == "N":
            shown.clear()
        else:
            shown.add("s" if char in "aA" else char)
    return "s" in shown and not config.option.no_summary


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> Generator[None]:
    """Hide the server-less skips from pytest's short summary; write one line for them."""
    skipped = terminalreporter.stats.get("skipped", [])
    counts = Counter(server for server in map(server_of, skipped) if server)
    if not counts or not _lists_skips(config):
        return (yield)
    # pytest writes its short test summary when the hook's wrappers unwind;
    # this wrapper is the outermost (tryfirst), so it unwinds last.
    terminalreporter.stats["skipped"] = [r for r in skipped if not server_of(r)]
    try:
        return (yield)
    finally:
        # Put them back before pytest counts the outcomes for the last line.
        terminalreporter.stats["skipped"] = skipped
        terminalreporter.write_line(summary_line(counts), yellow=True)
