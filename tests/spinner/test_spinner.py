"""Spinner: what a terminal, a pipe and a file receive, from one thread and from many.

Terminal tests write to a real pseudo-terminal and read back, from its master
side, the bytes a terminal would get. Threads are ordered with Events and
Barriers; a test waits for output to appear, never for time to pass.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import io
import logging
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import tty
import uuid
import warnings
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from contextual import get_request_id, request_context
from contextual.spinner import Spinner, SpinnerHandler, _spinner
from support.spinner import Failing

HIDE = "\x1b[?25l"
SHOW = "\x1b[?25h"
ERASE = "\r\x1b[2K"
CYAN, GREEN, RED, RESET = "\x1b[36m", "\x1b[32m", "\x1b[31m", "\x1b[0m"
DOTS = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
ELAPSED = r"\(\d+\.\ds\)"

TESTS = Path(__file__).resolve().parents[1]
EXAMPLE = TESTS.parent / "examples" / "spinner_supervisor.py"


class Terminal:
    """A pseudo-terminal: ``stream`` writes to it; a thread collects what it receives."""

    def __init__(self, columns: int = 80) -> None:
        self.master, self.slave = pty.openpty()
        # Raw: the bytes arrive as written, "\n" not turned into "\r\n".
        tty.setraw(self.slave)
        self.resize(columns)
        self.stream = open(self.slave, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        self._received = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def resize(self, columns: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave descriptor is closed
                data = b""
            with self._changed:
                if not data:
                    self._changed.notify_all()
                    return
                self._received += data
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool]) -> str:
        """Wait until what arrived so far satisfies ``predicate``; return it."""
        with self._changed:
            self._changed.wait_for(lambda: predicate(self._received.decode(errors="replace")))
            return self._received.decode()

    def close(self) -> str:
        """Close the terminal and return everything it received."""
        self.stream.close()
        os.close(self.slave)
        self._reader.join()
        os.close(self.master)
        return self._received.decode()


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    if not term.stream.closed:
        term.close()


@pytest.fixture(autouse=True)
def colour_terminal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts as in a colour terminal emulator, whatever runs the suite."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(autouse=True)
def no_spinner_left_running() -> Iterator[None]:
    yield
    assert not _spinner._RUNNING, "a test left a spinner running"
    assert not [t for t in threading.enumerate() if t.name == "contextual-spinner"]


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """What reaches ``threading.excepthook`` during the test: errors that ended a thread."""
    errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    return errors


def spinner_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "contextual-spinner"]


def frame(char: str, text: str, *, colour: bool = True) -> str:
    shown = f"{CYAN}{char}{RESET}" if colour else char
    return f"\r{shown} {text}\x1b[K" if text else f"\r{shown}\x1b[K"


class Recorder:
    """A stream with no isatty() and no fileno() that reports each write from the spinner thread."""

    def __init__(self) -> None:
        self.from_spinner = threading.Event()
        self.seen: list[tuple[object, object]] = []

    def write(self, text: str) -> int:
        if threading.current_thread().name == "contextual-spinner":
            self.seen.append((VAR.get("unset"), get_request_id()))
            self.from_spinner.set()
        return len(text)

    def flush(self) -> None:
        pass


class Broken:
    """A stream whose writes fail once ``broken`` is set, as a closed pipe's do."""

    def __init__(self) -> None:
        self.broken = False
        self.failed = threading.Event()

    def write(self, text: str) -> int:
        if self.broken:
            self.failed.set()
            raise BrokenPipeError(32, "Broken pipe")
        return len(text)

    def flush(self) -> None:
        pass


class Clock:
    """A clock for ``_spinner._clock``: moves when told, counts the spinner thread's readings."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.readings = 0
        self._changed = threading.Condition()

    def __call__(self) -> float:
        with self._changed:
            if threading.current_thread().name == "contextual-spinner":
                self.readings += 1
                self._changed.notify_all()
            return self.now

    def advance(self, seconds: float) -> None:
        with self._changed:
            self.now += seconds

    def wait_for_readings(self, count: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.readings >= count)


class Held:
    """A stream that holds every write containing ``text`` until ``release`` is set."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.holding = threading.Event()
        self.release = threading.Event()
        self.written: list[str] = []

    def write(self, text: str) -> int:
        if self.text in text:
            self.holding.set()
            self.release.wait()
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        pass


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_spinner_var")


# -- on a terminal ---------------------------------------------------------------


def test_on_a_terminal_it_hides_the_cursor_animates_and_ends_with_a_final_line(terminal):
    with Spinner("Loading", stream=terminal.stream, interval=0.001):
        terminal.wait_for(lambda out: frame("⠹", "Loading") in out)
    out = terminal.close()
    assert out.startswith(HIDE + frame("⠋", "Loading") + frame("⠙", "Loading"))
    assert re.search(
        re.escape(f"{ERASE}{GREEN}✔{RESET} Loading ") + ELAPSED + re.escape(f"\n{SHOW}") + "$",
        out,
    )
    # The frames come in order, and nothing but frames until the end.
    body = out[len(HIDE) : out.index(ERASE)]
    frames = re.findall(re.escape(f"\r{CYAN}") + "(.)" + re.escape(f"{RESET} Loading\x1b[K"), body)
    assert "".join(frames) == (DOTS * len(frames))[: len(frames)]
    assert len(frames) * len(frame("⠋", "Loading")) == len(body)


def test_a_raising_block_ends_with_a_failure_line_and_the_exception_propagates(terminal):
    with pytest.raises(ValueError, match="boom"), Spinner("Saving", stream=terminal.stream):
        raise ValueError("boom")
    out = terminal.close()
    assert re.search(re.escape(f"{ERASE}{RED}✖{RESET} Saving ") + ELAPSED, out)
    assert out.endswith(SHOW)


@pytest.mark.parametrize("no_color", ["1", ""])
def test_no_color_turns_the_colour_off_when_set_and_not_empty(terminal, monkeypatch, no_color):
    monkeypatch.setenv("NO_COLOR", no_color)
    with Spinner("Loading", stream=terminal.stream, interval=3600):
        pass
    out = terminal.close()
    assert out.startswith(HIDE)
    assert out.endswith(SHOW)
    if no_color:
        assert frame("⠋", "Loading", colour=False) in out
        assert f"{ERASE}✔ Loading" in out
        assert "\x1b[3" not in out
    else:
        assert frame("⠋", "Loading") in out


def test_a_dumb_terminal_gets_the_plain_lines(terminal, monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    with Spinner("Loading", stream=terminal.stream, interval=0.001):
        assert not spinner_threads()
    assert re.fullmatch(r"Loading\n✔ Loading " + ELAPSED + r"\n", terminal.close())


def test_enabled_false_gets_the_plain_lines_on_a_terminal(terminal):
    with Spinner("Loading", stream=terminal.stream, enabled=False):
        pass
    assert re.fullmatch(r"Loading\n✔ Loading " + ELAPSED + r"\n", terminal.close())


def test_keyboard_interrupt_in_the_block_shows_the_cursor_and_ends_the_thread(terminal):
    with (
        pytest.raises(KeyboardInterrupt),
        Spinner("Working", stream=terminal.stream, interval=0.001),
    ):
        terminal.wait_for(lambda out: frame("⠙", "Working") in out)
        raise KeyboardInterrupt
    assert not spinner_threads()
    out = terminal.close()
    assert out.count(HIDE) == out.count(SHOW) == 1
    assert re.search(
        re.escape(f"{ERASE}{RED}✖{RESET} Working ") + ELAPSED + "\n" + re.escape(SHOW), out
    )


def test_stop_erases_the_line_shows_the_cursor_and_writes_no_final_line(terminal):
    spinner = Spinner("Working", stream=terminal.stream, interval=3600).start()
    spinner.stop()
    assert terminal.close() == HIDE + frame("⠋", "Working") + ERASE + SHOW


def test_stop_wakes_the_thread_at_once_whatever_the_interval(terminal):
    # An hour between frames: only a stop() that wakes the thread returns
    # before the suite's timeout.
    spinner = Spinner("Working", stream=terminal.stream, interval=3600).start()
    (thread,) = spinner_threads()
    spinner.stop()
    assert not thread.is_alive()


def test_a_new_text_shows_without_waiting_for_the_next_frame(terminal):
    # No frame is due for an hour: the redraw can only come from the new text.
    with Spinner("Step 1", stream=terminal.stream, interval=3600) as spinner:
        spinner.text = "Step 2"
        assert spinner.text == "Step 2"
        terminal.wait_for(lambda out: frame("⠋", "Step 2") in out)
    assert re.search(re.escape(f"{GREEN}✔{RESET} Step 2 ") + ELAPSED, terminal.close())


def test_a_new_text_shows_no_sooner_than_a_tenth_of_a_second_after_the_last_draw(
    terminal, monkeypatch
):
    clock = Clock()
    monkeypatch.setattr(_spinner, "_clock", clock)
    with Spinner("Copying", stream=terminal.stream, interval=3600) as spinner:
        clock.wait_for_readings(1)  # the thread waits for the next frame, an hour away
        spinner.text = "Copying file 1 of 1000"
        # The new text wakes it, but by this clock it drew just now: it
        # comes round again without drawing, and again until the clock moves.
        clock.wait_for_readings(3)
        for n in range(2, 1001):
            spinner.text = f"Copying file {n} of 1000"
        clock.wait_for_readings(clock.readings + 2)
        clock.advance(0.1)
        terminal.wait_for(lambda out: frame("⠋", "Copying file 1000 of 1000") in out)
    out = terminal.close()
    # A thousand texts, one redraw.
    assert out == (
        HIDE
        + frame("⠋", "Copying")
        + frame("⠋", "Copying file 1000 of 1000")
        + f"{ERASE}{GREEN}✔{RESET} Copying file 1000 of 1000 (0.1s)\n{SHOW}"
    )


@pytest.mark.parametrize(
    ("columns", "text", "shown"),
    [
        (20, "Downloading everything there is", "Downloading ever…"),
        (20, "exactly seventeen", "exactly seventeen"),
        (20, "日本語のテキストです", "日本語のテキスト…"),
        (20, "cafe\u0301 " * 5, "cafe\u0301 cafe\u0301 cafe\u0301 c…"),
        (4, "Loading", "…"),
        (3, "Loading", ""),
    ],
)
def test_the_text_is_cut_to_the_terminal_width(columns, text, shown):
    term = Terminal(columns)
    try:
        with Spinner(text, stream=term.stream, interval=3600):
            pass
    finally:
        out = term.close()
    assert out.startswith(HIDE + frame("⠋", shown))
    # The final line is not cut: it stays in the scrollback.
    assert f"✔{RESET} {text} (" in out


def test_a_resized_terminal_cuts_the_text_at_its_new_width(terminal):
    with Spinner("A rather long text to show", stream=terminal.stream, interval=0.001):
        terminal.wait_for(lambda out: frame("⠙", "A rather long text to show") in out)
        terminal.resize(12)
        terminal.wait_for(lambda out: " A rather…\x1b[K" in out)


def test_a_terminal_that_reports_no_size_uses_columns(terminal, monkeypatch):
    terminal.resize(0)  # as a new pseudo-terminal reports
    monkeypatch.setenv("COLUMNS", "12")
    with Spinner("A rather long text", stream=terminal.stream, interval=3600):
        pass
    assert frame("⠋", "A rather…") in terminal.close()


def test_control_characters_in_the_text_print_as_spaces(terminal):
    with Spinner("one\ntwo\tthree\x1b[31m", stream=terminal.stream, interval=3600):
        pass
    out = terminal.close()
    assert frame("⠋", "one two three [31m") in out
    assert "✔\x1b[0m one two three [31m (" in out


def test_an_empty_text_shows_the_frame_alone(terminal):
    with Spinner(stream=terminal.stream, interval=3600):
        pass
    out = terminal.close()
    assert out.startswith(HIDE + frame("⠋", ""))
    assert re.search(re.escape(f"{GREEN}✔{RESET} ") + ELAPSED + "\n", out)


def test_custom_frames(terminal):
    with Spinner("Go", frames=["<", ">"], stream=terminal.stream, interval=0.001):
        terminal.wait_for(lambda out: frame("<", "Go") + frame(">", "Go") + frame("<", "Go") in out)


# -- in processes on a terminal ---------------------------------------------------


# Seconds for a child whose output has ended, or that was killed, to be gone.
EXIT_TIMEOUT = 30


def run_on_terminal(args: list[str], *, interrupt_after: str | None = None) -> tuple[int, str, str]:
    """Run ``python args`` with stderr on a terminal; return (returncode, stdout, terminal).

    Whatever fails (a line that differs, pytest-timeout's own failure), the
    child is killed before the terminal closes, so the test fails and never
    hangs.
    """
    term = Terminal()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm-256color"
    try:
        with subprocess.Popen(
            [sys.executable, "-W", "error", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=term.slave,
            env=env,
            text=True,
        ) as process:
            try:
                assert process.stdout is not None
                if interrupt_after is not None:
                    assert process.stdout.readline() == interrupt_after + "\n"
                    process.send_signal(signal.SIGINT)
                stdout = process.stdout.read()
                process.wait(EXIT_TIMEOUT)
            finally:
                # A child still running here would keep the end of the with
                # block, and the terminal's close(), waiting for ever: both
                # wait for it (the close for its end of the terminal). kill()
                # does nothing to a child that has ended.
                process.kill()
                process.wait(EXIT_TIMEOUT)
    finally:
        out = term.close()
    return process.returncode, stdout, out


def test_sigint_in_a_process_on_a_terminal_shows_the_cursor_and_ends_the_thread():
    # A shell that runs the suite in the background ignores SIGINT, and so do
    # the processes it starts: exec keeps an ignored signal ignored (and a
    # blocked one blocked), and Python then raises no KeyboardInterrupt. The
    # child restores both itself, first thing, whoever starts it:
    # restore_signals resets SIGPIPE, SIGXFZ and SIGXFSZ only, and preexec_fn
    # runs between fork and exec in this process, whose threads (the
    # terminal's reader) can deadlock it there.
    code = """if True:
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        import threading
        from contextual.spinner import Spinner
        try:
            with Spinner("Working", interval=0.01):
                print("ready", flush=True)
                threading.Event().wait()
        except KeyboardInterrupt:
            print([t.name for t in threading.enumerate()], flush=True)
            raise
    """
    returncode, stdout, out = run_on_terminal(["-c", code], interrupt_after="ready")
    assert returncode == -signal.SIGINT
    assert stdout == "['MainThread']\n"
    assert out.startswith(HIDE + frame("⠋", "Working"))
    # Then Python's report of the KeyboardInterrupt, on the same terminal.
    spun, traceback = out.split(SHOW)
    assert re.search(re.escape(f"{ERASE}{RED}✖{RESET} Working ") + ELAPSED + "\n$", spun)
    assert traceback.startswith("Traceback")


def test_a_spinner_never_stopped_shows_the_cursor_at_exit():
    code = "from contextual.spinner import Spinner; Spinner('Left running', interval=3600).start()"
    returncode, _, out = run_on_terminal(["-c", code])
    assert returncode == 0
    assert out == HIDE + frame("⠋", "Left running") + ERASE + SHOW


def test_one_exit_hook_serves_every_spinner():
    code = """if True:
        import atexit, io
        from contextual.spinner import Spinner
        before = atexit._ncallbacks()
        spinners = [Spinner(stream=io.StringIO()).start() for _ in range(5)]
        print(atexit._ncallbacks() - before)
        for spinner in spinners:
            spinner.ok()
    """
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout == "1\n"


def test_the_exit_hook_ends_every_running_spinner(monkeypatch):
    monkeypatch.setattr(_spinner, "_exiting", False)  # restored after the test
    first, second = io.StringIO(), io.StringIO()
    Spinner("one", stream=first, enabled=True, interval=3600).start()
    Spinner("two", stream=second, enabled=False).start()
    _spinner._end_all()
    assert not spinner_threads()
    assert first.getvalue().endswith(ERASE + SHOW)
    assert second.getvalue() == "two\n"


def test_the_supervisor_example_on_a_terminal():
    returncode, stdout, out = run_on_terminal([str(EXAMPLE), "0.3"])
    assert returncode == 0
    assert stdout == "Answer: 42\n"
    assert out.startswith(HIDE + frame("⠋", "thinking!"))
    assert re.search(re.escape(f"{GREEN}✔{RESET} thinking! ") + ELAPSED + "\n", out)
    assert out.endswith(SHOW)


def test_the_supervisor_example_in_a_pipe():
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE), "0.1"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
    )
    assert result.stdout == "Answer: 42\n"
    assert re.fullmatch(r"thinking!\n✔ thinking! " + ELAPSED + r"\n", result.stderr)


# -- in pipes, files and other streams -------------------------------------------


def test_a_pipe_gets_exactly_two_plain_lines():
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w", encoding="utf-8") as stream:
        with Spinner("Loading", stream=stream, interval=0.001) as spinner:
            assert not spinner_threads()
            spinner.text = "Loaded"
        with pytest.raises(LookupError, match="missing"), Spinner("Checking", stream=stream):
            raise LookupError("missing")
    with os.fdopen(read_end, encoding="utf-8") as received:
        out = received.read()
    assert re.fullmatch(
        r"Loading\n✔ Loaded " + ELAPSED + r"\nChecking\n✖ Checking " + ELAPSED + r"\n", out
    )


def test_a_file_gets_exactly_two_plain_lines(tmp_path):
    path = tmp_path / "log.txt"
    with path.open("w", encoding="utf-8") as stream, Spinner("Loading", stream=stream):
        pass
    assert re.fullmatch(r"Loading\n✔ Loading " + ELAPSED + r"\n", path.read_text("utf-8"))


def test_enabled_true_animates_where_there_is_no_terminal_but_without_colour():
    stream = io.StringIO()
    with Spinner("Loading", stream=stream, enabled=True, interval=3600):
        pass
    out = stream.getvalue()
    assert out.startswith(HIDE + frame("⠋", "Loading", colour=False))
    assert re.search(re.escape(f"{ERASE}✔ Loading ") + ELAPSED + re.escape(f"\n{SHOW}"), out)


def test_the_default_stream_is_stderr_when_the_spinner_starts(monkeypatch):
    spinner = Spinner("Loading")
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with spinner:
        pass
    assert stream.getvalue().startswith("Loading\n✔ Loading")


def test_without_stderr_a_spinner_writes_nothing_and_raises_nothing(monkeypatch):
    monkeypatch.setattr(sys, "stderr", None)
    with Spinner("Loading", enabled=True, interval=0.001) as spinner:
        spinner.write("a line")
        spinner.text = "more"
    spinner.write("another line")


def test_an_ascii_stream_gets_ascii_frames_marks_and_replacements():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    with Spinner("Sauvegarde du café", stream=stream, enabled=True, interval=3600):
        pass
    with pytest.raises(KeyError), Spinner("Échec", stream=stream, enabled=False):
        raise KeyError
    out = raw.getvalue().decode("ascii")
    assert out.startswith(HIDE + frame("-", "Sauvegarde du caf?", colour=False))
    assert re.search(re.escape(f"{ERASE}OK Sauvegarde du caf? ") + ELAPSED, out)
    assert re.search(re.escape(SHOW) + r"\?chec\nFAIL \?chec " + ELAPSED + r"\n$", out)


def test_frames_the_stream_cannot_encode_give_way_to_ones_it_can():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    with Spinner("Go", frames="◐◓◑◒", stream=stream, enabled=True, interval=3600):
        pass
    assert raw.getvalue().decode("ascii").startswith(HIDE + frame("-", "Go", colour=False))


def test_a_stream_with_an_unknown_encoding_is_written_as_if_it_had_none():
    class Odd(io.StringIO):
        encoding = "no-such-codec"  # type: ignore[assignment]

    stream = Odd()
    with Spinner("Loading", stream=stream):
        pass
    assert stream.getvalue().startswith("Loading\n✔ Loading")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.04, "0.0s"),
        (59.94, "59.9s"),
        (59.96, "1m 00s"),
        (125.4, "2m 05s"),
        (3599.6, "1h 00m 00s"),
        (3725, "1h 02m 05s"),
    ],
)
def test_the_elapsed_time_reads_as_seconds_minutes_and_hours(seconds, shown):
    assert _spinner._format_elapsed(seconds) == shown


def test_the_final_line_shows_the_time_since_the_start(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_spinner, "_clock", clock)
    stream = io.StringIO()
    with Spinner("Loading", stream=stream):
        clock.advance(75)
    assert stream.getvalue() == "Loading\n✔ Loading (1m 15s)\n"


# -- starting and ending -----------------------------------------------------------


def test_starting_a_running_spinner_does_nothing():
    stream = io.StringIO()
    spinner = Spinner("Loading", stream=stream)
    assert spinner.start() is spinner
    assert spinner.start() is spinner
    assert spinner.running
    spinner.ok()
    assert not spinner.running
    assert stream.getvalue().count("Loading") == 2


def test_starting_a_running_animated_spinner_starts_no_second_thread():
    stream = io.StringIO()
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=3600).start()
    spinner.start()
    assert len(spinner_threads()) == 1
    spinner.stop()
    assert stream.getvalue().count(HIDE) == 1


def test_ending_a_spinner_that_is_not_running_does_nothing():
    stream = io.StringIO()
    spinner = Spinner("Loading", stream=stream, enabled=True)
    spinner.stop()
    spinner.ok()
    spinner.fail()
    assert stream.getvalue() == ""
    assert not spinner.running


def test_only_the_first_end_writes_a_final_line():
    stream = io.StringIO()
    with Spinner("Loading", stream=stream) as spinner:
        spinner.ok("Loaded 3 files")
        spinner.fail("never shown")
        spinner.stop()
    assert re.fullmatch(r"Loading\n✔ Loaded 3 files " + ELAPSED + r"\n", stream.getvalue())


def test_a_stopped_spinner_starts_again():
    stream = io.StringIO()
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=3600)
    spinner.start()
    spinner.stop()
    spinner.start()
    spinner.fail("Gave up")
    out = stream.getvalue()
    assert out.count(HIDE) == out.count(SHOW) == 2
    assert "✖ Gave up (" in out


def test_the_repr_says_whether_it_runs():
    spinner = Spinner("Loading", stream=io.StringIO())
    assert repr(spinner) == "<Spinner 'Loading' stopped>"
    with spinner:
        assert repr(spinner) == "<Spinner 'Loading' running>"


def test_a_failing_thread_start_leaves_nothing_behind(monkeypatch):
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    stream = io.StringIO()
    spinner = Spinner("Loading", stream=stream, enabled=True)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        spinner.start()
    assert not spinner.running
    assert stream.getvalue() == ""


def test_a_stream_whose_file_is_gone_is_written_as_if_it_had_none():
    class Gone(io.StringIO):
        def fileno(self) -> int:
            return 999_999  # no such descriptor

    stream = Gone()
    with Spinner("Loading", stream=stream, enabled=True, interval=3600):
        pass
    assert stream.getvalue().startswith(HIDE + frame("⠋", "Loading", colour=False))


def test_a_broken_stream_ends_the_frames_quietly():
    stream = Broken()
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=0.001).start()
    (thread,) = spinner_threads()
    stream.broken = True
    # The thread's next frame fails, and the thread ends without a traceback
    # (the suite turns an unhandled thread exception into an error).
    thread.join()
    assert stream.failed.is_set()
    assert spinner.running
    spinner.text = "still no error"
    spinner.ok()
    assert not spinner.running


# -- streams that raise anything -----------------------------------------------------
# A capture tool, or a wrapper that colours text, may raise anything from write() or
# flush(). Failing wraps the terminal's own stream, so the spinner animates there.

METHODS = ["write", "flush"]


@pytest.mark.parametrize("method", METHODS)
def test_a_stream_that_raises_ends_the_frames_quietly(terminal, thread_errors, method):
    stream = Failing(terminal.stream, method=method, after=1)  # the first frame only
    spinner = Spinner("Loading", stream=stream, interval=0.001).start()  # type: ignore[arg-type]
    assert spinner._run is not None
    assert spinner._run.thread is not None
    stream.failed.wait()
    spinner._run.thread.join()
    assert thread_errors == []
    spinner.stop()


# (stop() writes nothing where the spinner doesn't animate.)
@pytest.mark.parametrize(
    ("enabled", "end"),
    [(None, "ok"), (None, "fail"), (None, "stop"), (False, "ok"), (False, "fail")],
)
@pytest.mark.parametrize("method", METHODS)
def test_a_spinner_whose_stream_raises_ends_all_the_same(terminal, method, enabled, end):
    stream = Failing(terminal.stream, method=method, after=1)  # the start only
    spinner = Spinner("Loading", stream=stream, enabled=enabled, interval=3600)  # type: ignore[arg-type]
    spinner.start()
    getattr(spinner, end)()
    assert stream.failed.is_set()
    assert not spinner.running


def test_stop_after_the_stream_raised_does_nothing_however_often(terminal):
    stream = Failing(terminal.stream, after=1)
    spinner = Spinner("Loading", stream=stream, interval=3600).start()  # type: ignore[arg-type]
    spinner.stop()
    spinner.stop()
    spinner.stop()
    assert stream.calls == 2  # the first frame, and the first stop()'s erase


def test_a_block_that_returns_succeeds_when_the_stream_refuses_its_final_line(terminal):
    # As when the stream is closed: the final line is left out, and the work,
    # which succeeded, is not reported as failed.
    stream = Failing(terminal.stream, after=1)
    with Spinner("Loading", stream=stream, interval=3600) as spinner:  # type: ignore[arg-type]
        pass
    assert stream.failed.is_set()
    assert not spinner.running


@pytest.mark.parametrize("enabled", [None, False])
@pytest.mark.parametrize("method", METHODS)
def test_the_blocks_exception_wins_over_the_streams(terminal, method, enabled):
    stream = Failing(terminal.stream, method=method, after=1)
    with (
        pytest.raises(LookupError, match="the block's own") as raised,
        Spinner("Loading", stream=stream, enabled=enabled, interval=3600),  # type: ignore[arg-type]
    ):
        raise LookupError("the block's own")
    assert stream.failed.is_set()
    assert raised.value.__context__ is None


def test_after_a_stream_raised_another_spinner_animates_on_its_terminal(terminal):
    stream = Failing(terminal.stream, after=1)
    spinner = Spinner("Loading", stream=stream, interval=3600).start()  # type: ignore[arg-type]
    spinner.ok()
    # The next frame is drawn by the new spinner's thread: the terminal's lock
    # is free, and no ended run keeps the terminal for itself.
    with Spinner("Next", stream=terminal.stream, interval=0.001):
        terminal.wait_for(lambda out: frame("⠙", "Next") in out)


def test_a_first_write_that_raises_fails_the_start_and_frees_the_terminal(terminal):
    # Unlike a closed stream, such a stream is reported before the work runs:
    # it may be one that can never take the spinner's text.
    spinner = Spinner("Loading", stream=Failing(terminal.stream), interval=0.001)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"refuses write\(\) call 1"):
        spinner.start()
    assert not spinner.running
    spinner.stop()
    with Spinner("Next", stream=terminal.stream, interval=0.001):
        terminal.wait_for(lambda out: frame("⠙", "Next") in out)


def test_a_spinner_starts_and_ends_above_one_whose_stream_raises(terminal):
    below = Failing(terminal.stream, after=1)
    spinner = Spinner("Below", stream=below, interval=3600).start()  # type: ignore[arg-type]
    with Spinner("Above", stream=terminal.stream):
        pass
    spinner.stop()
    assert below.failed.is_set()
    out = terminal.close()
    assert re.search(re.escape(f"Above\n{GREEN}✔{RESET} Above ") + ELAPSED + "\n", out)


def test_a_handler_logs_above_a_spinner_whose_stream_raises(terminal):
    reported: list[logging.LogRecord] = []

    class Reporting(SpinnerHandler):
        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
            reported.append(record)

    handler = Reporting(terminal.stream)
    below = Failing(terminal.stream, after=1)
    spinner = Spinner("Below", stream=below, interval=3600).start()  # type: ignore[arg-type]
    try:
        handler.handle(logging.LogRecord("app", logging.INFO, __file__, 1, "a record", None, None))
    finally:
        spinner.stop()
    assert below.failed.is_set()
    assert reported == []
    assert "a record\n" in terminal.close()


def test_a_spinner_whose_stream_raises_leaves_the_exit_quiet():
    code = """if True:
        import io
        from support.spinner import Failing
        from contextual.spinner import Spinner
        stream = Failing(io.StringIO(), after=1)  # the first frame only
        Spinner("Left running", stream=stream, enabled=True, interval=3600).start()
    """
    path = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_a_frame_due_when_stop_runs_is_never_drawn():
    class Gate:
        """A gate's lock; holds the spinner thread once, until the test's stop() is done."""

        def __init__(self) -> None:
            self.lock = threading.RLock()
            self.armed = False
            self.spinner_waits = threading.Event()
            self.go = threading.Event()

        def __enter__(self) -> None:
            if self.armed and threading.current_thread().name == "contextual-spinner":
                self.armed = False
                self.spinner_waits.set()
                self.go.wait()
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()
            if self.spinner_waits.is_set() and threading.current_thread() is main:
                self.go.set()

    main = threading.current_thread()
    gate = Gate()
    stream = io.StringIO()
    # The stream's gate, held here so that the spinner's run gets this one;
    # its thread takes the lock from the gate at each use.
    held = _spinner._gate_for(stream)
    held.lock = gate  # type: ignore[assignment]
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=0.001).start()
    gate.armed = True
    # The thread's wait for the next frame is over; it is about to take the lock.
    gate.spinner_waits.wait()
    spinner.stop()
    assert stream.getvalue().endswith(ERASE + SHOW)


@pytest.mark.parametrize(
    ("status", "mark"),
    [
        ((), "✔"),
        ((0,), "✔"),
        ((None,), "✔"),
        ((False,), "✔"),
        ((1,), "✖"),
        (("bad",), "✖"),
        ((0.0,), "✖"),  # not an int: Python prints it and exits with status 1
        (([0],), "✖"),
    ],
)
def test_sys_exit_in_the_block_ends_with_ok_for_status_zero_or_none(status, mark):
    stream = io.StringIO()
    with pytest.raises(SystemExit), Spinner("Deploying", stream=stream):
        sys.exit(*status)
    assert re.fullmatch(f"Deploying\n{mark} Deploying " + ELAPSED + "\n", stream.getvalue())


def test_an_interrupt_while_the_thread_starts_leaves_no_thread_drawing(monkeypatch):
    start = threading.Thread.start

    def start_then_interrupt(self: threading.Thread) -> None:
        # Ctrl-C while Thread.start() waits for the new thread, which runs.
        start(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    stream = io.StringIO()
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=0.001)
    with pytest.raises(KeyboardInterrupt):
        spinner.start()
    assert not spinner.running
    assert not spinner_threads()
    assert stream.getvalue() == ""
    spinner.stop()


def test_an_interrupt_in_the_first_write_shows_the_cursor_again():
    class Interrupted(io.StringIO):
        def write(self, text: str) -> int:
            written = super().write(text)
            if text.startswith(HIDE):
                raise KeyboardInterrupt
            return written

    stream = Interrupted()
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=0.001)
    with pytest.raises(KeyboardInterrupt):
        spinner.start()
    assert not spinner.running
    assert not spinner_threads()
    assert stream.getvalue() == HIDE + frame("⠋", "Loading", colour=False) + ERASE + SHOW


class TakesBytes:
    """A stream that says nothing of bytes until its write() refuses a str."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if not isinstance(data, bytes):
            raise TypeError(f"a bytes-like object is required, not {type(data).__name__!r}")
        return len(data)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("enabled", [True, False])
def test_a_stream_whose_first_write_raises_fails_the_start_and_leaves_nothing(enabled):
    stream = TakesBytes()
    spinner = Spinner("Loading", stream=stream, enabled=enabled)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a bytes-like object is required"):
        spinner.start()
    assert not spinner.running
    assert not spinner_threads()
    # Only the first write: showing the cursor again would have raised too.
    assert stream.writes == (2 if enabled else 1)
    with pytest.raises(TypeError, match="a bytes-like object is required"), spinner:
        pass


def test_a_binary_stderr_fails_the_start_and_leaves_nothing_for_the_exit_hook(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.BytesIO())
    spinner = Spinner("Loading")
    with pytest.raises(TypeError, match="a bytes-like object is required"):
        spinner.start()
    assert not spinner.running
    assert not _spinner._RUNNING


def test_a_file_opened_for_bytes_is_refused(tmp_path):
    with (tmp_path / "log").open("wb", buffering=0) as raw, (tmp_path / "log").open("ab") as buf:
        for stream in (raw, buf):
            with pytest.raises(TypeError, match=r'a file opened with mode "w", not "wb"'):
                Spinner("Loading", stream=stream)  # type: ignore[arg-type]


def test_after_the_exit_hook_a_new_spinner_writes_plain_lines(terminal, monkeypatch):
    monkeypatch.setattr(_spinner, "_exiting", False)  # restored after the test
    Spinner("Before", stream=terminal.stream, interval=3600).start()
    _spinner._end_all()
    # As a daemon thread would, before the interpreter stops it.
    with Spinner("After", stream=terminal.stream, interval=0.001):
        assert not spinner_threads()
    with Spinner("Forced", stream=terminal.stream, enabled=True, interval=0.001):
        assert not spinner_threads()
    out = terminal.close()
    assert out.count(HIDE) == out.count(SHOW) == 1
    assert re.fullmatch(
        re.escape(HIDE + frame("⠋", "Before") + ERASE + SHOW)
        + re.escape(f"After\n{GREEN}✔{RESET} After ")
        + ELAPSED
        + re.escape(f"\nForced\n{GREEN}✔{RESET} Forced ")
        + ELAPSED
        + "\n",
        out,
    )


def test_two_threads_that_stop_a_spinner_together_both_return_once_its_thread_ended():
    stream = Held(SHOW)  # holds the end's write
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=3600).start()
    (thread,) = spinner_threads()
    run = spinner._run
    assert run is not None
    second_waits, second_is_past, thread_may_end = (threading.Event() for _ in range(3))

    class Gate:
        """The gate's lock: tells when the second stop() waits for it, and holds the thread."""

        def __init__(self, lock: threading.RLock) -> None:
            self.lock = lock

        def __enter__(self) -> None:
            name = threading.current_thread().name
            if name == "second":
                second_waits.set()
            elif name == "contextual-spinner":
                # Its thread would end at once; it ends only once the second
                # stop() has returned or waits for it.
                thread_may_end.wait()
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    def join(timeout: float | None = None) -> None:
        if threading.current_thread().name == "second":
            second_is_past.set()
        threading.Thread.join(thread, timeout)

    run.gate.lock = Gate(run.gate.lock)  # type: ignore[assignment]
    thread.join = join  # type: ignore[method-assign]
    thread_alive_after: dict[str, bool] = {}

    def stop() -> None:
        spinner.stop()
        thread_alive_after[threading.current_thread().name] = thread.is_alive()
        second_is_past.set()

    first = threading.Thread(target=stop, name="first")
    first.start()
    stream.holding.wait()  # the first writes the end, with the gate's lock
    second = threading.Thread(target=stop, name="second")
    second.start()
    second_waits.wait()
    stream.release.set()
    second_is_past.wait()
    thread_may_end.set()
    first.join()
    second.join()
    assert thread_alive_after == {"first": False, "second": False}
    assert "".join(stream.written).count(SHOW) == 1


def test_a_spinner_stopped_from_its_own_thread_ends_without_an_error():
    class Stopping(io.StringIO):
        """Stops the spinner, once, from the spinner's thread, in the middle of a frame."""

        stopped = False

        def write(self, text: str) -> int:
            if threading.current_thread().name == "contextual-spinner" and not self.stopped:
                self.stopped = True
                spinner.stop()
            return super().write(text)

    stream = Stopping()
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=0.001).start()
    (thread,) = spinner_threads()
    # An error in the thread would fail the test: the suite makes it one.
    thread.join()
    assert not spinner.running
    assert stream.getvalue().count(SHOW) == 1


# -- threads, context and fork -----------------------------------------------------


def inherit_context_in_new_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make new threads run in a copy of their starter's context, as Python 3.14 can.

    Python 3.14's ``sys.flags.thread_inherit_context`` (on by default in its
    free-threaded build) does this; before 3.14 a new thread always starts in
    an empty context, and a test that a spinner's thread sees none proves
    nothing there.
    """
    start = threading.Thread.start

    def inheriting_start(self: threading.Thread) -> None:
        context = contextvars.copy_context()
        run = self.run
        self.run = lambda: context.run(run)  # type: ignore[method-assign]
        start(self)

    monkeypatch.setattr(threading.Thread, "start", inheriting_start)


def test_the_spinner_thread_is_a_daemon_that_sees_an_empty_context(monkeypatch):
    inherit_context_in_new_threads(monkeypatch)
    stream = Recorder()
    seen_by_a_plain_thread: list[tuple[object, object]] = []
    token = VAR.set("caller's value")
    try:
        with request_context(request_id="r-1"):
            # The imitation works: a thread started here sees the caller's context.
            plain = threading.Thread(
                target=lambda: seen_by_a_plain_thread.append((VAR.get("unset"), get_request_id()))
            )
            plain.start()
            plain.join()
            with Spinner("Loading", stream=stream, enabled=True, interval=0.001):
                (thread,) = spinner_threads()
                assert thread.daemon
                stream.from_spinner.wait()
    finally:
        VAR.reset(token)
    assert seen_by_a_plain_thread == [("caller's value", "r-1")]
    assert stream.seen
    assert set(stream.seen) == {("unset", None)}


def test_lines_and_log_records_from_four_threads_arrive_whole(terminal):
    logger = logging.getLogger(f"test_spinner.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = SpinnerHandler(terminal.stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    padding = "x" * 50

    def work(n: int, spinner: Spinner) -> None:
        try:
            barrier.wait()
            for i in range(50):
                spinner.write(f"thread {n} line {i} {padding}")
                logger.info("thread %d record %d %s", n, i, padding)
        except BaseException as exc:
            errors.append(exc)

    try:
        with Spinner("Working", stream=terminal.stream, interval=0.0001) as spinner:
            terminal.wait_for(lambda out: frame("⠙", "Working") in out)
            threads = [threading.Thread(target=work, args=(n, spinner)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        logger.removeHandler(handler)
    assert errors == []
    out = terminal.close()
    for n in range(4):
        for i in range(50):
            for line in (f"thread {n} line {i} {padding}", f"thread {n} record {i} {padding}"):
                # Erased, then written whole: no frame inside it, nor between.
                assert out.count(line) == 1
                assert f"{ERASE}{line}\n\r{CYAN}" in out
    # Take the lines out: what is left is frames, and nothing torn.
    rest = re.sub(re.escape(ERASE) + r"thread \d \w+ \d+ x+\n", "", out)
    rest = rest.removeprefix(HIDE)
    rest = re.sub(re.escape(ERASE) + "[^\r]*" + re.escape(SHOW) + "$", "", rest)
    assert re.fullmatch(
        "(" + re.escape(f"\r{CYAN}") + f"[{DOTS}]" + re.escape(f"{RESET} Working\x1b[K") + ")+",
        rest,
    )


def test_a_handler_on_another_stream_of_the_same_terminal_writes_above_the_spinner(terminal):
    other = Path(os.ttyname(terminal.slave)).open("w", encoding="utf-8")  # noqa: SIM115
    handler = SpinnerHandler(other)
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "a record", None, None)
    try:
        with Spinner("Working", stream=terminal.stream, interval=3600):
            handler.handle(record)
            terminal.wait_for(lambda out: "a record\n" in out)
    finally:
        other.close()
    out = terminal.close()
    assert f"{frame('⠋', 'Working')}{ERASE}a record\n{frame('⠋', 'Working')}{ERASE}" in out


def test_a_handler_on_another_terminal_leaves_the_spinner_alone(terminal):
    elsewhere = Terminal()
    handler = SpinnerHandler(elsewhere.stream)
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "a record", None, None)
    try:
        with Spinner("Working", stream=terminal.stream, interval=3600):
            handler.handle(record)
    finally:
        assert elsewhere.close() == "a record\n"
    assert "record" not in terminal.close()


def test_a_handler_without_a_spinner_writes_like_a_stream_handler():
    stream = io.StringIO()
    handler = SpinnerHandler(stream)
    handler.handle(logging.LogRecord("app", logging.INFO, __file__, 1, "a %s", ("record",), None))
    assert stream.getvalue() == "a record\n"


def test_a_handler_reports_its_errors_through_handle_error():
    reported: list[logging.LogRecord] = []

    class Reporting(SpinnerHandler):
        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
            reported.append(record)

    stream = Broken()
    stream.broken = True
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "a record", None, None)
    Reporting(stream).handle(record)  # type: ignore[arg-type]
    assert reported == [record]


def test_a_handler_lets_recursion_errors_through():
    class Deep(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            del record
            raise RecursionError

    handler = SpinnerHandler(io.StringIO())
    handler.setFormatter(Deep())
    with pytest.raises(RecursionError):
        handler.handle(logging.LogRecord("app", logging.INFO, __file__, 1, "m", None, None))


def test_write_prints_a_line_above_the_spinner(terminal):
    with Spinner("Working", stream=terminal.stream, interval=3600) as spinner:
        spinner.write("first")
        spinner.write("second\n")
        spinner.write("third\nfourth")
    out = terminal.close()
    running = frame("⠋", "Working")
    assert f"{running}{ERASE}first\n{running}{ERASE}second\n{running}{ERASE}third\nfourth\n" in out


def test_write_when_the_spinner_is_not_running_writes_the_line():
    stream = io.StringIO()
    spinner = Spinner("Working", stream=stream)
    spinner.write("before")
    with spinner:
        spinner.write("during")
    spinner.write("after")
    assert re.fullmatch(
        r"before\nWorking\nduring\n✔ Working " + ELAPSED + r"\nafter\n", stream.getvalue()
    )


def test_write_lets_errors_of_the_stream_through_and_draws_the_spinner_again():
    stream = Broken()
    with Spinner("Working", stream=stream, enabled=True, interval=3600) as spinner:
        stream.broken = True
        with pytest.raises(BrokenPipeError):
            spinner.write("lost")


def test_a_spinner_started_inside_another_on_its_terminal_writes_its_lines_above_it(terminal):
    @Spinner("Fetching", stream=terminal.stream, interval=0.001)
    def fetch() -> str:
        assert len(spinner_threads()) == 1  # the outer spinner's
        return "data"

    with Spinner("Building", stream=terminal.stream, interval=3600):
        assert fetch() == "data"
    out = terminal.close()
    outer = frame("⠋", "Building")
    assert re.fullmatch(
        re.escape(f"{HIDE}{outer}{ERASE}Fetching\n{outer}{ERASE}{GREEN}✔{RESET} Fetching ")
        + ELAPSED
        + re.escape(f"\n{outer}{ERASE}{GREEN}✔{RESET} Building ")
        + ELAPSED
        + re.escape(f"\n{SHOW}"),
        out,
    )


def test_a_spinner_on_another_stream_of_the_same_terminal_counts_as_inside(terminal):
    other = Path(os.ttyname(terminal.slave)).open("w", encoding="utf-8")  # noqa: SIM115
    try:
        with Spinner("Building", stream=terminal.stream, interval=3600):
            with Spinner("Fetching", stream=other, interval=0.001) as inner:
                assert len(spinner_threads()) == 1
                inner.write("a line")
            terminal.wait_for(lambda out: "✔\x1b[0m Fetching" in out)
    finally:
        other.close()
    out = terminal.close()
    assert out.count(HIDE) == out.count(SHOW) == 1
    outer = frame("⠋", "Building")
    assert f"{outer}{ERASE}Fetching\n{outer}{ERASE}a line\n{outer}{ERASE}{GREEN}✔" in out


def test_the_cursor_stays_hidden_until_the_spinner_that_animates_ends(terminal):
    outer = Spinner("Outer", stream=terminal.stream, interval=3600).start()
    inner = Spinner("Inner", stream=terminal.stream, interval=3600).start()
    inner.ok()
    assert SHOW not in terminal.wait_for(lambda out: "✔\x1b[0m Inner" in out)
    outer.ok()
    out = terminal.close()
    assert out.count(HIDE) == out.count(SHOW) == 1
    assert out.endswith(SHOW)


def test_a_spinner_left_inside_animates_not_when_the_outer_one_ends(terminal):
    outer = Spinner("Outer", stream=terminal.stream, interval=3600).start()
    inner = Spinner("Inner", stream=terminal.stream, interval=3600).start()
    outer.ok()
    inner.text = "Inner, still"
    # The terminal is free: the next spinner animates, and the inner one's
    # final line goes above it.
    later = Spinner("Later", stream=terminal.stream, interval=3600).start()
    assert len(spinner_threads()) == 1
    inner.ok()
    later.ok()
    out = terminal.close()
    assert out.count(HIDE) == out.count(SHOW) == 2
    assert re.search(
        re.escape(f"{SHOW}{HIDE}{frame('⠋', 'Later')}{ERASE}{GREEN}✔{RESET} Inner, still ")
        + ELAPSED
        + re.escape(f"\n{frame('⠋', 'Later')}{ERASE}"),
        out,
    )


def test_decorated_calls_from_four_threads_at_once_animate_one_spinner(terminal):
    barrier = threading.Barrier(4)
    threads_seen: list[int] = []

    @Spinner("Fetching", stream=terminal.stream, interval=0.001)
    def fetch() -> None:
        barrier.wait()  # all four spinners run
        threads_seen.append(len(spinner_threads()))
        barrier.wait()

    workers = [threading.Thread(target=fetch) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out = terminal.close()
    assert threads_seen == [1, 1, 1, 1]
    assert out.count(HIDE) == out.count(SHOW) == 1
    assert out.count("Fetching\n") == 3  # the start lines of the three that don't animate
    assert len(re.findall(re.escape(f"✔{RESET} Fetching ") + ELAPSED + "\n", out)) == 4


def test_spinners_on_two_terminals_both_animate(terminal):
    elsewhere = Terminal()
    try:
        with (
            Spinner("Here", stream=terminal.stream, interval=0.001),
            Spinner("There", stream=elsewhere.stream, interval=0.001),
        ):
            assert len(spinner_threads()) == 2
            elsewhere.wait_for(lambda out: frame("⠙", "There") in out)
            terminal.wait_for(lambda out: frame("⠙", "Here") in out)
    finally:
        there = elsewhere.close()
    assert there.startswith(HIDE + frame("⠋", "There"))
    assert terminal.close().startswith(HIDE + frame("⠋", "Here"))


def test_writes_and_new_texts_from_other_threads_while_stop_runs(terminal):
    spinner = Spinner("Working", stream=terminal.stream, interval=0.0001).start()
    terminal.wait_for(lambda out: frame("⠙", "Working") in out)
    barrier = threading.Barrier(5)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(100):
                spinner.write(f"thread {n} line {i}")
                spinner.text = f"thread {n} text {i}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    barrier.wait()
    spinner.stop()
    for thread in threads:
        thread.join()
    assert errors == []
    out = terminal.close()
    # Each line whole, once; after the end, nothing else.
    for n in range(4):
        for i in range(100):
            line = f"thread {n} line {i}\n"
            after_what = f"(?:(?<=\n)|(?<={re.escape(ERASE)})|(?<={re.escape(SHOW)}))"
            assert len(re.findall(after_what + line, out)) == 1
    spinning, after = out.split(SHOW)
    assert re.fullmatch(r"(thread \d line \d+\n)*", after)
    # Take the lines out: what is left is frames, whole, and the end.
    spinning = re.sub(re.escape(ERASE) + r"thread \d line \d+\n", "", spinning)
    assert re.fullmatch(
        re.escape(HIDE)
        + "("
        + re.escape(f"\r{CYAN}")
        + f"[{DOTS}]"
        + re.escape(RESET)
        + r" (Working|thread \d text \d+)"
        + re.escape("\x1b[K")
        + ")+"
        + re.escape(ERASE),
        spinning,
    )


def test_a_terminal_that_stops_reading_holds_up_only_its_own_writers():
    stuck = Held("Stuck")  # a frame write never returns, as after Ctrl-S
    spinner = Spinner("Stuck", stream=stuck, enabled=True, interval=0.001)
    # The first frame, from start(), is let through.
    stuck.release.set()
    spinner.start()
    stuck.release.clear()
    stuck.holding.clear()
    try:
        stuck.holding.wait()  # the spinner's thread is stuck in write()
        # None of these waits for it (if one did, the suite's timeout would
        # fail the test).
        assert spinner.running
        assert repr(spinner) == "<Spinner 'Stuck' running>"
        spinner.text = "Stuck still"
        elsewhere = io.StringIO()
        SpinnerHandler(elsewhere).handle(
            logging.LogRecord("app", logging.INFO, __file__, 1, "a record", None, None)
        )
        with Spinner("Elsewhere", stream=elsewhere, enabled=True, interval=3600) as other:
            other.write("a line")
        assert elsewhere.getvalue().startswith("a record\n" + HIDE)
    finally:
        stuck.release.set()
        spinner.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_in_a_forked_child_the_parents_spinner_has_ended(terminal):
    spinner = Spinner("Parent", stream=terminal.stream, interval=3600).start()
    read_end, write_end = os.pipe()
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        assert spinner._run is not None
        with spinner._run.gate.lock, _spinner._LOCK:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads: that is
        # the situation under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover (the child; coverage measures the parent)
        try:
            # The locks a parent's thread held are free here: no deadlock.
            report = f"running={spinner.running}"
            spinner.ok("child")
            spinner.write("from the child")
            os.write(write_end, report.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    reaped = False
    try:
        os.waitpid(pid, 0)
        reaped = True
    finally:
        # If the wait fails (pytest-timeout, when the child deadlocks): a
        # child left running keeps its copy of the terminal open, and the
        # terminal's close() would wait for it for ever; so would pytest's
        # exit for the holder, which is no daemon. SIGKILL can't be refused.
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        release.set()
        holder.join()
    with os.fdopen(read_end, encoding="utf-8") as child:
        report = child.read()
    spinner.ok("Parent done")
    out = terminal.close()
    assert report == "running=False"
    assert out.count("✔") == 1
    assert "from the child\n" in out
    assert "child (" not in out


def test_forgetting_after_fork_ends_every_spinner_in_this_process(monkeypatch):
    originals = {name: getattr(_spinner, name) for name in ("_LOCK", "_RUNNING", "_GATES")}
    for name, value in originals.items():
        monkeypatch.setattr(_spinner, name, value)  # restored after the test
    stream = io.StringIO()
    spinner = Spinner("Loading", stream=stream, enabled=True, interval=3600).start()
    run = spinner._run
    assert run is not None
    _spinner._forget_after_fork()
    # New objects, not the old ones cleared: a parent's thread may have been
    # changing those when it forked.
    for name, value in originals.items():
        assert getattr(_spinner, name) is not value
    assert spinner in originals["_RUNNING"]
    assert not spinner.running
    # A forked child has no spinner thread; this process has one to end.
    run.stopping = True
    run.wake.set()
    (thread,) = spinner_threads()
    thread.join()
    spinner.text = "no wake-up for a run that has ended"
    spinner.ok()
    assert not stream.getvalue().endswith(SHOW)
    originals["_RUNNING"].discard(spinner)


# -- decorator and async ---------------------------------------------------------


def test_a_decorated_function_spins_a_spinner_of_its_own_for_each_call():
    stream = io.StringIO()

    @Spinner("Adding", stream=stream)
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3
    assert add(3, 4) == 7
    assert re.fullmatch(r"(Adding\n✔ Adding " + ELAPSED + r"\n){2}", stream.getvalue())


def test_a_decorated_function_that_raises_ends_with_a_failure_line():
    stream = io.StringIO()

    @Spinner("Dividing", stream=stream)
    def divide(a: int, b: int) -> float:
        return a / b

    with pytest.raises(ZeroDivisionError):
        divide(1, 0)
    assert re.fullmatch(r"Dividing\n✖ Dividing " + ELAPSED + r"\n", stream.getvalue())


def test_a_decorated_coroutine_function_and_async_with():
    stream = io.StringIO()

    @Spinner("Fetching", stream=stream)
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "data"

    async def main() -> str:
        async with Spinner("Parsing", stream=stream) as spinner:
            assert spinner.running
            return await fetch()

    assert asyncio.run(main()) == "data"
    assert re.fullmatch(
        r"Parsing\nFetching\n✔ Fetching " + ELAPSED + r"\n✔ Parsing " + ELAPSED + r"\n",
        stream.getvalue(),
    )


def test_a_generator_function_cannot_be_decorated():
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"Spinner\(\) can't decorate the generator function"):
        Spinner("Counting")(numbers)


# -- bad input ---------------------------------------------------------------------


class BinaryMode:
    """A file-like object opened for bytes, not derived from io's classes."""

    mode = "wb"

    def write(self, data: bytes) -> int:
        return len(data)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"text": 42}, TypeError, r"text must be a str, got int 42\. Format the value first"),
        ({"text": None}, TypeError, r"text must be a str, got NoneType None"),
        ({"frames": ""}, ValueError, r"frames must be a str .* not empty: give at least one"),
        ({"frames": []}, ValueError, r"not empty"),
        ({"frames": 7}, TypeError, r"frames must be a str \(one frame per character\) .* got int"),
        ({"frames": ["a", 1]}, TypeError, r"got the frame 1 \(int\)"),
        ({"frames": ["a\n"]}, ValueError, r"each frame must print on one line"),
        ({"frames": ["\x1b[31m*"]}, ValueError, r"escape codes"),
        ({"interval": 0}, ValueError, r"interval must be a number of seconds above 0"),
        ({"interval": -1}, ValueError, r"got -1\."),
        ({"interval": float("nan")}, ValueError, r"got nan\."),
        ({"interval": float("inf")}, ValueError, r"at most threading\.TIMEOUT_MAX"),
        ({"frames": ["a", ""]}, ValueError, r"each frame must show at least one character"),
        ({"interval": "0.1"}, TypeError, r"interval must be a real number of seconds, .* got str"),
        ({"interval": 10**400}, ValueError, r"at most threading\.TIMEOUT_MAX"),
        ({"interval": True}, TypeError, r"got bool True"),
        ({"stream": object()}, TypeError, r"stream must be a text stream with a write\(\)"),
        ({"stream": "out.txt"}, TypeError, r"got str 'out\.txt'"),
        (
            {"stream": io.BytesIO()},
            TypeError,
            r"stream must be a text stream, but BytesIO .* bytes",
        ),
        ({"stream": io.BufferedWriter(io.BytesIO())}, TypeError, r"io\.TextIOWrapper\(stream"),
        ({"stream": BinaryMode()}, TypeError, r"sys\.stderr, not sys\.stderr\.buffer"),
        ({"enabled": "yes"}, TypeError, r"enabled must be True .* got str 'yes'"),
        ({"enabled": 1}, TypeError, r"got int 1"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, error, message):
    text = kwargs.pop("text", "Loading")
    with pytest.raises(error, match=message):
        Spinner(text, **kwargs)


def test_interval_may_be_any_real_number():
    stream = Recorder()
    with Spinner("Go", stream=stream, enabled=True, interval=Fraction(1, 1000)):
        stream.from_spinner.wait()  # a frame after the first


def test_frames_may_be_any_iterable_of_str():
    stream = io.StringIO()
    with Spinner("Go", frames=iter(["a", "b"]), stream=stream, enabled=True, interval=3600):
        pass
    assert frame("a", "Go", colour=False) in stream.getvalue()


def test_a_text_that_is_no_str_is_refused_everywhere():
    spinner = Spinner("Loading", stream=io.StringIO())
    with pytest.raises(TypeError, match="text must be a str"):
        spinner.text = 3  # type: ignore[assignment]
    with pytest.raises(TypeError, match="line must be a str"):
        spinner.write(b"bytes")  # type: ignore[arg-type]
    with spinner:
        with pytest.raises(TypeError, match="text must be a str"):
            spinner.ok(3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="text must be a str"):
            spinner.fail(3)  # type: ignore[arg-type]
        assert spinner.running
