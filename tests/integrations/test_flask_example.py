"""examples/flask_server.py runs, and prints what its docstring promises.

tests/package/test_examples.py names this file for it: the example needs
Flask and Flask-Login, and runs here with the Flask integration's other tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_server.py"
FRESH_ID = re.compile(r"\b[0-9a-f]{32}\b")
BAD = "'<script>alert(1)</script>'"

EXPECTED = [
    "server: werkzeug on 127.0.0.1, a thread per request",
    "1. ada and grace log in, each with a session cookie of her own",
    "  [req-1 user=-] POST /login/ada",
    "  [req-1 user=ada] 200 OK",
    "  client: ada   sent req-1, got back req-1, as the app saw it, user=ada",
    "  [req-2 user=-] POST /login/grace",
    "  [req-2 user=grace] 200 OK",
    "  client: grace sent req-2, got back req-2, as the app saw it, user=grace",
    "2. two requests at once: ada's slow report, and grace's cart while it runs",
    "  [req-3 user=ada] GET /report",
    "  [req-3 user=ada] worker: querying for /report",
    "  [req-4 user=grace] GET /cart",
    "  [req-4 user=grace] worker: querying for /cart",
    "  [req-4 user=grace] 200 OK",
    "  client: /cart   sent req-4, got back req-4, as the app saw it, user=grace",
    "  [req-3 user=ada] worker: the report query is done",
    "  [req-3 user=ada] 200 OK",
    "  client: /report sent req-3, got back req-3, as the app saw it, user=ada",
    f"3. nobody logged in, and an X-Request-ID that is not a valid ID: {BAD}",
    (
        f"  [<new ID 1> user=-] Refused the X-Request-ID header (not a valid request ID): "
        f"{BAD}; using the new request ID <new ID 1> instead."
    ),
    "  [<new ID 1> user=-] GET /",
    "  [<new ID 1> user=-] worker: querying for /",
    "  [<new ID 1> user=-] 200 OK",
    ("  client: / sent it, got back <new ID 1> (fresh: 32 hex digits), as the app saw it, user=-"),
    "server: stopped",
]


def name_fresh_ids(text: str) -> str:
    """Replace each distinct fresh ID by <new ID n>, numbered in order of first appearance."""
    names: dict[str, str] = {}
    return FRESH_ID.sub(
        lambda match: names.setdefault(match.group(), f"<new ID {len(names) + 1}>"), text
    )


def test_the_flask_example_runs_and_prints_what_it_promises():
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
