"""benchmarks/bench_django.py runs every case, and each stack answers the request it times.

Each case's setup sends one request through its stack first, and stops the
benchmark if the answer is not ``200 ok`` with the request ID echoed (by
the stacks with a request-ID middleware): what is timed is a request that
works. Django's settings are configured once per process, so the script
runs in processes of its own, as pyperf runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyperf

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_django.py"


def test_every_django_case_runs_once(tmp_path: Path):
    output = tmp_path / "django.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--debug-single-value", "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = {bench.get_name() for bench in pyperf.BenchmarkSuite.load(str(output)).get_benchmarks()}
    assert names == {"django.bare", "django.contextual", "django.contextual_no_user", "django.guid"}


def test_only_selects_cases_by_prefix(tmp_path: Path):
    output = tmp_path / "django.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--debug-single-value",
            "--only",
            "django.contextual",
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = {bench.get_name() for bench in pyperf.BenchmarkSuite.load(str(output)).get_benchmarks()}
    assert names == {"django.contextual", "django.contextual_no_user"}
