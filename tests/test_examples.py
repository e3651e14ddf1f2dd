"""Every script in examples/ runs, and prints what its docstring promises."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path

import pytest

from contextual.__main__ import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "pooled_threads.py": [
        "ThreadPoolExecutor",
        "  task 1: request_id=None leftover=None",
        "  task 2: request_id=None leftover=task 1",
        "ContextExecutor",
        "  task 1: request_id=req-1 leftover=None",
        "  task 2: request_id=req-2 leftover=None",
    ],
    "per_thread_values.py": [
        *(f"worker-{i} handled job {i} and saw job={i}" for i in range(4)),
        "main thread: job=None handled=0",
    ],
    "shared_global_bug.py": [
        "module-level global (the bug)",
        "  request for ada   runs as user=grace",
        "  request for grace runs as user=grace",
        "  main thread sees user=grace",
        "ContextStore (the fix)",
        "  request for ada   runs as user=ada",
        "  request for grace runs as user=grace",
        "  main thread sees user=None",
    ],
    "request_context_logging.py": [
        "[- user=-] shop starting",
        "[req-1 user=ada] GET /orders",
        "[req-1 user=ada] worker: loading orders",
        "[req-1 user=ada] done: 3 orders",
        "[req-2 user=grace] GET /orders?page=2",
        "[req-2 user=grace] worker: loading orders",
        "[req-2 user=grace] done: 3 orders",
        "[req-3 user=-] GET /",
        "[req-3 user=-] worker: loading orders",
        "[req-3 user=-] done: 3 orders",
        "[- user=-] worker: loading orders",
        "[- user=-] shop stopped",
    ],
    "db_per_thread.py": [
        "main: table created, open_connections=0",
        "thread 1: order 1, a book",
        "  on_commit: order 1 is saved",
        "thread 2: order 2, a chair, but the card is declined",
        "  rolled back: no order 2",
        "thread 3: order 3, a lamp, with gift wrap that is out of stock",
        "  savepoint rolled back: no gift wrap, the lamp stays",
        "  on_commit: order 3 is saved",
        "3 threads, 3 different connections: True",
        "while the threads run: open_connections=3",
        "after the threads exit: open_connections=0",
        "main: orders saved: [(1, 'book'), (3, 'lamp')]",
        "main: its new connection is none of theirs: True",
        "after close_all(): open_connections=0",
    ],
    "per_thread_init.py": [
        "threading.local subclass with a class-level list (the bug)",
        "  worker-0 sees jobs=['job 0a', 'job 0b']",
        "  worker-1 sees jobs=['job 0a', 'job 0b', 'job 1a', 'job 1b']",
        "  worker-2 sees jobs=['job 0a', 'job 0b', 'job 1a', 'job 1b', 'job 2a', 'job 2b']",
        "ContextStore with a defaults factory (the fix)",
        "  worker-0 sees jobs=['job 0a', 'job 0b'] count=2",
        "  worker-1 sees jobs=['job 1a', 'job 1b'] count=2",
        "  worker-2 sees jobs=['job 2a', 'job 2b'] count=2",
        "the factory ran 3 times: once in each thread",
        "main thread sees jobs=[] count=0",
        "the factory ran 4 times: main's first access ran it too",
    ],
    "local_vs_contextvars.py": [
        "threading.local (the bug)",
        "  task for ada   runs as user=grace",
        "  task for grace runs as user=grace",
        "  after the tasks, main sees user=grace",
        'ContextStore, "context" backend (the fix)',
        "  task for ada   runs as user=ada",
        "  task for grace runs as user=grace",
        "  after the tasks, main sees user=None",
    ],
}


# Examples whose output depends on time or on a terminal: their own tests run them.
TESTED_ELSEWHERE = {"spinner_supervisor.py": "tests/test_spinner.py"}


def test_every_example_has_an_expected_output():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED) | set(TESTED_ELSEWHERE)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name):
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == EXPECTED[name]
    assert result.stderr == ""


def test_python_m_contextual_runs_the_demonstration():
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "contextual"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for user in ("ada", "grace", "linus"):
        assert f"thread for {user:<5} sees user={user}" in out
    for i in (1, 2, 3):
        assert f"task req-{i} sees request_id=req-{i}" in out
    assert "main thread sees user=None" in out
    assert "after the failed block: {'request_id': None}" in out
    # Concurrent requests: each log line carries its own request, grouped.
    requests = out.split("\n4. ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert requests == [
        "  [- user=-] server starting (outside any request)",
        "  [web-1 user=ada] GET /items/book",
        "  [web-1 user=ada] worker: looked up book",
        "  [web-1 user=ada] 200 OK BOOK",
        "  [web-2 user=grace] GET /items/lamp",
        "  [web-2 user=grace] worker: looked up lamp",
        "  [web-2 user=grace] 200 OK LAMP",
        "  [web-3 user=-] GET /items/pen",
        "  [web-3 user=-] worker: looked up pen",
        "  [web-3 user=-] 200 OK PEN",
        "  [task-1 user=linus] GET /profile",
        "  [task-1 user=linus] 200 OK",
        "  [task-2 user=barbara] GET /profile",
        "  [task-2 user=barbara] 200 OK",
        "  [task-3 user=ken] GET /profile",
        "  [task-3 user=ken] 200 OK",
        "  [- user=-] server stopped: 6 requests",
        "  6 requests served, each logged under its own ID",
    ]
    # A connection per thread, one commit, one rollback, all closed.
    assert "thread A: INSERT book, committed" in out
    assert "thread B: INSERT chair, the card is declined: rolled back" in out
    assert "while the pool runs: open_connections=3" in out
    assert "after the workers exit: open_connections=1" in out
    assert "rows in the table: [(1, 'book')]" in out
    assert "after close_all(): open_connections=0" in out
    assert out.rstrip().endswith("1 transaction committed, 1 rolled back, 0 connections left open.")
    # The spinner writes to stderr only; in a pipe, two plain lines.
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0] == "Running the contextual demonstration"
    assert re.fullmatch(r"(✔|OK) Demonstration finished \([0-9.]+s\)", lines[1]), lines[1]
    assert "\x1b" not in result.stderr


def test_python_m_contextual_help():
    result = subprocess.run(
        [sys.executable, "-m", "contextual", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "usage: python -m contextual" in result.stdout
    for part in ("request_context()", "ContextFilter", "ThreadLocalDB", "Spinner", "temporary"):
        assert part in result.stdout


def test_demonstration_in_process(capsys):
    assert main([]) == 0
    first = capsys.readouterr().out
    assert "thread for ada   sees user=ada" in first
    assert "after the tasks: request_id=None" in first
    assert "after close_all(): open_connections=0" in first
    gc.collect()  # the demo's stores are gone, so their names are free again
    assert main([]) == 0
    assert capsys.readouterr().out == first
