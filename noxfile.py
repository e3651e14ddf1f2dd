"""The test matrix and the checks, one command each: ``nox -s tests`` runs 3.10-3.13."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.sessions = ["lint", "tests", "docs"]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the suite under coverage on one interpreter; 100 % line and branch coverage."""
    session.install("-e", ".[test]")
    session.env["COVERAGE_FILE"] = f".coverage.{session.python}"
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "combine")
    session.run("coverage", "report")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Ruff (lint and format) on everything, mypy --strict on src/."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "src")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the docs with warnings as errors, and run every example in them."""
    session.install("-e", ".[docs]")
    common = ["-W", "-n", "--keep-going", "-q"]
    session.run("python", "-m", "sphinx", *common, "-b", "html", "docs", "docs/_build/html")
    session.run("python", "-m", "sphinx", *common, "-b", "doctest", "docs", "docs/_build/doctest")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print the ratio table (takes a few minutes)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)
