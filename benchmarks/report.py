"""Print the measurements and ratio table from a bench_store.py JSON file.

Usage: ``python benchmarks/report.py benchmarks/results.json`` (``run.py``
calls it for you after the benchmarks).

A ratio is ``numerator / denominator`` of the mean times per operation. Its
``±`` is the two stdevs combined as independent relative errors. The ``net``
column subtracts the loop overhead (benchmark ``baseline.loop``) from both
times first; ``median`` and ``min`` divide the medians and the fastest values,
which worker processes slowed by other load on the machine move less than the
means. PASS/MISS is judged on the ratio of means; a ``*`` marks a verdict that
one of the other three ratios would flip.
"""

from __future__ import annotations

import argparse
import math
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyperf

if TYPE_CHECKING:
    from collections.abc import Callable

BASELINE = "baseline.loop"


@dataclass(frozen=True)
class Measurement:
    name: str
    label: str
    statement: str
    mean: float
    stdev: float
    median: float
    fastest: float
    values: int


@dataclass(frozen=True)
class Ratio:
    label: str
    numerator: str
    denominator: str
    # A target reads "ratio <op> bound"; None for informative ratios.
    op: str | None = None
    bound: float | None = None


TARGETS: tuple[Ratio, ...] = (
    Ratio("context item get / ContextVar.get", "context.item_get", "raw.contextvar_get", "<=", 6),
    Ratio(
        "werkzeug Local attr get / context item get",
        "werkzeug.attr_get",
        "context.item_get",
        ">=",
        4,
    ),
    Ratio("context scope() / class set+reset CM", "context.scope", "raw.set_reset_cm", "<=", 2),
    Ratio(
        "structlog bound_contextvars / context scope()",
        "structlog.bound_contextvars",
        "context.scope",
        ">=",
        3,
    ),
    Ratio(
        "ContextExecutor / ThreadPoolExecutor submit+result",
        "propagation.executor",
        "raw.executor",
        "<=",
        1.10,
    ),
    Ratio(
        "log call with ContextFilter / without filter",
        "logging.context_filter",
        "logging.no_filter",
        "<=",
        1.05,
    ),
    Ratio(
        "CorrelationIdMiddleware / RequestContextMiddleware (ASGI)",
        "asgi.correlation_id",
        "asgi.contextual",
        ">=",
        1.0,
    ),
    Ratio(
        "capture() with 100 ContextVars / with 0",
        "propagation.capture_100",
        "propagation.capture_0",
        "<=",
        1.2,
    ),
    Ratio(
        "db.execute / sqlite3 cursor (one-row SELECT)",
        "db.execute",
        "raw.sqlite_execute",
        "<=",
        1.10,
    ),
    Ratio(
        "db.transaction() + INSERT / BEGIN+INSERT+COMMIT",
        "db.transaction",
        "raw.sqlite_transaction",
        "<=",
        1.20,
    ),
)

INFORMATIVE: tuple[Ratio, ...] = (
    Ratio(
        "connect per query / db.execute (connection reuse)",
        "raw.sqlite_connect_per_query",
        "db.execute",
    ),
    Ratio(
        "log call with ContextFilter / with CorrelationIdFilter",
        "logging.context_filter",
        "logging.correlation_id_filter",
    ),
    Ratio("request_context() / class set+reset CM", "request.context", "raw.set_reset_cm"),
    Ratio("RequestContextMiddleware / bare ASGI app", "asgi.contextual", "asgi.bare"),
    Ratio("CorrelationIdMiddleware / bare ASGI app", "asgi.correlation_id", "asgi.bare"),
    Ratio("Snapshot.run / Context.run (no-op)", "propagation.snapshot_run", "raw.context_run"),
    Ratio(
        "Snapshot.run / Context.copy().run (no-op)",
        "propagation.snapshot_run",
        "raw.context_copy_run",
    ),
    Ratio("thread item get / threading.local get", "thread.item_get", "raw.threadlocal_get"),
    Ratio("context attr get / context item get", "context.attr_get", "context.item_get"),
    Ratio("thread attr get / thread item get", "thread.attr_get", "thread.item_get"),
    Ratio("context item set / ContextVar.set", "context.item_set", "raw.contextvar_set"),
    Ratio("thread item set / threading.local set", "thread.item_set", "raw.threadlocal_set"),
    Ratio("context attr set / context item set", "context.attr_set", "context.item_set"),
    Ratio("thread attr set / thread item set", "thread.attr_set", "thread.item_set"),
    Ratio("thread scope() / class local save+restore CM", "thread.scope", "raw.save_restore_cm"),
    Ratio("thread scope() / class set+reset CM", "thread.scope", "raw.set_reset_cm"),
    Ratio("asgiref Local attr get / context item get", "asgiref.attr_get", "context.item_get"),
    Ratio("asgiref Local attr get / context attr get", "asgiref.attr_get", "context.attr_get"),
    Ratio("asgiref Local attr set / context item set", "asgiref.attr_set", "context.item_set"),
    Ratio("werkzeug Local attr get / context attr get", "werkzeug.attr_get", "context.attr_get"),
    Ratio("werkzeug Local attr set / context item set", "werkzeug.attr_set", "context.item_set"),
    Ratio(
        "structlog bind_contextvars / context item set",
        "structlog.bind_contextvars",
        "context.item_set",
    ),
)

_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


def source_digests(suite: pyperf.BenchmarkSuite) -> set[str]:
    """Return the digests of contextual's code that the worker processes reported.

    More than one means the sources changed during the run, so the numbers
    compare different code.
    """
    return {
        str(run.get_metadata()["contextual_source"])
        for bench in suite.get_benchmarks()
        for run in bench.get_runs()
        if "contextual_source" in run.get_metadata()
    }


def load(path: Path) -> tuple[dict[str, Measurement], dict[str, object], set[str]]:
    suite = pyperf.BenchmarkSuite.load(str(path))
    results: dict[str, Measurement] = {}
    for bench in suite.get_benchmarks():
        name = bench.get_name()
        meta = bench.get_metadata()
        results[name] = Measurement(
            name=name,
            label=str(meta.get("label", name)),
            statement=str(meta.get("statement", "")),
            mean=bench.mean(),
            # One value cannot have a stdev (--debug-single-value).
            stdev=bench.stdev() if bench.get_nvalue() > 1 else 0.0,
            median=bench.median(),
            fastest=min(bench.get_values()),
            values=bench.get_nvalue(),
        )
    return results, suite.get_metadata(), source_digests(suite)


def _ns(seconds: float) -> str:
    return f"{seconds * 1e9:,.1f}"


def _ratio(
    num: Measurement, den: Measurement, overhead: float
) -> tuple[float, float, float, float, float]:
    """Return the ratio of means, its error, and the net, median and fastest ratios."""
    value = num.mean / den.mean
    error = value * math.hypot(num.stdev / num.mean, den.stdev / den.mean)
    net_den = den.mean - overhead
    net = (num.mean - overhead) / net_den if net_den > 0 else math.nan
    return value, error, net, num.median / den.median, num.fastest / den.fastest


def _print_ratios(title: str, ratios: tuple[Ratio, ...], results: dict[str, Measurement]) -> int:
    """Print one ratio table; return how many targets were missed."""
    base = results.get(BASELINE)
    overhead = base.mean if base is not None else 0.0
    width = max(len(r.label) for r in ratios)
    print(f"\n{title}")
    header = f"  {'#':>2}  {'ratio':<{width}}  {'mean ratio':>15}"
    header += f"  {'net':>6}  {'median':>6}  {'min':>6}"
    if ratios[0].op is not None:
        header += f"  {'target':>7}  result"
    print(header)
    missed = 0
    for number, ratio in enumerate(ratios, start=1):
        num, den = results.get(ratio.numerator), results.get(ratio.denominator)
        line = f"  {number:>2}  {ratio.label:<{width}}  "
        if num is None or den is None:
            print(line + f"{'n/a (not measured)':>15}")
            continue
        value, error, net, median, fastest = _ratio(num, den, overhead)
        line += f"{value:>7.2f} ± {error:>5.2f}  {net:>6.2f}  {median:>6.2f}  {fastest:>6.2f}"
        if ratio.op is not None and ratio.bound is not None:
            check = _OPS[ratio.op]
            ok = check(value, ratio.bound)
            flipped = any(check(other, ratio.bound) != ok for other in (net, median, fastest))
            verdict = ("PASS" if ok else "MISS") + ("*" if flipped else "")
            missed += not ok
            line += f"  {ratio.op} {ratio.bound:<4g}  {verdict}"
        print(line)
    return missed


def report(path: Path) -> int:
    """Print the report for ``path``; return the number of missed targets."""
    results, meta, digests = load(path)
    print(f"\ncontextual benchmarks: {path}")
    print(
        f"Python {meta.get('python_version', '?')}, pyperf {meta.get('perf_version', '?')}, "
        f"{meta.get('cpu_model_name', '?')} x{meta.get('cpu_count', '?')}, "
        f"{meta.get('platform', '?')}"
    )
    if len(digests) > 1:
        print(
            f"WARNING: the contextual code changed during the run ({len(digests)} "
            "versions measured: " + ", ".join(sorted(digests)) + "); rerun on a quiet tree."
        )
    elif digests:
        print(
            f"contextual code: {next(iter(digests))} (sha256 of the imported modules), "
            f"from {meta.get('contextual_path', '?')}"
        )
    overhead = results[BASELINE].mean if BASELINE in results else 0.0
    print(
        f"Times are per operation (loop unrolled x{meta.get('inner_loops', '?')}); "
        f"loop overhead {_ns(overhead)} ns/op is included in every time."
    )

    rows = list(results.values())
    label_w = max(len(m.label) for m in rows)
    stmt_w = max(len(m.statement) for m in rows)
    print("\nMeasurements (ns per operation)")
    print(
        f"  {'benchmark':<{label_w}}  {'statement':<{stmt_w}}  "
        f"{'mean':>9}   {'stdev':>7}  {'median':>9}  {'min':>9}  values"
    )
    for m in rows:
        print(
            f"  {m.label:<{label_w}}  {m.statement:<{stmt_w}}  "
            f"{_ns(m.mean):>9} ± {_ns(m.stdev):>7}  {_ns(m.median):>9}  {_ns(m.fastest):>9}  "
            f"{m.values:>6}"
        )

    missed = _print_ratios("Targets", TARGETS, results)
    _print_ratios("Informative ratios", INFORMATIVE, results)
    print(
        "\nmean ratio = mean / mean ± combined stdev (the verdict uses it); net = the same "
        "after subtracting the\nloop overhead from both; median, min = the ratio of "
        "medians, of fastest values; * = one of\nnet, median, min would give the other "
        "verdict."
    )
    measured = sum(1 for t in TARGETS if t.numerator in results and t.denominator in results)
    print(f"Targets met: {measured - missed} of {measured}.")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pyperf JSON file written by bench_store.py")
    args = parser.parse_args(argv)
    report(args.json)
    # The report is informational: a missed target is not a failed command.
    return 0


if __name__ == "__main__":
    sys.exit(main())
