"""The README's quickstart runs as written and prints what the README says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _quickstart_pairs(text: str) -> list[tuple[str, str]]:
    """Each ``python`` block of the quickstart, with the ``text`` block it says it prints."""
    start = text.index("## Quickstart")
    section = text[start : text.index("\n## ", start + 1)]
    pairs = re.findall(r"```python\n(.*?)```\s+prints\s+```text\n(.*?)```", section, re.DOTALL)
    return [(code, expected) for code, expected in pairs]


def test_the_quickstart_has_two_examples_each_with_its_output():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quickstart") : text.index("## What's inside")]
    assert len(_quickstart_pairs(text)) == section.count("```python") == 2


@pytest.mark.parametrize("index", [0, 1])
def test_quickstart_prints_what_the_readme_shows(index):
    code, expected = _quickstart_pairs(README.read_text(encoding="utf-8"))[index]
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    assert result.stderr == ""


def test_readme_links_point_at_files_that_exist():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links to its docs"
    missing = [t for t in targets if "://" not in t and not (README.parent / t).exists()]
    assert missing == []


def test_readme_states_the_two_set_up_commands():
    text = README.read_text(encoding="utf-8")
    head = text[: text.index("## Why")]
    assert 'python -m pip install -e ".[test]" && python -m pytest' in head
    assert "python -m pip install -e . && python -m contextual" in head
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python -m pip install -e ".[test]" && python -m pytest\n' in ci
    assert "python -m pip install -e . && python -m contextual\n" in ci
