"""Print the measurements and ratio table from the JSON file of run.py's scripts.

Usage: ``python benchmarks/report.py benchmarks/results.json`` (``run.py``
calls it for you after the benchmarks).

A ratio is ``numerator / denominator`` of the mean times per operation. Its
``±`` is the two stdevs combined as independent relative errors. The ``net``
column subtracts the loop overhead (benchmark ``baseline.loop``) from both
times first; ``median`` and ``min`` divide the medians and the fastest values,
which worker processes slowed by other load on the machine move less than the
means. PASS/MISS is judged on the ratio of means; a ``*`` marks a verdict that
one of the other three ratios would flip. A target may hold on some Python
versions only: the report judges the targets for the version pyperf recorded
and marks the others ``n/a on 3.x``.
"""

from __future__ import annotations

import argparse
import math
import operator
import re
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
    """``numerator / denominator``: contextual's cost over what it is measured against."""

    label: str
    numerator: str
    denominator: str
    # A target reads "ratio <op> bound"; None for informative ratios.
    op: str | None = None
    bound: float | None = None
    # The Python versions ("3.12") a target applies to; empty: every version.
    pythons: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        """The label, with the Python versions the target applies to."""
        if not self.pythons:
            return self.label
        return f"{self.label} [{', '.join(self.pythons)}]"

    def applies_to(self, python: str | None) -> bool:
        """Whether the target holds for ``python`` ("3.11"); unknown: only if for all."""
        return not self.pythons or python in self.pythons


# Every target divides contextual's time by the time of what it is compared
# with, so a target is always "at most", and below 1 contextual is faster.
# The informative ratios mostly do too.
# "context store" / "thread store" is a plain ContextStore (backend "context"
# / "thread"), where store.k is an undeclared key; "typed ... store" is an
# instance of a typed store class declaring a, b and k, where store.k is a
# declared field.
TARGETS: tuple[Ratio, ...] = (
    # Declared fields: attribute access at item-access speed (issue 13).
    Ratio(
        "typed context store: field attr get / item get",
        "typed.context.attr_get",
        "typed.context.item_get",
        "<=",
        1.3,
    ),
    Ratio(
        "typed context store: field attr set / item set",
        "typed.context.attr_set",
        "typed.context.item_set",
        "<=",
        1.3,
    ),
    Ratio(
        "typed thread store: field attr get / item get",
        "typed.thread.attr_get",
        "typed.thread.item_get",
        "<=",
        1.3,
    ),
    Ratio(
        "typed thread store: field attr set / item set",
        "typed.thread.attr_set",
        "typed.thread.item_set",
        "<=",
        1.3,
    ),
    # Undeclared keys by attribute: through __getattr__, whose cost depends
    # on the interpreter, hence one target per version range.
    Ratio(
        "context store: undeclared attr get / item get",
        "context.attr_get",
        "context.item_get",
        "<=",
        2,
        pythons=("3.12", "3.13"),
    ),
    Ratio(
        "context store: undeclared attr get / werkzeug Local attr get",
        "context.attr_get",
        "werkzeug.attr_get",
        "<=",
        1.0,
        pythons=("3.10", "3.11"),
    ),
    # Reads against the primitive each backend wraps.
    Ratio(
        "context store item get / ContextVar.get", "context.item_get", "raw.contextvar_get", "<=", 6
    ),
    Ratio(
        "thread store item get / threading.local attr get",
        "thread.item_get",
        "raw.threadlocal_get",
        "<=",
        3,
    ),
    # Writes against the peers.
    Ratio(
        "context store item set / werkzeug Local attr set",
        "context.item_set",
        "werkzeug.attr_set",
        "<=",
        1.2,
    ),
    Ratio(
        "context store undeclared attr set / werkzeug Local attr set",
        "context.attr_set",
        "werkzeug.attr_set",
        "<=",
        1.2,
    ),
    Ratio(
        "typed context store field attr set / werkzeug Local attr set",
        "typed.context.attr_set",
        "werkzeug.attr_set",
        "<=",
        1.2,
    ),
    Ratio(
        "context store item set / structlog bind_contextvars(k=v)",
        "context.item_set",
        "structlog.bind_contextvars",
        "<=",
        1.0,
    ),
    Ratio(
        "context store undeclared attr set / structlog bind_contextvars(k=v)",
        "context.attr_set",
        "structlog.bind_contextvars",
        "<=",
        1.0,
    ),
    Ratio(
        "typed context store field attr set / structlog bind_contextvars(k=v)",
        "typed.context.attr_set",
        "structlog.bind_contextvars",
        "<=",
        1.0,
    ),
    # Scopes against the hand-written ContextVar context manager.
    Ratio(
        "context store scope(k=v) / class set+reset CM",
        "context.scope",
        "raw.set_reset_cm",
        "<=",
        2,
    ),
    Ratio(
        "request_context() enter+exit / class set+reset CM",
        "request.context",
        "raw.set_reset_cm",
        "<=",
        2.5,
    ),
    # Logging.
    Ratio(
        "log call: with ContextFilter() / without filter",
        "logging.context_filter",
        "logging.no_filter",
        "<=",
        1.05,
    ),
    Ratio(
        "log call: with ContextFilter() / with CorrelationIdFilter",
        "logging.context_filter",
        "logging.correlation_id_filter",
        "<=",
        1.0,
    ),
    # Propagation.
    Ratio(
        "ContextExecutor / ThreadPoolExecutor (submit+result)",
        "propagation.executor",
        "raw.executor",
        "<=",
        1.10,
    ),
    Ratio(
        "Snapshot.run / Context.copy().run (no-op)",
        "propagation.snapshot_run",
        "raw.context_copy_run",
        "<=",
        6,
    ),
    Ratio(
        "capture(): 100 foreign ContextVars / 0",
        "propagation.capture_100",
        "propagation.capture_0",
        "<=",
        1.2,
    ),
    # The middleware and the database helpers.
    Ratio(
        "RequestContextMiddleware / CorrelationIdMiddleware (ASGI)",
        "asgi.contextual",
        "asgi.correlation_id",
        "<=",
        1.0,
    ),
    Ratio(
        "Django RequestContextMiddleware / django-guid middleware (request)",
        "django.contextual",
        "django.guid",
        "<=",
        1.0,
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
    # Item access on a typed store costs what it costs on a plain one.
    Ratio(
        "typed context store item get / context store item get",
        "typed.context.item_get",
        "context.item_get",
    ),
    Ratio(
        "typed context store item set / context store item set",
        "typed.context.item_set",
        "context.item_set",
    ),
    Ratio(
        "typed thread store item get / thread store item get",
        "typed.thread.item_get",
        "thread.item_get",
    ),
    Ratio(
        "typed thread store item set / thread store item set",
        "typed.thread.item_set",
        "thread.item_set",
    ),
    # Undeclared keys by attribute, the rest.
    Ratio("thread store: undeclared attr get / item get", "thread.attr_get", "thread.item_get"),
    Ratio(
        "thread store: undeclared attr get / werkzeug Local attr get",
        "thread.attr_get",
        "werkzeug.attr_get",
    ),
    Ratio("context store: undeclared attr set / item set", "context.attr_set", "context.item_set"),
    Ratio("thread store: undeclared attr set / item set", "thread.attr_set", "thread.item_set"),
    # Writes against the primitives.
    Ratio("context store item set / ContextVar.set", "context.item_set", "raw.contextvar_set"),
    Ratio(
        "thread store item set / threading.local attr set",
        "thread.item_set",
        "raw.threadlocal_set",
    ),
    # Scopes.
    Ratio(
        "thread store scope(k=v) / class local save+restore CM",
        "thread.scope",
        "raw.save_restore_cm",
    ),
    Ratio("thread store scope(k=v) / class set+reset CM", "thread.scope", "raw.set_reset_cm"),
    Ratio(
        "context store scope(k=v) / structlog bound_contextvars(k=v)",
        "context.scope",
        "structlog.bound_contextvars",
    ),
    # Reads and writes against the peers.
    Ratio(
        "context store item get / werkzeug Local attr get", "context.item_get", "werkzeug.attr_get"
    ),
    Ratio(
        "context store item get / asgiref Local attr get", "context.item_get", "asgiref.attr_get"
    ),
    Ratio(
        "context store: undeclared attr get / asgiref Local attr get",
        "context.attr_get",
        "asgiref.attr_get",
    ),
    Ratio(
        "context store item set / asgiref Local attr set", "context.item_set", "asgiref.attr_set"
    ),
    # Propagation, the middleware, the database.
    Ratio("Snapshot.run / Context.run (no-op)", "propagation.snapshot_run", "raw.context_run"),
    Ratio(
        "log call with trace_id, span_id / with ContextFilter()",
        "logging.trace_fields",
        "logging.context_filter",
    ),
    Ratio(
        "log call with trace_id, span_id / without filter",
        "logging.trace_fields",
        "logging.no_filter",
    ),
    Ratio("RequestContextMiddleware / bare ASGI app", "asgi.contextual", "asgi.bare"),
    Ratio("CorrelationIdMiddleware / bare ASGI app", "asgi.correlation_id", "asgi.bare"),
    # No peer exists for Flask (asgi-correlation-id is ASGI only).
    Ratio("Flask app: install() / bare", "flask.contextual", "flask.bare"),
    Ratio(
        "Flask app: install(), update_request() in before_request / no-op before_request",
        "flask.contextual_user",
        "flask.bare_hook",
    ),
    Ratio("Django request: RequestContextMiddleware / bare", "django.contextual", "django.bare"),
    Ratio(
        "Django request: RequestContextMiddleware, GET_USER None / bare",
        "django.contextual_no_user",
        "django.bare",
    ),
    Ratio("Django request: django-guid / bare", "django.guid", "django.bare"),
    Ratio(
        "sqlite3 connect per query / db.execute (connection reuse)",
        "raw.sqlite_connect_per_query",
        "db.execute",
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


def python_versions(suite: pyperf.BenchmarkSuite) -> set[str]:
    """Return the Python versions (``"3.11"``) the benchmarks ran on, from pyperf's metadata.

    One run measures one interpreter; a file merged from several runs can
    hold more than one, and then no version-specific target applies.
    """
    found: set[str] = set()
    for bench in suite.get_benchmarks():
        version = bench.get_metadata().get("python_version")
        match = re.match(r"(\d+)\.(\d+)", str(version)) if version is not None else None
        if match is not None:
            found.add(f"{match[1]}.{match[2]}")
    return found


def load(path: Path) -> tuple[dict[str, Measurement], dict[str, object], set[str], set[str]]:
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
    return results, suite.get_metadata(), source_digests(suite), python_versions(suite)


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


def _print_ratios(
    title: str,
    ratios: tuple[Ratio, ...],
    results: dict[str, Measurement],
    python: str | None,
) -> tuple[int, int]:
    """Print one ratio table; return how many targets were judged, and how many missed.

    A target that does not apply to ``python`` (the version measured) shows
    its ratios and ``n/a on`` that version instead of a verdict.
    """
    base = results.get(BASELINE)
    overhead = base.mean if base is not None else 0.0
    width = max(len(r.shown) for r in ratios)
    print(f"\n{title}")
    header = f"  {'#':>2}  {'ratio':<{width}}  {'mean ratio':>15}"
    header += f"  {'net':>6}  {'median':>6}  {'min':>6}"
    if ratios[0].op is not None:
        header += f"  {'target':>7}  result"
    print(header)
    judged = missed = 0
    for number, ratio in enumerate(ratios, start=1):
        num, den = results.get(ratio.numerator), results.get(ratio.denominator)
        line = f"  {number:>2}  {ratio.shown:<{width}}  "
        if num is None or den is None:
            print(line + f"{'not measured':>15}")
            continue
        value, error, net, median, fastest = _ratio(num, den, overhead)
        line += f"{value:>7.2f} ± {error:>5.2f}  {net:>6.2f}  {median:>6.2f}  {fastest:>6.2f}"
        if ratio.op is not None and ratio.bound is not None:
            line += f"  {ratio.op} {ratio.bound:<4g}  "
            if not ratio.applies_to(python):
                print(line + (f"n/a on {python}" if python else "n/a: Python version unknown"))
                continue
            check = _OPS[ratio.op]
            ok = check(value, ratio.bound)
            flipped = any(check(other, ratio.bound) != ok for other in (net, median, fastest))
            line += ("PASS" if ok else "MISS") + ("*" if flipped else "")
            judged += 1
            missed += not ok
        print(line)
    return judged, missed


def report(path: Path) -> int:
    """Print the report for ``path``; return the number of missed targets."""
    results, meta, digests, pythons = load(path)
    python = next(iter(pythons)) if len(pythons) == 1 else None
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
    if len(pythons) > 1:
        print(
            "WARNING: the file holds results of several Pythons ("
            + ", ".join(sorted(pythons))
            + "): the ratios mix them, and no version-specific target applies."
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

    judged, missed = _print_ratios(
        f"Targets for Python {python or '?'}",
        TARGETS,
        results,
        python,
    )
    _print_ratios("Informative ratios", INFORMATIVE, results, python)
    print(
        "\nmean ratio = mean / mean ± combined stdev (the verdict uses it); net = the same "
        "after subtracting the\nloop overhead from both; median, min = the ratio of "
        "medians, of fastest values; * = one of\nnet, median, min would give the other "
        "verdict."
    )
    print(f"Targets met: {judged - missed} of {judged}.")
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
