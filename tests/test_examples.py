"""Every script in examples/ runs, and prints what its docstring promises."""

from __future__ import annotations

import gc
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


def test_python_m_contextual_help():
    result = subprocess.run(
        [sys.executable, "-m", "contextual", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "usage: python -m contextual" in result.stdout


def test_demonstration_in_process(capsys):
    assert main([]) == 0
    first = capsys.readouterr().out
    assert "thread for ada   sees user=ada" in first
    assert "after the tasks: request_id=None" in first
    gc.collect()  # the demo's stores are gone, so their names are free again
    assert main([]) == 0
    assert capsys.readouterr().out == first
