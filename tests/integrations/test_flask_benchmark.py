"""benchmarks/bench_flask.py runs: every case sets up and times one loop.

Speed itself is measured by ``benchmarks/run.py``, never asserted here; this
keeps the benchmark from rotting as Flask and the integration change.
"""

from __future__ import annotations

import pytest

from support.benchmarks import load_benchmark

# It imports bench_store.py from its own folder, as the script it is.
bench = load_benchmark("bench_flask")


def test_case_names_are_unique_and_prefixed():
    names = [case.name for case in bench.CASES]
    assert len(names) == len(set(names))
    assert all(name.startswith("flask.") for name in names)


@pytest.mark.parametrize("case", bench.CASES, ids=lambda case: case.name)
def test_every_case_runs_one_loop(case, run_in_new_thread):
    def run_once() -> float:
        namespace = case.setup()
        timer = case.compile(list(namespace))
        elapsed: float = timer(1, *namespace.values())
        return elapsed

    assert run_in_new_thread(run_once) >= 0


def test_the_installed_app_echoes_the_id_it_was_sent(run_in_new_thread):
    contextual_case = next(case for case in bench.CASES if case.name == "flask.contextual")

    def echoed() -> list[tuple[str, str]]:
        namespace = contextual_case.setup()
        sent: list[tuple[str, str]] = []
        body = namespace["app"](
            dict(namespace["environ"]), lambda _status, headers, _exc=None: sent.extend(headers)
        )
        body.close()
        return [value for name, value in sent if name == "X-Request-ID"]

    assert run_in_new_thread(echoed) == [bench._ID]
