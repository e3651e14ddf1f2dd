"""Spinner benchmark: contextual.spinner.Spinner against yaspin, halo and rich's status.

Usage::

    python benchmarks/bench_spinner.py [--quick] [--seconds S] [--spins K] [--stops N]
                                       [--show-output]

Every measurement runs in a child process of its own (this script, with
``--child``), whose stdout and stderr are either a pseudo-terminal (80x24, read
by this process as a terminal would be) or a pipe. Each contender draws the
same braille frames every 100 ms, to stderr, with the same text, while the
main thread sleeps, and ends with the same mark, ``✔``. Colour is off for all
of them: the children run with ``NO_COLOR=1``, and the peers are told so
besides (yaspin has none by default, halo gets ``color=None``, rich a
``Console(no_color=True)``), so that bytes and escapes compare like for like;
the ``colour`` column counts the escape codes that set a colour all the same.
Each child gets the same environment: ``TERM=xterm-256color``, and none of
``FORCE_COLOR``, ``CLICOLOR_FORCE``, ``COLUMNS``, ``CI`` and the like that
would change what a contender writes. Three things are measured:

CPU
    ``CPU ms/s``: the child's own CPU time (user + system, all threads, from
    ``getrusage(RUSAGE_SELF)``) from just after ``start()`` returns to just
    before the spin ends, divided by the wall time in between (S seconds):
    the cost of spinning, per second. The median of K spins. ``start+end``
    is the CPU of the first ``start()`` and of the end, in ms; ``total`` the
    whole child's CPU, startup and imports included, as ``os.wait4`` reports
    it.
stop latency
    ``time.perf_counter()`` around ``stop()``, N times, each after a spin of
    a random 50 to 150 ms (a random phase within the frame interval).
output
    What the child wrote over one spin: frames (a braille dot and the text,
    so start and final lines don't count), bytes, carriage returns, escape
    characters, and escape codes that set a colour.

The spin ends with each library's success call and a ``✔`` (``ok()`` for
contextual, ``ok("✔")`` for yaspin, ``stop_and_persist(symbol="✔")`` for
halo, whose ``succeed()`` colours its mark; rich has none, so ``stop()``).
Two more contenders give the floor: ``baseline`` only sleeps, and
``bare-loop`` is the least an Event-driven spinner can do, a thread that
waits on an Event and writes one frame per wake. The spins run in rounds,
every contender once per round, so that a change in the machine's load falls
on all of them alike.

In a pipe, contextual starts no thread and writes two plain lines: its CPU
and stop() times there measure that behaviour, not a faster loop. So the
pipe also runs ``ctx-enabled``, contextual with ``enabled=True``, which
animates there as yaspin and halo do (rich, in a pipe, draws nothing): that
is the like-for-like cost of its loop in a pipe.

Targets, each marked PASS or MISS: contextual's CPU per second of spinning
at most the best peer's, on the terminal and in the pipe; its median stop
latency under 2 ms on both; no ``\\r`` and no escape code in the pipe. The
pipe's CPU and stop targets are marked as behaviour. The peers, the
baseline and ctx-enabled give a context, not a target.

``--quick`` makes every duration short and every count small, runs the
children side by side, and skips peers that are not installed (saying so):
it only checks that the benchmark still runs, for the test suite, and
checks no speed target. A full run needs the peers (``pip install -e
".[bench]"``) and takes about three minutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import importlib.util
import json
import os
import platform
import pty
import random
import re
import resource
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

TEXT = "Working on it"
DOTS = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
INTERVAL = 0.1
CR, ESC = b"\r", b"\x1b"
# A frame as any contender draws it: a dot, maybe the escape codes of its
# colour, a space and the text. Start and final lines have no dot.
FRAME = re.compile(f"[{DOTS}](?:\x1b\\[[0-9;]*m)* {re.escape(TEXT)}".encode())
SGR = re.compile(rb"\x1b\[([0-9;]*)m")
# SGR parameters that set a foreground or background colour.
COLOURS = {*range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)}
# What the children's environment never has: it would change what they write.
CLEARED_ENVIRONMENT = (
    "ANSI_COLORS_DISABLED",
    "CI",
    "CLICOLOR",
    "CLICOLOR_FORCE",
    "COLORTERM",
    "COLUMNS",
    "FORCE_COLOR",
    "GITHUB_ACTIONS",
    "LINES",
    "NO_COLOR",
    "PY_COLORS",
    "TERM",
    "TERM_PROGRAM",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
)

# contender -> the module it needs (None: the standard library and contextual).
CONTENDERS: dict[str, str | None] = {
    "baseline": None,
    "bare-loop": None,
    "contextual": None,
    "ctx-enabled": None,  # contextual with enabled=True: animates in a pipe too
    "yaspin": "yaspin",
    "halo": "halo",
    "rich": "rich",
}
PEERS = ["yaspin", "halo", "rich"]
STREAMS = ["terminal", "pipe"]
# On a terminal ctx-enabled is contextual itself.
ONLY_ON = {"ctx-enabled": "pipe"}


# -- the child: one contender, one task ----------------------------------------


class _BareLoop:
    """The least an Event-driven spinner does: wait, write one frame, repeat."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.thread = threading.Thread(target=self.spin, daemon=True)

    def spin(self) -> None:
        index = 0
        while not self.event.wait(INTERVAL):
            index += 1
            sys.stderr.write(f"\r{DOTS[index % len(DOTS)]} {TEXT}\x1b[K")
            sys.stderr.flush()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.event.set()
        self.thread.join()


class _Adapter:
    """load(), start(), stop() and end() (the success ending) of one contender."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.make: Callable[[], Any] = lambda: None
        self.spinner: Any = None

    def load(self) -> None:
        """Import what the contender needs, so that the measured window doesn't."""
        if self.name == "bare-loop":
            self.make = _BareLoop
        elif self.name == "contextual":
            from contextual.spinner import Spinner  # noqa: PLC0415

            self.make = lambda: Spinner(TEXT, interval=INTERVAL)
        elif self.name == "ctx-enabled":
            from contextual.spinner import Spinner  # noqa: PLC0415

            self.make = lambda: Spinner(TEXT, interval=INTERVAL, enabled=True)
        elif self.name == "yaspin":
            from yaspin import yaspin  # noqa: PLC0415
            from yaspin.core import Spinner as Frames  # noqa: PLC0415

            frames = Frames(DOTS, round(INTERVAL * 1000))
            self.make = lambda: yaspin(frames, text=TEXT, stream=sys.stderr)
        elif self.name == "halo":
            from halo import Halo  # noqa: PLC0415

            frames = {"interval": round(INTERVAL * 1000), "frames": list(DOTS)}
            self.make = lambda: Halo(text=TEXT, spinner=frames, stream=sys.stderr, color=None)
        elif self.name == "rich":
            from rich.console import Console  # noqa: PLC0415

            # rich's "dots" are the same frames at 80 ms; speed 0.8 makes 100 ms.
            self.make = lambda: Console(stderr=True, no_color=True).status(
                TEXT, spinner="dots", speed=0.8, refresh_per_second=1 / INTERVAL
            )

    def start(self) -> None:
        self.spinner = self.make()
        if self.spinner is not None:
            self.spinner.start()

    def stop(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()

    def end(self) -> None:
        if self.name in {"contextual", "ctx-enabled"}:
            self.spinner.ok()
        elif self.name == "yaspin":
            self.spinner.ok("✔")
        elif self.name == "halo":
            # succeed() would colour the mark.
            self.spinner.stop_and_persist(symbol="✔")
        else:
            self.stop()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(name: str, task: str, seconds: float, stops: int, result_fd: int) -> None:
    """Run one task of one contender and write its result, as JSON, to ``result_fd``."""
    adapter = _Adapter(name)
    adapter.load()
    if task == "spin":
        before_start = _cpu()
        adapter.start()
        started, wall = _cpu(), time.perf_counter()
        time.sleep(seconds)
        ending, wall = _cpu(), time.perf_counter() - wall
        adapter.end()
        result: dict[str, Any] = {
            "spinning": ending - started,
            "wall": wall,
            "start_end": (started - before_start) + (_cpu() - ending),
        }
    else:
        latencies = []
        rng = random.Random(1)  # noqa: S311 (the same phases for every contender)
        for _ in range(stops):
            adapter.start()
            time.sleep(rng.uniform(0.5, 1.5) * INTERVAL)
            before = time.perf_counter()
            adapter.stop()
            latencies.append(time.perf_counter() - before)
        result = {"latencies": latencies}
    sys.stderr.flush()
    sys.stdout.flush()
    with os.fdopen(result_fd, "w") as out:
        json.dump(result, out)


# -- the parent: run children on a terminal or a pipe ------------------------------


@dataclass
class Run:
    """What one child run measured."""

    output: bytes
    result: dict[str, Any]
    total_cpu: float  # seconds, the whole child process, as os.wait4 reports it


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's last writer closed it
            return
        if not data:
            return
        into += data


def run_child(name: str, task: str, stream: str, args: argparse.Namespace) -> Run:
    """Run ``--child`` for one contender and task with stdout and stderr on ``stream``."""
    if stream == "terminal":
        reader_fd, writer_fd = pty.openpty()
        tty.setraw(writer_fd)  # the bytes as written: no "\n" to "\r\n"
        fcntl.ioctl(writer_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    else:
        reader_fd, writer_fd = os.pipe()
    result_read, result_write = os.pipe()
    # The tree's contextual, not an installed one; the same terminal type
    # for all, and colour off for all.
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENVIRONMENT}
    env.update(TERM="xterm-256color", NO_COLOR="1", PYTHONPATH=path)
    command = [sys.executable, __file__, "--child", name, task]
    command += [str(args.seconds), str(args.stops), str(result_write)]
    output = bytearray()
    reader = threading.Thread(target=_drain, args=(reader_fd, output))
    reader.start()
    process = subprocess.Popen(  # noqa: S603 (this very script)
        command,
        stdin=subprocess.DEVNULL,
        stdout=writer_fd,
        stderr=writer_fd,
        pass_fds=(result_write,),
        env=env,
    )
    os.close(writer_fd)
    os.close(result_write)
    with os.fdopen(result_read) as results:
        raw = results.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    os.close(reader_fd)
    if process.returncode != 0 or not raw:
        msg = (
            f"{name} {task} on a {stream} failed (exit {process.returncode}): "
            f"{bytes(output)[-2000:]!r}"
        )
        raise RuntimeError(msg)
    return Run(bytes(output), json.loads(raw), usage.ru_utime + usage.ru_stime)


# -- measure and report ------------------------------------------------------------


@dataclass
class Measured:
    """One contender on one stream."""

    cpu_per_second: float  # ms of CPU per second of spinning (median of the spins)
    start_end: float  # ms of CPU in the first start() and the end (median)
    total_cpu: float  # ms, the whole child process (median of the spins)
    stop_median: float  # ms
    stop_max: float  # ms
    output: bytes  # of the first spin


def measured(spins: list[Run], stops: Run) -> Measured:
    """Sum up the runs of one contender on one stream."""
    latencies = [1000 * t for t in stops.result["latencies"]]
    return Measured(
        cpu_per_second=statistics.median(
            1000 * run.result["spinning"] / run.result["wall"] for run in spins
        ),
        start_end=statistics.median(1000 * run.result["start_end"] for run in spins),
        total_cpu=statistics.median(1000 * run.total_cpu for run in spins),
        stop_median=statistics.median(latencies),
        stop_max=max(latencies),
        output=spins[0].output,
    )


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.1f}" if denominator > 0 else "inf"


def _target(label: str, passed: bool) -> bool:
    print(f"  {'PASS' if passed else 'MISS'}  {label}")
    return passed


def frames_in(output: bytes) -> int:
    """Count the frames drawn: a dot and the text; start and final lines have no dot."""
    return len(FRAME.findall(output))


def colours_in(output: bytes) -> int:
    """Count the escape codes that set a colour (not those that reset one)."""
    return sum(
        1
        for params in SGR.findall(output)
        if any(p.isdigit() and int(p) in COLOURS for p in params.split(b";"))
    )


def runs_on(name: str, stream: str) -> bool:
    """Whether ``name`` runs on ``stream``: every contender does, but for ONLY_ON."""
    return ONLY_ON.get(name, stream) == stream


def print_tables(results: dict[tuple[str, str], Measured], names: list[str]) -> None:
    """Print one table per stream."""
    header = (
        f"{'CPU ms/s':>9} {'start+end':>9} {'total ms':>9} {'stop med ms':>12} "
        f"{'stop max ms':>12} {'frames':>6} {'bytes':>6} {'CR':>4} {'ESC':>4} {'colour':>6}"
    )
    for stream in STREAMS:
        print()
        print(f"{'on a ' + stream:<12} {header}")
        for name in names:
            if not runs_on(name, stream):
                continue
            m = results[name, stream]
            print(
                f"{name:<12} {m.cpu_per_second:>9.3f} {m.start_end:>9.2f} {m.total_cpu:>9.1f} "
                f"{m.stop_median:>12.3f} {m.stop_max:>12.3f} {frames_in(m.output):>6} "
                f"{len(m.output):>6} {m.output.count(CR):>4} {m.output.count(ESC):>4} "
                f"{colours_in(m.output):>6}"
            )
    print(
        "  In a pipe contextual starts no thread and writes two plain lines: its CPU and\n"
        "  stop() there are that behaviour. ctx-enabled (enabled=True) animates in the pipe\n"
        "  as yaspin and halo do: the like-for-like cost of the loop. rich draws nothing there."
    )


def print_ratios(results: dict[tuple[str, str], Measured], names: list[str]) -> None:
    """Print each peer's CPU, stop latency and bytes over contextual's."""
    peers = [name for name in names if name in PEERS]
    if not peers:
        return
    print()
    print("Ratios, peer / contextual (above 1: contextual spends or writes less)")
    pairs = [(stream, "contextual") for stream in STREAMS]
    if "ctx-enabled" in names:
        pairs.append(("pipe", "ctx-enabled"))
    for stream, ours_name in pairs:
        ours = results[ours_name, stream]
        label = f"{stream} ({ours_name})"
        for peer in peers:
            theirs = results[peer, stream]
            cpu = _ratio(theirs.cpu_per_second, ours.cpu_per_second)
            stop = _ratio(theirs.stop_median, ours.stop_median)
            size = _ratio(len(theirs.output), len(ours.output))
            print(f"  {label:<22} {peer:<7} CPU {cpu:>7}   stop median {stop:>7}   bytes {size:>7}")


def check_targets(results: dict[tuple[str, str], Measured], names: list[str]) -> bool:
    """Print each target, PASS or MISS; return whether all passed."""
    peers = [name for name in names if name in PEERS]
    print()
    print("Targets")
    passed = True
    for stream in STREAMS:
        ours = results["contextual", stream]
        behaviour = " (behaviour: no thread in a pipe)" if stream == "pipe" else ""
        if peers:
            best = min(results[peer, stream].cpu_per_second for peer in peers)
            passed &= _target(
                f"{stream}: CPU per second of spinning at most the best peer's "
                f"({ours.cpu_per_second:.3f} <= {best:.3f} ms/s){behaviour}",
                ours.cpu_per_second <= best,
            )
        passed &= _target(
            f"{stream}: median stop() latency under 2 ms ({ours.stop_median:.3f} ms){behaviour}",
            ours.stop_median < 2,
        )
    pipe = results["contextual", "pipe"].output
    passed &= _target(f"pipe: no carriage return ({pipe.count(CR)} written)", CR not in pipe)
    passed &= _target(f"pipe: no escape code ({pipe.count(ESC)} written)", ESC not in pipe)
    return passed


def report(
    results: dict[tuple[str, str], Measured], names: list[str], args: argparse.Namespace
) -> bool:
    """Print the tables; return whether every target passed."""
    print(
        f"Spinner benchmark: spins of {args.seconds:g} s (median of {args.spins}), "
        f"{INTERVAL * 1000:.0f} ms frames, {args.stops} timed stops; "
        f"Python {platform.python_version()} on {platform.system()}, {os.cpu_count()} CPUs; "
        f"colour off for all (NO_COLOR=1), TERM=xterm-256color"
    )
    print_tables(results, names)
    print_ratios(results, names)
    passed = check_targets(results, names)
    if args.show_output:
        for stream in STREAMS:
            print()
            print(f"What each wrote to the {stream} (the first 100 bytes)")
            for name in names:
                if runs_on(name, stream):
                    print(f"  {name:<12} {results[name, stream].output[:100]!r}")
    return passed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        name, task, seconds, stops, result_fd = argv[1:]
        child(name, task, float(seconds), int(stops), int(result_fd))
        return 0
    parser = argparse.ArgumentParser(
        description="Compare contextual.spinner.Spinner with yaspin, halo and rich's status."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs side by side, peers optional: checks that it runs, measures nothing",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each spin")
    parser.add_argument("--spins", type=int, default=5, help="spins per contender and stream")
    parser.add_argument("--stops", type=int, default=50, help="stop() calls timed per contender")
    parser.add_argument(
        "--show-output", action="store_true", help="print the start of each pipe's output"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.spins, args.stops = 0.2, 1, 3

    names = []
    for name, module in CONTENDERS.items():
        if module is None or importlib.util.find_spec(module) is not None:
            names.append(name)
        elif args.quick:
            print(f"skipped {name}: not installed")
        else:
            parser.error(f"{name} is not installed; pip install -e '.[bench]', or use --quick.")

    # Side by side only in quick mode: measured runs must not compete for CPUs.
    workers = 4 * (os.cpu_count() or 1) if args.quick else 1
    keys = [(name, stream) for name in names for stream in STREAMS if runs_on(name, stream)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        # Round after round of every contender, so that a change in the
        # machine's load between rounds falls on all of them alike.
        spins: dict[tuple[str, str], list[concurrent.futures.Future[Run]]] = {}
        for _ in range(args.spins):
            for key in keys:
                future = pool.submit(run_child, key[0], "spin", key[1], args)
                spins.setdefault(key, []).append(future)
        stops = {key: pool.submit(run_child, key[0], "stop", key[1], args) for key in keys}
        results = {
            key: measured([future.result() for future in spins[key]], stops[key].result())
            for key in keys
        }
    passed = report(results, names, args)
    if args.quick:
        print("(--quick: too short to measure anything; the targets are not checked)")
        return 0
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
