"""The benchmarks run: every case sets up and times one loop, and the report reads them.

Speed itself is measured by ``benchmarks/run.py``, never asserted here; this
only keeps the benchmark code from rotting as the library changes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("bench_store")
sys.modules.setdefault("report", _load("report"))
report = sys.modules["report"]


def test_case_names_are_unique():
    names = [case.name for case in bench.CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", bench.CASES, ids=lambda case: case.name)
def test_every_case_runs_one_loop(case, run_in_new_thread):
    # In a thread of its own, from an empty context: setups set values (and
    # open a request) for the whole life of a benchmark worker, which must
    # not leak into the tests that follow.
    def run_once() -> float:
        namespace = case.setup()
        timer = case.compile(list(namespace))
        elapsed: float = timer(1, *namespace.values())
        for value in namespace.values():
            shutdown = getattr(value, "shutdown", None)
            if callable(shutdown):
                shutdown()
        return elapsed

    assert run_in_new_thread(run_once) >= 0


def test_every_ratio_names_measured_cases():
    names = {case.name for case in bench.CASES}
    for ratio in (*report.TARGETS, *report.INFORMATIVE):
        assert {ratio.numerator, ratio.denominator} <= names, ratio.label


def test_the_spinner_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_spinner.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Behaviour, not speed: true however loaded the machine is.
    assert "PASS  pipe: no carriage return (0 written)" in result.stdout
    assert "PASS  pipe: no escape code (0 written)" in result.stdout
