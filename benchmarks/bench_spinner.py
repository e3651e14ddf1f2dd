"""Spinner benchmark: contextual.Spinner against yaspin, halo and rich's status.

Usage::

    python benchmarks/bench_spinner.py [--quick] [--seconds S] [--spins K] [--stops N]
                                       [--show-output]

Every measurement runs in a child process of its own (this script, with
``--child``), whose stdout and stderr are either a pseudo-terminal (80x24, read
by this process as a terminal would be) or a pipe. Each contender draws the
same braille frames every 100 ms, to stderr, with the same text, while the
main thread sleeps. Three things are measured:

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
    What the child wrote over one spin: frames (counted as occurrences of
    the text), bytes, carriage returns and escape characters.

The spin ends with each library's success call (``ok()`` for contextual and
yaspin, ``succeed()`` for halo; rich has none, so ``stop()``). Two more
contenders give the floor: ``baseline`` only sleeps, and ``bare-loop`` is the
least an Event-driven spinner can do, a thread that waits on an Event and
writes one frame per wake. The spins run in rounds, every contender once per
round, so that a change in the machine's load falls on all of them alike.

Targets, each marked PASS or MISS: contextual's CPU per second of spinning
at most the best peer's, on the terminal and in the pipe; its median stop
latency under 2 ms on both; no ``\\r`` and no escape code in the pipe. The
peers and the baseline give a context, not a target.

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
FRAME = TEXT.encode()  # one in each frame drawn, and in start and final lines

# contender -> the module it needs (None: the standard library and contextual).
CONTENDERS: dict[str, str | None] = {
    "baseline": None,
    "bare-loop": None,
    "contextual": None,
    "yaspin": "yaspin",
    "halo": "halo",
    "rich": "rich",
}
PEERS = ["yaspin", "halo", "rich"]
STREAMS = ["terminal", "pipe"]


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
            from contextual import Spinner  # noqa: PLC0415

            self.make = lambda: Spinner(TEXT, interval=INTERVAL)
        elif self.name == "yaspin":
            from yaspin import yaspin  # noqa: PLC0415
            from yaspin.core import Spinner as Frames  # noqa: PLC0415

            frames = Frames(DOTS, round(INTERVAL * 1000))
            self.make = lambda: yaspin(frames, text=TEXT, stream=sys.stderr)
        elif self.name == "halo":
            from halo import Halo  # noqa: PLC0415

            frames = {"interval": round(INTERVAL * 1000), "frames": list(DOTS)}
            self.make = lambda: Halo(text=TEXT, spinner=frames, stream=sys.stderr)
        elif self.name == "rich":
            from rich.console import Console  # noqa: PLC0415

            # rich's "dots" are the same frames at 80 ms; speed 0.8 makes 100 ms.
            self.make = lambda: Console(stderr=True).status(
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
        if self.name in {"contextual", "yaspin"}:
            self.spinner.ok()
        elif self.name == "halo":
            self.spinner.succeed()
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
    # The tree's contextual, not an installed one; a colour terminal for all.
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=path)
    env.pop("NO_COLOR", None)
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


def report(
    results: dict[tuple[str, str], Measured], names: list[str], args: argparse.Namespace
) -> bool:
    """Print the tables; return whether every target passed."""
    print(
        f"Spinner benchmark: spins of {args.seconds:g} s (median of {args.spins}), "
        f"{INTERVAL * 1000:.0f} ms frames, {args.stops} timed stops; "
        f"Python {platform.python_version()} on {platform.system()}, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'CPU ms/s':>9} {'start+end':>9} {'total ms':>9} {'stop med ms':>12} "
        f"{'stop max ms':>12} {'frames':>6} {'bytes':>6} {'CR':>4} {'ESC':>4}"
    )
    for stream in STREAMS:
        print()
        print(f"{'on a ' + stream:<12} {header}")
        for name in names:
            m = results[name, stream]
            print(
                f"{name:<12} {m.cpu_per_second:>9.3f} {m.start_end:>9.2f} {m.total_cpu:>9.1f} "
                f"{m.stop_median:>12.3f} {m.stop_max:>12.3f} {m.output.count(FRAME):>6} "
                f"{len(m.output):>6} {m.output.count(CR):>4} {m.output.count(ESC):>4}"
            )
    peers = [name for name in names if name in PEERS]
    if peers:
        print()
        print("Ratios, peer / contextual (above 1: contextual spends or writes less)")
        for stream in STREAMS:
            ours = results["contextual", stream]
            for peer in peers:
                theirs = results[peer, stream]
                cpu = _ratio(theirs.cpu_per_second, ours.cpu_per_second)
                stop = _ratio(theirs.stop_median, ours.stop_median)
                size = _ratio(len(theirs.output), len(ours.output))
                print(
                    f"  {stream:<9} {peer:<7} CPU {cpu:>7}   stop median {stop:>7}"
                    f"   bytes {size:>7}"
                )
    print()
    print("Targets")
    passed = True
    for stream in STREAMS:
        ours = results["contextual", stream]
        if peers:
            best = min(results[peer, stream].cpu_per_second for peer in peers)
            passed &= _target(
                f"{stream}: CPU per second of spinning at most the best peer's "
                f"({ours.cpu_per_second:.3f} <= {best:.3f} ms/s)",
                ours.cpu_per_second <= best,
            )
        passed &= _target(
            f"{stream}: median stop() latency under 2 ms ({ours.stop_median:.3f} ms)",
            ours.stop_median < 2,
        )
    pipe = results["contextual", "pipe"].output
    passed &= _target(f"pipe: no carriage return ({pipe.count(CR)} written)", CR not in pipe)
    passed &= _target(f"pipe: no escape code ({pipe.count(ESC)} written)", ESC not in pipe)
    if args.show_output:
        print()
        print("What each wrote to the pipe (the first 100 bytes)")
        for name in names:
            print(f"  {name:<12} {results[name, 'pipe'].output[:100]!r}")
    return passed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        name, task, seconds, stops, result_fd = argv[1:]
        child(name, task, float(seconds), int(stops), int(result_fd))
        return 0
    parser = argparse.ArgumentParser(
        description="Compare contextual.Spinner with yaspin, halo and rich's status."
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
    keys = [(name, stream) for name in names for stream in STREAMS]
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
