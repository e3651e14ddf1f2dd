"""Run every benchmark in one pyperf run, then print the ratio table.

Usage::

    python benchmarks/run.py [--fast] [-o FILE] [other pyperf options]

It runs ``bench_store.py``, then ``bench_flask.py`` and ``bench_django.py``,
which add their results to one file. The results go to
``benchmarks/results.json`` (ignored by git) unless ``-o`` says otherwise;
an old file there is replaced. Options run.py does not know, such as
``--rigorous`` or ``--processes 5``, go to pyperf unchanged.

The benchmarks import a copy of ``src/contextual`` taken when run.py starts,
so every worker process measures the same code even if the tree is edited
during the run, and the installed ``contextual`` (if any) is not what gets
measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import report

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "src" / "contextual"
# The pyperf scripts, run one after the other into one results file.
SCRIPTS = ("bench_store.py", "bench_flask.py", "bench_django.py")


def snapshot(into: Path) -> dict[str, str]:
    """Copy the package into ``into``; return an environment that imports the copy."""
    shutil.copytree(PACKAGE, into / "contextual", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(into), env.get("PYTHONPATH")]))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the contextual benchmarks and print the ratio table.",
        epilog="Unknown options are passed to pyperf (see bench_store.py --help).",
    )
    parser.add_argument(
        "--fast", action="store_true", help="pyperf --fast: fewer processes, for quick checks"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=HERE / "results.json",
        help="where pyperf writes its JSON (default: %(default)s)",
    )
    args, pyperf_args = parser.parse_known_args(argv)

    # pyperf refuses to overwrite its output file, and appending to the last
    # run's file would mix two runs in one report.
    args.output.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="contextual-bench-") as tmp:
        env = snapshot(Path(tmp))
        for script in SCRIPTS:
            # The first script writes the file, the others add to it: one report.
            write = "-o" if script == SCRIPTS[0] else "--append"
            command = [sys.executable, str(HERE / script), "--quiet", write, str(args.output)]
            # pyperf starts its workers with a cleaned environment: PYTHONPATH
            # must be passed on explicitly for them to import the snapshot.
            command += ["--inherit-environ", "PYTHONPATH"]
            if args.fast:
                command.append("--fast")
            command += pyperf_args
            print(f"$ PYTHONPATH={tmp}", " ".join(command), flush=True)
            # The command is this interpreter running a file next to this one.
            done = subprocess.run(command, env=env, check=False)  # noqa: S603
            if done.returncode != 0:
                return done.returncode
    report.report(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
