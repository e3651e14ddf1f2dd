"""The benchmarks run: every case sets up and times one loop, and the report reads them.

Speed itself is measured by ``benchmarks/run.py``, never asserted here; this
only keeps the benchmark code from rotting as the library changes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyperf
import pytest

from support.benchmarks import BENCHMARKS, load_benchmark

bench = load_benchmark("bench_store")
flask_bench = load_benchmark("bench_flask")
# Loaded, not run here: its cases configure Django, which the test project
# already has in this process (tests/integrations/test_django_bench.py runs it).
django_bench = load_benchmark("bench_django")
sys.modules.setdefault("report", load_benchmark("report"))
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
    names = {case.name for case in (*bench.CASES, *flask_bench.CASES, *django_bench.CASES)}
    for ratio in (*report.TARGETS, *report.INFORMATIVE):
        assert {ratio.numerator, ratio.denominator} <= names, ratio.label


def test_every_target_is_an_upper_bound():
    # The targets all read "contextual's time / the reference's <= bound".
    assert {target.op for target in report.TARGETS} == {"<="}
    assert all(ratio.op is None for ratio in report.INFORMATIVE)


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_undeclared_attribute_get_has_one_target_per_python(python):
    targets = [
        target
        for target in report.TARGETS
        if target.numerator == "context.attr_get" and target.applies_to(python)
    ]
    assert len(targets) == 1


def _results_file(path: Path, python_version: str, times: dict[str, float]) -> Path:
    benchmarks = [
        pyperf.Benchmark(
            [
                pyperf.Run(
                    [seconds, seconds],
                    metadata={"name": name, "python_version": python_version},
                    collect_metadata=False,
                )
            ]
        )
        for name, seconds in times.items()
    ]
    pyperf.BenchmarkSuite(benchmarks).dump(str(path))
    return path


@pytest.mark.parametrize(
    ("python_version", "judged", "not_applicable"),
    [
        ("3.11.7 (64-bit)", "werkzeug Local attr get [3.10, 3.11]", "item get [3.12, 3.13]"),
        ("3.13.0 (64-bit)", "item get [3.12, 3.13]", "werkzeug Local attr get [3.10, 3.11]"),
    ],
)
def test_the_report_judges_the_targets_of_the_python_measured(
    tmp_path, capsys, python_version, judged, not_applicable
):
    times = {"context.attr_get": 90e-9, "context.item_get": 50e-9, "werkzeug.attr_get": 100e-9}
    missed = report.report(_results_file(tmp_path / "r.json", python_version, times))
    lines = capsys.readouterr().out.splitlines()
    minor = python_version[:4]
    assert any(line.startswith(f"Targets for Python {minor}") for line in lines)
    (judged_line,) = [line for line in lines if judged in line]
    assert judged_line.endswith("PASS")  # 0.90 <= 1, and 1.80 <= 2
    (skipped_line,) = [line for line in lines if not_applicable in line]
    assert skipped_line.endswith(f"n/a on {minor}")
    assert missed == 0
    assert "Targets met: 1 of 1." in lines


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
