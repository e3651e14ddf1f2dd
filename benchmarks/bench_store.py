"""pyperf benchmarks: ContextStore against the raw primitives and its peers.

Run it through ``run.py``, which adds ``-o`` and prints the ratio table; run
directly it is an ordinary :class:`pyperf.Runner` script and takes pyperf's
options (``--fast``, ``--rigorous``, ``-o``, ``--help``).

Every benchmark is one statement, timed by the same generated function: a
``for`` loop over ``range(loops)`` whose body is the statement written out
``UNROLL`` times. pyperf divides by ``loops * UNROLL`` (``inner_loops``), so
each value is the time of one operation plus a tenth of a loop iteration; the
``baseline.loop`` benchmark measures that share so the report can subtract it.
Generating the timer from text, as :mod:`timeit` does, is what makes the loop
overhead identical across contenders: only the statement differs.

Each benchmark runs in its own worker processes, so setup is lazy: a worker
builds (and imports) only what its own benchmark needs.
"""

from __future__ import annotations

import atexit
import contextvars
import hashlib
import os
import shutil
import sqlite3
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyperf

import contextual
from contextual import ContextStore

if TYPE_CHECKING:
    from collections.abc import Callable

UNROLL = 10
# The value every write benchmark writes. The key written and read is always
# "k"; every store, local and context also holds "a" and "b".
VALUE = 4


def source_digest() -> str:
    """Return a short hash of the contextual modules this process imported.

    Each worker reports it; if the code changes during a run (someone edits
    the tree), the runs disagree and the report says so. Files the benchmarks
    never import don't count.
    """
    digest = hashlib.sha256()
    names = sorted(n for n in sys.modules if n == "contextual" or n.startswith("contextual."))
    for name in names:
        file = getattr(sys.modules[name], "__file__", None)
        if file is not None:
            digest.update(name.encode() + b"\0" + Path(file).read_bytes())
    return digest.hexdigest()[:12]


_TIMER_TEMPLATE = """\
def timer(loops, {params}):
    it = range(loops)
    t0 = perf_counter()
    for _ in it:
{body}
    return perf_counter() - t0
"""


@dataclass(frozen=True)
class Case:
    """One benchmark: a statement, and the names it runs against."""

    name: str
    label: str
    code: str
    setup: Callable[[], dict[str, Any]]

    @property
    def shown(self) -> str:
        """The statement on one line, for the report."""
        return " ".join(line.strip() for line in self.code.splitlines())

    def compile(self, names: list[str]) -> Callable[..., float]:
        body = textwrap.indent(self.code + "\n", " " * 8) * UNROLL
        params = ", ".join(names) if names else "_unused=None"
        source = _TIMER_TEMPLATE.format(params=params, body=body.rstrip("\n"))
        namespace: dict[str, Any] = {"perf_counter": time.perf_counter}
        # Same technique as timeit: the loop is generated so that contenders
        # differ only in the statement. The source is this module's own text.
        exec(compile(source, f"<bench {self.name}>", "exec"), namespace)  # noqa: S102
        timer: Callable[..., float] = namespace["timer"]
        return timer


class LazyTimer:
    """The ``time_func`` given to pyperf: sets up on first call, then times.

    The parent process and the workers of other benchmarks never call it, so
    they never build this benchmark's objects nor import its peer library.
    Setup runs outside the timed region: the generated timer reads the clock
    itself.
    """

    __slots__ = ("_args", "_case", "_timer")

    def __init__(self, case: Case) -> None:
        self._case = case
        self._args: tuple[Any, ...] | None = None
        self._timer: Callable[..., float] | None = None

    def __call__(self, loops: int) -> float:
        if self._timer is None or self._args is None:
            # The objects stay referenced here for the life of the worker:
            # a store that died would free its name and its values.
            namespace = self._case.setup()
            self._timer = self._case.compile(list(namespace))
            self._args = tuple(namespace.values())
        return self._timer(loops, *self._args)


# -- setups --------------------------------------------------------------------


def _nothing() -> dict[str, Any]:
    return {}


def _plain_store(backend: str) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        store = _live_store(f"bench.{backend}", backend)
        store.update(a=1, b=2, k=3)
        return {"store": store, "v": VALUE}

    return setup


def _typed_store(backend: str) -> Callable[[], dict[str, Any]]:
    """A typed store class declaring ``a``, ``b`` and ``k``, holding 1, 2, 3."""

    def setup() -> dict[str, Any]:
        name = f"bench.typed.{backend}"
        if name not in _LIVE:
            # Defined here, not at import: only these workers need it, and the
            # module must import on a contextual without typed store classes.
            class BenchState(ContextStore, backend=backend):
                a: int = 0
                b: int = 0
                k: int = 0

            _LIVE[name] = BenchState(name)
        store = _LIVE[name]
        # Written, not left at the defaults: every store, local and context in
        # these benchmarks holds the values it reads.
        store.update(a=1, b=2, k=3)
        return {"store": store, "v": VALUE}

    return setup


_RAW_VAR: contextvars.ContextVar[int] = contextvars.ContextVar("bench.raw", default=0)
_RAW_LOCAL = threading.local()


class SetResetCM:
    """The hand-written ContextVar context manager a store scope competes with."""

    __slots__ = ("_token", "_value")

    def __init__(self, value: int) -> None:
        self._value = value

    def __enter__(self) -> None:
        self._token = _RAW_VAR.set(self._value)

    def __exit__(self, _type: object, _value: object, _tb: object) -> None:
        _RAW_VAR.reset(self._token)


class SaveRestoreCM:
    """The hand-written threading.local counterpart of SetResetCM."""

    __slots__ = ("_old", "_value")

    def __init__(self, value: int) -> None:
        self._value = value

    def __enter__(self) -> None:
        self._old = _RAW_LOCAL.k
        _RAW_LOCAL.k = self._value

    def __exit__(self, _type: object, _value: object, _tb: object) -> None:
        _RAW_LOCAL.k = self._old


def _raw_var() -> dict[str, Any]:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("bench.var")
    var.set(3)
    return {"var": var, "v": VALUE}


def _raw_local() -> dict[str, Any]:
    local = threading.local()
    local.a, local.b, local.k = 1, 2, 3
    return {"local": local, "v": VALUE}


def _raw_set_reset_cm() -> dict[str, Any]:
    _RAW_VAR.set(3)
    return {"CM": SetResetCM, "v": VALUE}


def _raw_save_restore_cm() -> dict[str, Any]:
    _RAW_LOCAL.a, _RAW_LOCAL.b, _RAW_LOCAL.k = 1, 2, 3
    return {"CM": SaveRestoreCM, "v": VALUE}


def _werkzeug_local() -> dict[str, Any]:
    from werkzeug.local import Local  # noqa: PLC0415 (only this worker needs it)

    local = Local()
    local.a, local.b, local.k = 1, 2, 3
    return {"local": local, "v": VALUE}


def _asgiref_local() -> dict[str, Any]:
    from asgiref.local import Local  # noqa: PLC0415 (only this worker needs it)

    local = Local()
    local.a, local.b, local.k = 1, 2, 3
    return {"local": local, "v": VALUE}


def _structlog() -> dict[str, Any]:
    from structlog import contextvars as slc  # noqa: PLC0415 (only this worker needs it)

    slc.bind_contextvars(a=1, b=2, k=3)
    return {
        "bind_contextvars": slc.bind_contextvars,
        "bound_contextvars": slc.bound_contextvars,
        "v": VALUE,
    }


# -- propagation ----------------------------------------------------------------


def _noop() -> None:
    pass


# Stores must stay alive for the whole run: a dropped store frees its name
# and no longer takes part in capture().
_LIVE: dict[str, ContextStore] = {}


def _live_store(name: str, backend: str = "context") -> ContextStore:
    """Return the store named ``name``, creating it once per process."""
    if name not in _LIVE:
        _LIVE[name] = ContextStore(name, backend=backend)  # type: ignore[arg-type]
    return _LIVE[name]


def _typical_stores() -> None:
    # What capture() carries in a typical service: a context store and a
    # thread store, a few keys each.
    _live_store("bench.prop.context").update(request_id="r-1", user="ada", tenant="t")
    _live_store("bench.prop.thread", "thread").update(conn="c-1", retries=0)


def _set_foreign_vars(count: int) -> None:
    for i in range(count):
        contextvars.ContextVar(f"bench.foreign.{i}").set(i)


def _capture(count: int) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        _typical_stores()
        _set_foreign_vars(count)
        return {"capture": contextual.capture}

    return setup


def _snapshot_run() -> dict[str, Any]:
    _typical_stores()
    _set_foreign_vars(10)
    return {"snapshot": contextual.capture(), "noop": _noop}


def _context_run() -> dict[str, Any]:
    _typical_stores()
    _set_foreign_vars(10)
    return {"ctx": contextvars.copy_context(), "noop": _noop}


def _executor(kind: str) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 (only these workers)

        _typical_stores()
        _set_foreign_vars(10)
        pool_class = contextual.ContextExecutor if kind == "context" else ThreadPoolExecutor
        pool = pool_class(max_workers=1)
        pool.submit(_noop).result()  # the worker thread exists before timing starts
        return {"pool": pool, "noop": _noop}

    return setup


# -- logging and request context -------------------------------------------------


class _NullStream:
    """A stream that drops what it is given: the handler's I/O isn't measured."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _logger(kind: str) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        import logging  # noqa: PLC0415 (only these workers)

        handler = logging.StreamHandler(_NullStream())  # type: ignore[arg-type]
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        if kind == "contextual":
            handler.addFilter(contextual.ContextFilter())
        elif kind == "trace_fields":
            from opentelemetry import context, trace  # noqa: PLC0415 (only this worker)
            from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

            from contextual.integrations.opentelemetry import trace_fields  # noqa: PLC0415

            handler.addFilter(contextual.ContextFilter(sources=[trace_fields]))
            # Inside a recording span, as in a traced request.
            span = TracerProvider().get_tracer("bench").start_span("request")
            context.attach(trace.set_span_in_context(span))
        elif kind == "asgi_correlation_id":
            from asgi_correlation_id import CorrelationIdFilter  # noqa: PLC0415

            handler.addFilter(CorrelationIdFilter())
        logger = logging.getLogger(f"bench.{kind}")
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        # Inside a request, as in a handler of a web app.
        contextual.request_context(request_id="r-1", user_id="ada").__enter__()
        return {"log": logger.info, "x": 42}

    return setup


_ID = "0f8e2bc4a3d14f0f9c1b6a5e4d3c2b1a"  # a uuid4 hex: valid for both middlewares


async def _bare_app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ARG001 (the ASGI signature)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: Any) -> None:
    pass


def _drive(coroutine: Any) -> None:
    # The apps never suspend, so one send() runs a whole request: no event
    # loop is measured, only the middleware.
    try:
        coroutine.send(None)
    except StopIteration:
        return
    msg = "the benchmark app suspended"
    raise RuntimeError(msg)


def _asgi(kind: str) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        app: Any = _bare_app
        if kind == "contextual":
            from contextual.integrations.asgi import RequestContextMiddleware  # noqa: PLC0415

            app = RequestContextMiddleware(_bare_app)
        elif kind == "asgi_correlation_id":
            from asgi_correlation_id import CorrelationIdMiddleware  # noqa: PLC0415

            app = CorrelationIdMiddleware(_bare_app)
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(b"x-request-id", _ID.encode()), (b"host", b"bench")],
        }
        return {"drive": _drive, "app": app, "scope": scope, "receive": _receive, "send": _send}

    return setup


def _request_context() -> dict[str, Any]:
    return {"request_context": contextual.request_context}


class _Database:
    """A sqlite3 file in a temporary directory: WAL, synchronous=NORMAL, 100 rows.

    The settings a threaded server would pick: commits write the WAL and
    don't wait for the disk, so the library's own cost shows rather than
    drowning in fsync. ``shutdown()`` closes everything and removes the file.
    """

    SELECT = "SELECT k, v FROM t WHERE k = ?"
    INSERT = "INSERT OR REPLACE INTO t (k, v) VALUES (?, ?)"

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="contextual-bench-")
        self.path = os.path.join(self.folder, "bench.sqlite3")  # noqa: PTH118 (sqlite3 takes str)
        from contextual.db import ThreadLocalDB  # noqa: PLC0415 (only these workers)

        self.db = ThreadLocalDB(self.path, setup=self.configure)
        self.db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        self.db.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"value {i}") for i in range(100)])
        self.raw: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
        self.configure(self.raw)
        atexit.register(self.shutdown)

    @staticmethod
    def configure(connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")

    def shutdown(self) -> None:
        if self.raw is None:
            return  # already done (atexit, after an explicit call)
        self.db.close_all()
        self.raw.close()
        self.raw = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _database(kind: str) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        database = _Database()
        names: dict[str, Any] = {"database": database, "db": database.db, "path": database.path}
        assert database.raw is not None
        names["cur"] = database.raw.cursor()
        names["connect"] = sqlite3.connect
        if kind == "select":
            names.update(SQL=_Database.SELECT, P=(42,))
        else:
            names.update(SQL=_Database.INSERT, P=(1000, "new"))
        return names

    return setup


# -- the benchmarks ------------------------------------------------------------

SCOPE = "with store.scope(k=v):\n    pass"


def _store_cases(prefix: str, store: str, setup: Callable[[], dict[str, Any]]) -> tuple[Case, ...]:
    """Item and attribute get and set of ``k`` on one store."""
    # A typed store's "k" is a declared field; a plain store's is just a key.
    typed = prefix.startswith("typed.")
    attr_get = f"{store} field attr get" if typed else f"{store} attr get (undeclared key)"
    attr_set = f"{store} field attr set" if typed else f"{store} attr set (undeclared key)"
    return (
        Case(f"{prefix}.item_get", f"{store} item get", 'store["k"]', setup),
        Case(f"{prefix}.attr_get", attr_get, "store.k", setup),
        Case(f"{prefix}.item_set", f"{store} item set", 'store["k"] = v', setup),
        Case(f"{prefix}.attr_set", attr_set, "store.k = v", setup),
    )


CASES: tuple[Case, ...] = (
    Case("baseline.loop", "loop overhead per op", "pass", _nothing),
    # contextual: a plain ContextStore("bench.context") and its "thread" twin;
    # by attribute, "k" is an undeclared key.
    *_store_cases("context", "context store", _plain_store("context")),
    Case("context.scope", "context store scope() one key", SCOPE, _plain_store("context")),
    *_store_cases("thread", "thread store", _plain_store("thread")),
    Case("thread.scope", "thread store scope() one key", SCOPE, _plain_store("thread")),
    # contextual: typed store classes declaring a, b, k, one per backend;
    # by attribute, "k" is a declared field.
    *_store_cases("typed.context", "typed context store", _typed_store("context")),
    *_store_cases("typed.thread", "typed thread store", _typed_store("thread")),
    # the primitives the backends are built on
    Case("raw.contextvar_get", "ContextVar.get", "var.get()", _raw_var),
    Case("raw.contextvar_set", "ContextVar.set", "var.set(v)", _raw_var),
    Case("raw.threadlocal_get", "threading.local attr get", "local.k", _raw_local),
    Case("raw.threadlocal_set", "threading.local attr set", "local.k = v", _raw_local),
    Case(
        "raw.set_reset_cm",
        "class CM: ContextVar set+reset",
        "with CM(v):\n    pass",
        _raw_set_reset_cm,
    ),
    Case(
        "raw.save_restore_cm",
        "class CM: threading.local save+restore",
        "with CM(v):\n    pass",
        _raw_save_restore_cm,
    ),
    # peers
    Case("werkzeug.attr_get", "werkzeug Local attr get", "local.k", _werkzeug_local),
    Case("werkzeug.attr_set", "werkzeug Local attr set", "local.k = v", _werkzeug_local),
    Case("asgiref.attr_get", "asgiref Local attr get", "local.k", _asgiref_local),
    Case("asgiref.attr_set", "asgiref Local attr set", "local.k = v", _asgiref_local),
    Case(
        "structlog.bound_contextvars",
        "structlog bound_contextvars",
        "with bound_contextvars(k=v):\n    pass",
        _structlog,
    ),
    Case(
        "structlog.bind_contextvars",
        "structlog bind_contextvars",
        "bind_contextvars(k=v)",
        _structlog,
    ),
    # propagation
    Case("propagation.capture_0", "capture(), 0 foreign ContextVars", "capture()", _capture(0)),
    Case(
        "propagation.capture_100", "capture(), 100 foreign ContextVars", "capture()", _capture(100)
    ),
    Case(
        "propagation.snapshot_run", "Snapshot.run of a no-op", "snapshot.run(noop)", _snapshot_run
    ),
    Case("raw.context_run", "Context.run of a no-op", "ctx.run(noop)", _context_run),
    Case(
        "raw.context_copy_run",
        "Context.copy().run of a no-op",
        "ctx.copy().run(noop)",
        _context_run,
    ),
    Case(
        "propagation.executor",
        "ContextExecutor submit+result",
        "pool.submit(noop).result()",
        _executor("context"),
    ),
    Case(
        "logging.no_filter",
        "log call, handler without filter",
        'log("handled %s", x)',
        _logger("none"),
    ),
    Case(
        "logging.context_filter",
        "log call, handler with ContextFilter()",
        'log("handled %s", x)',
        _logger("contextual"),
    ),
    Case(
        "logging.trace_fields",
        "log call, handler with ContextFilter(sources=[trace_fields])",
        'log("handled %s", x)',
        _logger("trace_fields"),
    ),
    Case(
        "logging.correlation_id_filter",
        "log call, handler with CorrelationIdFilter",
        'log("handled %s", x)',
        _logger("asgi_correlation_id"),
    ),
    Case("asgi.bare", "ASGI app, bare", "drive(app(scope, receive, send))", _asgi("bare")),
    Case(
        "asgi.contextual",
        "ASGI app + RequestContextMiddleware",
        "drive(app(scope, receive, send))",
        _asgi("contextual"),
    ),
    Case(
        "asgi.correlation_id",
        "ASGI app + CorrelationIdMiddleware",
        "drive(app(scope, receive, send))",
        _asgi("asgi_correlation_id"),
    ),
    Case(
        "request.context",
        "request_context() enter+exit",
        'with request_context(request_id="r-2", user_id="bob"):\n    pass',
        _request_context,
    ),
    Case(
        "raw.executor",
        "ThreadPoolExecutor submit+result",
        "pool.submit(noop).result()",
        _executor("plain"),
    ),
    Case(
        "db.execute",
        "ThreadLocalDB.execute one-row SELECT",
        "db.execute(SQL, P)",
        _database("select"),
    ),
    Case(
        "raw.sqlite_execute",
        "sqlite3 cursor one-row SELECT",
        "cur.execute(SQL, P).fetchall()",
        _database("select"),
    ),
    Case(
        "raw.sqlite_connect_per_query",
        "sqlite3 connect, one-row SELECT, close",
        "c = connect(path)\nc.execute(SQL, P).fetchall()\nc.close()",
        _database("select"),
    ),
    Case(
        "db.transaction",
        "db.transaction() with one INSERT",
        "with db.transaction():\n    db.execute(SQL, P)",
        _database("insert"),
    ),
    Case(
        "raw.sqlite_transaction",
        "sqlite3 BEGIN IMMEDIATE, INSERT, COMMIT",
        'cur.execute("BEGIN IMMEDIATE")\ncur.execute(SQL, P)\ncur.execute("COMMIT")',
        _database("insert"),
    ),
)


def _pass_only(cmd: list[str], args: Any) -> None:
    # pyperf starts workers with its own options; ours must be added back.
    for prefix in args.only:
        cmd.extend(("--only", prefix))


def run_cases(cases: tuple[Case, ...], description: str) -> None:
    """Run ``cases`` as one pyperf script: the runner every benchmark script of run.py uses."""
    runner = pyperf.Runner(add_cmdline_args=_pass_only)
    runner.argparser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PREFIX",
        help="run only the benchmarks whose names start with PREFIX (repeatable)",
    )
    args = runner.parse_args()
    runner.metadata["description"] = description
    runner.metadata["contextual_source"] = source_digest()
    runner.metadata["contextual_path"] = str(Path(contextual.__file__).parent)
    for case in cases:
        if args.only and not case.name.startswith(tuple(args.only)):
            continue
        runner.bench_time_func(
            case.name,
            LazyTimer(case),
            inner_loops=UNROLL,
            metadata={"label": case.label, "statement": case.shown},
        )


def main() -> None:
    run_cases(CASES, "contextual against the primitives and its peers")


if __name__ == "__main__":
    main()
