"""Every script in examples/ runs, and prints what its docstring promises."""

from __future__ import annotations

import gc
import os
import re
import site
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contextual.__main__ import main
from support.servers import redis_url

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# Under pytest's timeout, so that a stuck script fails with what it printed
# rather than with the test, and over the examples' own 20 s.
RUN_TIMEOUT = 40


def fresh_id_requests(worker_line: str) -> list[str]:
    """What the web examples print for a request without an ID, then one with a bad ID."""
    bad = "'<script>alert(1)</script>'"
    lines = ["2. a request without an X-Request-ID"]
    lines += [f"  [<new ID 1> user=-] {line}" for line in ("GET /", worker_line, "200 OK")]
    lines += [
        "  client: / sent none, got back <new ID 1> (fresh: 32 hex digits), as the app saw it",
        f"3. a request whose X-Request-ID is not a valid ID: {bad}",
        (
            f"  [<new ID 2> user=-] Refused the X-Request-ID header (not a valid request ID): "
            f"{bad}; using the new request ID <new ID 2> instead."
        ),
    ]
    lines += [f"  [<new ID 2> user=-] {line}" for line in ("GET /", worker_line, "200 OK")]
    lines.append(
        "  client: / sent it, got back <new ID 2> (fresh: 32 hex digits), as the app saw it"
    )
    return lines


EXPECTED = {
    "opentelemetry_logs.py": [
        "[- - -] shop starting",
        "[4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 req-1] GET /orders",
        "[4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 req-1] thread: loading orders",
        (
            "[4bf92f3577b34da6a3ce929d0e0e4736 00000000000000a1 req-1] process: rendering the "
            "invoice for order 1"
        ),
        "  the process's span 00000000000000a1 is a child of 00f067aa0ba902b7: True",
        (
            "  an outgoing request carries traceparent: "
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ),
        "[- - -] shop stopped",
    ],
    "pooled_threads.py": [
        "ThreadPoolExecutor",
        "  task 1: request_id=None leftover=None",
        "  task 2: request_id=None leftover=task 1",
        "ContextExecutor",
        "  task 1: request_id=req-1 leftover=None",
        "  task 2: request_id=req-2 leftover=None",
    ],
    "per_thread_values.py": [
        *(
            f"worker-{i} wrote job={i}, waited for the others, then read job={i} handled=1"
            for i in range(4)
        ),
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
        "  worker-0 sees jobs=('job 0a', 'job 0b') count=2",
        "  worker-1 sees jobs=('job 1a', 'job 1b') count=2",
        "  worker-2 sees jobs=('job 2a', 'job 2b') count=2",
        "the factory ran 3 times: once in each thread",
        "main thread sees jobs=() count=0",
        "the factory ran 4 times: main's first access ran it too",
    ],
    "typed_store.py": [
        "1. threads: each makes its own list, on its first access",
        "  worker-0 sees user=user-0 pages=['/home', '/item/0']",
        "  worker-1 sees user=user-1 pages=['/home', '/item/1']",
        "  worker-2 sees user=user-2 pages=['/home', '/item/2']",
        "  the factory ran 3 times: once in each thread",
        "  main thread sees user=None pages=[]: its first read made a list",
        "2. a ContextExecutor task gets its caller's values, the list included",
        "  the task saw user=ada pages=['/cart']",
        "  the caller sees user=ada pages=['/cart', '/paid']",
        "  the factory ran 4 times in all: the task made no list",
        "3. a caller that never read the list hands over none",
        "  the task saw pages=[], the caller's: False",
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
    "wsgi_server.py": [
        "server: wsgiref on 127.0.0.1, a thread per request",
        "1. two requests at once: ada's slow report, and grace's cart while it runs",
        "  [req-1 user=ada] GET /report",
        "  [req-1 user=ada] worker: querying for /report",
        "  [req-2 user=grace] GET /cart",
        "  [req-2 user=grace] worker: querying for /cart",
        "  [req-2 user=grace] 200 OK",
        "  client: /cart   sent req-2, got back req-2, as the app saw it",
        "  [req-1 user=ada] worker: the report query is done",
        "  [req-1 user=ada] 200 OK",
        "  client: /report sent req-1, got back req-1, as the app saw it",
        *fresh_id_requests("worker: querying for /"),
        "server: stopped",
    ],
    "asgi_server.py": [
        "  [- user=-] shop starting",
        "server: uvicorn on 127.0.0.1, one event loop",
        "1. two requests at once on one event loop: ada's report, and grace's cart",
        "  [req-1 user=ada] GET /report",
        "  [req-1 user=ada] worker thread: querying for /report",
        "  [req-2 user=grace] GET /cart",
        "  [req-2 user=grace] worker thread: querying for /cart",
        "  [req-2 user=grace] 200 OK",
        "  client: /cart   sent req-2, got back req-2, as the app saw it",
        "  [req-1 user=ada] the pricing service answered",
        "  [req-1 user=ada] 200 OK",
        "  client: /report sent req-1, got back req-1, as the app saw it",
        *fresh_id_requests("worker thread: querying for /"),
        "  [- user=-] shop stopping",
        "server: stopped",
    ],
    "transaction_scope.py": [
        "outside any scope: tm.current=None",
        "1. an order that commits: the hooks run in the order they were added",
        "  reserve book (depth 0)",
        "  reserve lamp (depth 0)",
        "  on_commit: ship book",
        "  on_commit: ship lamp",
        "  on_commit: e-mail the receipt",
        "  stock: {'book': 2, 'lamp': 1, 'gift wrap': 0}",
        "2. an order whose card is declined: rollback hooks run newest first",
        "  reserve book (depth 0)",
        "  reserve lamp (depth 0)",
        "  on_rollback: release lamp",
        "  on_rollback: release book",
        "  the card was declined; nothing ships",
        "  stock: {'book': 2, 'lamp': 1, 'gift wrap': 0}",
        "3. a nested scope fails and rolls back alone; the order still commits",
        "  reserve book (depth 0)",
        "  reserve lamp (depth 1)",
        "  on_rollback: release lamp",
        "  out of stock: gift wrap; the order goes on without the lamp and its wrap",
        "  current is the order again: True",
        "  another thread sees tm.current=None",
        "  on_commit: ship book",
        "  <Transaction: transaction, committed>; stock: {'book': 1, 'lamp': 1, 'gift wrap': 0}",
        "4. a durable scope refuses to run inside another one",
        (
            "  TransactionError: a durable transaction can't start inside another one "
            "(<Transaction: transaction, open>): its commit would not be final. Move the block "
            "out of the enclosing transaction, or drop durable=True."
        ),
        "outside any scope: tm.current=None",
    ],
}


# Examples that need a server: a test of their own below runs them.
NEEDS_A_SERVER = {
    "celery_tasks.py": [
        "worker: started, on a queue of its own",
        "1. two requests publish a task each; the checkout's card is not allowed to travel",
        "  published celery_tasks.send_receipt(1,)",
        "  published celery_tasks.send_receipt(2,)",
        "  order 1: the task saw request_id=req-1 user=ada card=None",
        "  order 2: the task saw request_id=req-2 user=grace card=None",
        "2. enqueue_on_commit in a transaction that commits",
        "  enqueued order 3: nothing is published before the commit",
        "  published celery_tasks.send_receipt(3,)",
        "  committed",
        "  order 3: the task saw request_id=req-3 user=ada card=None",
        "3. enqueue_on_commit in a transaction that rolls back",
        "  enqueued order 4",
        "  rolled back: order 4 is never published",
        "4. outside any request, as a scheduler publishes: a new request ID, carried on",
        "  published celery_tasks.resend_failed_receipts()",
        "  the job ran in request <new request ID> and sent <receipt 5>",
        "  order 5: the task saw request_id=<new request ID> user=None card=None",
        "worker: stopped, exit code 0; its log lines from the tasks:",
        (
            "  [req-1 user=ada task=<receipt 1> parent=-] "
            "celery_tasks: sending the receipt for order 1"
        ),
        (
            "  [req-2 user=grace task=<receipt 2> parent=-] "
            "celery_tasks: sending the receipt for order 2"
        ),
        (
            "  [req-3 user=ada task=<receipt 3> parent=-] "
            "celery_tasks: sending the receipt for order 3"
        ),
        (
            "  [<new request ID> user=- task=<resend> parent=-] celery_tasks: resending the "
            "receipts that failed"
        ),
        (
            "  [<new request ID> user=- task=<receipt 5> parent=<resend>] celery_tasks: sending "
            "the receipt for order 5"
        ),
    ],
}

# Examples whose output depends on time or on a terminal: their own tests run them.
TESTED_ELSEWHERE = {
    "django_app.py": "tests/integrations/test_django_example.py",
    "flask_server.py": "tests/integrations/test_flask_example.py",
    "spinner_supervisor.py": "tests/spinner/test_spinner.py",
}

# Examples that print the fresh request IDs they make: new on every run.
PRINTS_FRESH_IDS = {"wsgi_server.py", "asgi_server.py"}
FRESH_ID = re.compile(r"\b[0-9a-f]{32}\b")


def name_fresh_ids(text: str) -> str:
    """Replace each distinct fresh ID by <new ID n>, numbered in order of first appearance."""
    names: dict[str, str] = {}
    return FRESH_ID.sub(
        lambda match: names.setdefault(match.group(), f"<new ID {len(names) + 1}>"), text
    )


def test_every_example_has_an_expected_output():
    names = {p.name for p in EXAMPLES.glob("*.py")}
    assert names == set(EXPECTED) | set(NEEDS_A_SERVER) | set(TESTED_ELSEWHERE)


@pytest.mark.parametrize("name", sorted(TESTED_ELSEWHERE))
def test_an_example_tested_elsewhere_is_named_in_its_test_file(name):
    test_file = ROOT / TESTED_ELSEWHERE[name]
    assert test_file.is_file()
    assert name in test_file.read_text(encoding="utf-8")


def test_subprocess_timeouts_fire_before_pytest_times_the_test_out(pytestconfig):
    assert float(pytestconfig.getini("timeout")) > RUN_TIMEOUT


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name):
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The same fresh ID in a request's log lines and in its response gets the
    # same name, so the comparison still checks that they match.
    out = name_fresh_ids(result.stdout) if name in PRINTS_FRESH_IDS else result.stdout
    assert out.splitlines() == EXPECTED[name]
    assert result.stderr == ""


def _run_celery_example(python: str, script: str, **options: Any) -> None:
    """Run the Celery example against the test Redis; check all it prints."""
    result = subprocess.run(
        [python, "-W", "error", script, redis_url()],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        **options,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == NEEDS_A_SERVER["celery_tasks.py"]
    assert result.stderr == ""


@pytest.mark.timeout(120)
def test_celery_example_runs_a_real_worker():
    _run_celery_example(sys.executable, str(EXAMPLES / "celery_tasks.py"))


@pytest.mark.timeout(120)
def test_celery_example_runs_from_a_checkout_with_a_relative_pythonpath():
    # The README's way: from the repository root, with PYTHONPATH=src, while
    # the worker runs in examples/. The base interpreter, with this
    # environment's packages on PYTHONPATH, reads none of their .pth files,
    # so an editable install of contextual is invisible there: the script
    # and its worker find contextual only through that relative "src".
    python = getattr(sys, "_base_executable", sys.executable)
    pythonpath = os.pathsep.join(["src", *site.getsitepackages()])
    _run_celery_example(
        python,
        "examples/celery_tasks.py",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )


def test_celery_example_says_when_the_broker_is_unreachable():
    # A bound socket that doesn't listen: connecting to its port is refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
        result = subprocess.run(
            [sys.executable, "-W", "error", str(EXAMPLES / "celery_tasks.py"), url],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"Can't reach the broker at {url}: ")
    assert "Start a Redis server, or pass the URL of one" in result.stderr


def test_python_m_contextual_runs_the_demonstration():
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "contextual"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
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
        "  (grouped by request; they ran interleaved)",
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
    assert out.rstrip().endswith(
        "transactions: 1 committed, 1 rolled back; connections left open: 0."
    )
    # The spinner writes to stderr only; in a pipe, two plain lines.
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0] == "Running the contextual demonstration"
    assert re.fullmatch(r"(✔|OK) Demonstration finished \([0-9.]+s\)", lines[1]), lines[1]
    assert "\x1b" not in result.stderr


def test_python_m_contextual_leaves_no_file_behind(tmp_path):
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "contextual"],
        cwd=cwd,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(cwd.iterdir()) == []
    assert list(tmp.iterdir()) == []


def test_python_m_contextual_help():
    result = subprocess.run(
        [sys.executable, "-m", "contextual", "--help"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
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
    assert "  (grouped by request; they ran interleaved)\n" in first
    assert first.endswith("transactions: 1 committed, 1 rolled back; connections left open: 0.\n")
    gc.collect()  # the demo's stores are gone, so their names are free again
    assert main([]) == 0
    assert capsys.readouterr().out == first
