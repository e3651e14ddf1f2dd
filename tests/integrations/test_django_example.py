"""examples/django_app.py runs, and prints what its docstring promises.

tests/package/test_examples.py names this file for it: the example needs
Django, and runs here with the Django integration's other tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_app.py"
FRESH_ID = re.compile(r"\b[0-9a-f]{32}\b")
BAD = "'<script>alert(1)</script>'"

EXPECTED = [
    "server: Django under wsgiref on 127.0.0.1, a thread per request",
    "1. ada and grace, each logged in, list their orders",
    "  [req-1 user=ada] GET /orders",
    "  [req-1 user=ada] worker: loading orders for /orders",
    "  [req-1 user=ada] 200 OK",
    "  client: /orders sent req-1, got back req-1, as the view saw it",
    "  queries for the request: 2 (the session and the user)",
    "  [req-2 user=grace] GET /orders",
    "  [req-2 user=grace] worker: loading orders for /orders",
    "  [req-2 user=grace] 200 OK",
    "  client: /orders sent req-2, got back req-2, as the view saw it",
    "  queries for the request: 2 (the session and the user)",
    "2. a request without a session",
    "  [req-3 user=-] GET /",
    "  [req-3 user=-] worker: loading orders for /",
    "  [req-3 user=-] 200 OK",
    "  client: / sent req-3, got back req-3, as the view saw it",
    "3. grace signs in during the request",
    "  [req-4 user=-] signing in grace",
    "  [req-4 user=grace] signed in",
    "  client: /sign-in sent req-4, got back req-4, as the view saw it",
    "4. ada's health check logs nothing",
    "  client: /health sent req-5, got back req-5, as the view saw it",
    "  queries for the request: 0",
    f"5. a request whose X-Request-ID is not a valid ID: {BAD}",
    (
        f"  [<new ID 1> user=-] Refused the X-Request-ID header (not a valid request ID): "
        f"{BAD}; using the new request ID <new ID 1> instead."
    ),
    "  [<new ID 1> user=-] GET /",
    "  [<new ID 1> user=-] worker: loading orders for /",
    "  [<new ID 1> user=-] 200 OK",
    "  client: / sent it, got back <new ID 1>, as the view saw it",
    "server: stopped",
]


def name_fresh_ids(text: str) -> str:
    """Replace each distinct fresh ID by <new ID n>, numbered in order of first appearance."""
    names: dict[str, str] = {}
    return FRESH_ID.sub(
        lambda match: names.setdefault(match.group(), f"<new ID {len(names) + 1}>"), text
    )


def test_the_django_example_runs_and_prints_what_it_promises():
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert name_fresh_ids(result.stdout).splitlines() == EXPECTED
    assert result.stderr == ""
