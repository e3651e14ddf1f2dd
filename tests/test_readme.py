"""The README's quickstart runs as written and prints what the README says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _block_after(text: str, marker: str, language: str) -> str:
    start = text.index(marker)
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no {language} block after {marker!r}"
    return match.group(1)


def test_quickstart_prints_what_the_readme_shows():
    text = README.read_text(encoding="utf-8")
    code = _block_after(text, "## Quickstart", "python")
    expected = _block_after(text, "prints", "text")
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


def test_readme_states_the_two_set_up_commands():
    text = README.read_text(encoding="utf-8")
    head = text[: text.index("## Why")]
    assert 'python -m pip install -e ".[test]" && python -m pytest' in head
    assert "python -m pip install -e . && python -m contextual" in head
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python -m pip install -e ".[test]" && python -m pytest\n' in ci
