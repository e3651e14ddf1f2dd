"""Spinner: a terminal spinner that stops at once and keeps CI logs clean.

A daemon thread draws the frames while the caller works. Between frames it
waits on a :class:`threading.Event`, not in a sleep, so ``stop()`` wakes it at
once. Every write to one terminal (frames, final lines, lines and log records
printed above a spinner) goes through that terminal's lock, so a line never
tears and never interleaves with a frame, and a terminal that stops reading
holds up only the writers to it.
"""

from __future__ import annotations

import atexit
import codecs
import contextvars
import functools
import io
import logging
import numbers
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO, TypeVar

from contextual._core.decorate import AsyncToo, decorate
from contextual._core.fork import after_fork_in_child

from ._textwidth import cut, one_line, width

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    _StreamHandler = logging.StreamHandler[TextIO]
else:
    # Not subscriptable at run time before Python 3.11.
    _StreamHandler = logging.StreamHandler

__all__ = ["Spinner", "SpinnerHandler"]

_F = TypeVar("_F", bound=Callable[..., Any])

_HIDE_CURSOR: Final = "\x1b[?25l"
_SHOW_CURSOR: Final = "\x1b[?25h"
_ERASE_LINE: Final = "\r\x1b[2K"
_ERASE_TO_END: Final = "\x1b[K"
_CYAN: Final = "\x1b[36m"
_GREEN: Final = "\x1b[32m"
_RED: Final = "\x1b[31m"
_RESET: Final = "\x1b[0m"

_FRAMES: Final = tuple("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
# (ok mark, fail mark, what ends cut text), where the stream can show them.
_MARKS: Final = ("✔", "✖", "…")
# For streams whose encoding can't (ASCII, some Windows code pages).
_ASCII_FRAMES: Final = tuple("-\\|/")
_ASCII_MARKS: Final = ("OK", "FAIL", "...")

# The least time between two draws for a new text, when frames are further
# apart: a loop that sets the text thousands of times a second must not write
# thousands of lines to the terminal.
_TEXT_GAP: Final = 0.1

# The clock of start times, elapsed times and frames; a name of this module,
# so that a test can set it without changing time.monotonic for everyone.
_clock = time.monotonic


class _Stream(Protocol):
    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class _Discard:
    """Where a spinner writes when ``sys.stderr`` is ``None`` (pythonw, some daemons)."""

    def write(self, text: str, /) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _Gate:
    """The lock for writes to one terminal, and the run that animates there."""

    __slots__ = ("__weakref__", "lock", "run")

    def __init__(self) -> None:
        # Reentrant, so that a stream whose write() logs through a
        # SpinnerHandler to the same terminal doesn't deadlock its own thread.
        self.lock = threading.RLock()
        # One at a time: a spinner that starts while another animates on the
        # same terminal writes plain lines above it instead.
        self.run: _Run | None = None


# Guards _RUNNING, _GATES, _exiting and each spinner's current run. Never held
# while writing: a terminal that stops reading (Ctrl-S) must not hold up
# spinners and handlers elsewhere. Reentrant, since the garbage collector may
# run a __del__ that stops a spinner while this thread holds it.
_LOCK = threading.RLock()
# The spinners that run now, for the exit hook. Weak, so that the set never
# keeps a spinner alive: one that animates is held by its thread until it
# stops, and one that doesn't has no cursor to restore.
_RUNNING: weakref.WeakSet[Spinner] = weakref.WeakSet()
# The gate of each terminal (or stream) in use, by _gate_for()'s key. Weak: a
# gate lives while a run or a writer holds it.
_GATES: weakref.WeakValueDictionary[object, _Gate] = weakref.WeakValueDictionary()
# Set by the exit hook: a spinner started after it (by a daemon thread, before
# the interpreter stops it) must not hide the cursor again.
_exiting = False


class Spinner(AsyncToo["Spinner"]):
    r"""Show a spinner while a block, a call or a stretch of work runs.

    A context manager (``with``, ``async with``), a decorator for functions
    and coroutine functions, and an object with :meth:`start` and
    :meth:`stop` for manual use. The ``with`` block (or the decorated call)
    ends with :meth:`ok` when it returns, or exits through ``sys.exit()``
    with status 0 or ``None``, and with :meth:`fail` when it raises anything
    else, ``KeyboardInterrupt`` included; the exception propagates.

    What it writes depends on the stream, looked up when the spinner starts:

    - On an interactive terminal (``isatty()``, and ``TERM`` is not
      ``dumb``), a thread redraws one line every ``interval`` seconds: a
      frame and the text, cut to the terminal's width. The cursor is hidden
      while it spins and shown again when it ends: on :meth:`stop`, when the
      block raises, on ``KeyboardInterrupt``, and at interpreter exit for a
      spinner never stopped. (Not when a signal that Python doesn't handle
      ends the process, such as ``SIGKILL``, or ``SIGTERM`` without a
      handler: then nothing runs.) Marks are coloured unless ``NO_COLOR`` is
      set.
    - Anywhere else (a pipe, a file, a CI log): no frames, no ``\r``, no
      escape codes and no thread, just one line with the text when it starts
      and one final line when it ends.

    The final line shows a mark, the text and the time since the start, such
    as ``✔ Loading (2.1s)`` (``OK Loading (2.1s)`` and ``FAIL ...`` where the
    stream's encoding has no ``✔``).

    Print with :meth:`write`, and log through a :class:`SpinnerHandler`,
    while it spins: each line appears above the spinner, whole. (A bare
    ``print()`` to the same terminal would land on the spinner's line.)
    Spinners may nest, as when a decorated function runs inside another
    spinner's block, or run in several threads: while one animates on a
    terminal, another that starts there animates not, but writes its start
    and final lines above the one that does. A spinner started after the
    interpreter's exit hook ran (by a daemon thread) writes those two lines
    too, so that nothing hides the cursor again.

    What code elsewhere sees: the spinner's thread starts from an empty
    :mod:`contextvars` context, so it never sees, nor keeps alive, the
    request context or any other ContextVar of the code that started it. A
    spinner belongs to its process: in a child made by ``fork()``, a spinner
    that ran in the parent is stopped and writes nothing, so the parent's
    spinner goes on undisturbed.

    Starting a running spinner does nothing. Stopping one that is not
    running (never started, or already ended) writes nothing, so :meth:`ok`
    or :meth:`fail` inside a ``with`` block decides the final line, and the
    end of the block adds none. A stopped spinner can start again, with a
    new start time. If the stream raises (closed, a broken pipe, or any
    error of a capture tool or a wrapper that colours text), the spinner
    never passes the error on: a frame that fails ends the animation, a
    final line that fails is left out, and the spinner ends as usual, so the
    block's own exception is the one that propagates and the terminal is
    free for the next spinner. Only its first write lets through an error
    that is not a closed or broken stream (a stream that takes bytes, say):
    :meth:`start` undoes itself and raises it, before the work runs.

    Args:
        text: What the spinner says, on one line. Change it while it runs
            with the :attr:`text` attribute.
        frames: The animation: a str (each character a frame) or a sequence
            of str. By default, and where the stream's encoding can't show
            the frames given, braille dots, or ``-\|/`` where it can't show
            those either.
        interval: Seconds between frames: a real number (an int, a float, a
            :class:`~fractions.Fraction`) above 0.
        stream: Where to write: a text stream. ``None`` for ``sys.stderr``,
            looked up at each start (so redirection and pytest's capture
            work); if that is ``None`` too, the spinner writes nothing.
        enabled: ``True`` animates even where the stream is no terminal,
            ``False`` never animates; ``None`` decides by the stream, as
            above.

    Raises:
        TypeError: ``text`` is not a str, a frame is not a str, ``interval``
            is not a real number, ``stream`` has no ``write()`` or takes
            bytes, or ``enabled`` is not a bool or ``None``.
        ValueError: ``frames`` is empty, a frame is empty or doesn't print
            on one line, or ``interval`` is not a finite number above 0.

    Example:
        Outside a terminal, as in a CI log, a spinner writes two lines:

        >>> import sys
        >>> from contextual.spinner import Spinner
        >>> with Spinner("Loading", stream=sys.stdout):
        ...     pass  # the work
        Loading
        ✔ Loading (...s)

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_enabled",
        "_given_frames",
        "_interval",
        "_run",
        "_stream_arg",
        "_text",
    )

    def __init__(
        self,
        text: str = "",
        *,
        frames: str | Iterable[str] | None = None,
        interval: float | numbers.Real = 0.1,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self._text = _checked_text(text, "text")
        self._given_frames = _checked_frames(frames)
        self._interval = _checked_interval(interval)
        self._stream_arg = _checked_stream(stream)
        self._enabled = _checked_enabled(enabled)
        # The current run, or the last one; set by start().
        self._run: _Run | None = None

    def __repr__(self) -> str:
        return f"<Spinner {self._text!r} {'running' if self.running else 'stopped'}>"

    @property
    def text(self) -> str:
        """What the spinner says.

        Set it while the spinner spins, and its thread draws the new text at
        the next frame, or within a tenth of a second where frames are
        further apart. However often it is set, the line is drawn no more
        often than that. Outside a terminal only the start and final lines
        show the text, so a new text shows in the final line.
        """
        return self._text

    @text.setter
    def text(self, text: str) -> None:
        self._text = _checked_text(text, "text")
        run = self._run
        # Only a wake-up for the spinner's thread, and no lock: the setter
        # neither writes nor waits for a terminal that stopped reading.
        if run is not None and self in _RUNNING:
            run.wake.set()

    @property
    def running(self) -> bool:
        """Whether the spinner has started and not yet ended."""
        # Without a lock (a set lookup is atomic): a terminal that stopped
        # reading must not hold this up.
        return self in _RUNNING

    def start(self) -> Self:
        """Start spinning; return the spinner. Does nothing if it runs already.

        Writes the first frame (or, outside a terminal, the start line)
        before it returns. If that write raises an error that is not a
        closed or broken stream, or anything interrupts :meth:`start`, it
        undoes itself: the spinner is not running, no thread goes on
        drawing, and the cursor is shown, before the error propagates.
        """
        stream = self._current_stream()
        gate = _gate_for(stream)
        run = None
        try:
            with gate.lock:
                run = self._register(stream, gate)
                if run is None:
                    return self
                try:
                    self._begin(run)
                except BaseException:
                    self._abandon(run)
                    raise
        finally:
            # After the gate's lock is released: the thread takes it to see
            # that it must end.
            if run is not None and run.stopping:
                _join(run)
        return self

    def stop(self) -> None:
        """Stop spinning and erase the spinner's line; write no final line.

        Returns once the spinner's thread has ended, at once rather than
        after the current frame's interval, whichever thread ends the
        spinner (two that call :meth:`stop` together both wait). Writes
        nothing if the spinner is not running. Ends the spinner even if its
        stream raises, and never raises what the stream does.
        """
        self._end(None, success=None)

    def ok(self, text: str | None = None) -> None:
        """End with a success line: ``✔``, the text and the time taken.

        Writes nothing if the spinner is not running. If the stream raises,
        the line is left out and the spinner ends all the same.

        Args:
            text: The final line's text; the spinner's :attr:`text` if
                ``None``.
        """
        self._end(text, success=True)

    def fail(self, text: str | None = None) -> None:
        """End with a failure line: ``✖``, the text and the time taken.

        Writes nothing if the spinner is not running. If the stream raises,
        the line is left out and the spinner ends all the same.

        Args:
            text: The final line's text; the spinner's :attr:`text` if
                ``None``.
        """
        self._end(text, success=False)

    def write(self, line: str) -> None:
        """Print ``line`` and a newline above the spinner, never torn by a frame.

        Safe from any thread. A line that ends with a newline gets no second
        one. When the spinner is not running, this simply writes the line to
        the stream the spinner would use. Errors of the stream in writing the
        line propagate, as they do from ``print()``; those in erasing and
        drawing the spinner are the spinner's, and it swallows them.

        Args:
            line: The text to print; it may span several lines.
        """
        line = _checked_text(line, "line")
        if not line.endswith("\n"):
            line += "\n"
        run = self._run
        stream = run.stream if run is not None and self in _RUNNING else self._current_stream()
        _write_above(stream, line)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # sys.exit() and sys.exit(0) end the program with status 0: a success.
        code = getattr(exc, "code", None)
        if exc_type is None or (
            issubclass(exc_type, SystemExit)
            and (code is None or (isinstance(code, int) and code == 0))
        ):
            self.ok()
        else:
            self.fail()

    def __call__(self, fn: _F) -> _F:
        """Decorate ``fn``: every call spins a spinner of its own, made like this one."""
        return decorate(fn, self._copy, what="Spinner()")

    def _copy(self) -> Spinner:
        return Spinner(
            self._text,
            frames=self._given_frames,
            interval=self._interval,
            stream=self._stream_arg,
            enabled=self._enabled,
        )

    def _current_stream(self) -> _Stream:
        stream = self._stream_arg if self._stream_arg is not None else sys.stderr
        return stream if stream is not None else _Discard()

    def _register(self, stream: _Stream, gate: _Gate) -> _Run | None:
        """Make a run on ``stream`` and register it; ``None`` if the spinner runs already.

        Called with the gate's lock held.
        """
        tty = _isatty(stream)
        if self._enabled is None:
            animate = tty and os.environ.get("TERM") != "dumb"
        else:
            animate = self._enabled
        # NO_COLOR counts when set and not empty (https://no-color.org).
        colour = animate and tty and not os.environ.get("NO_COLOR")
        run = _Run(self, stream, gate, self._given_frames, colour=colour)
        with _LOCK:
            if self in _RUNNING:
                return None
            # One animates per terminal; the others write plain lines above
            # it. After the exit hook, none: nothing would show the cursor.
            run.animated = animate and gate.run is None and not _exiting
            self._run = run
            _RUNNING.add(self)
        if run.animated:
            gate.run = run
        _register_exit_hook()
        return run

    def _begin(self, run: _Run) -> None:
        """Write the run's first output and start its thread; with the gate's lock held."""
        text = self._text
        if not run.animated:
            _write_above(run.stream, run.printable(text) + "\n", run.gate, own=True, first=True)
            return
        thread = threading.Thread(
            target=self._spin, args=(run,), name="contextual-spinner", daemon=True
        )
        # Known before it starts: an interrupt in start() may come after the
        # thread began, and the thread must then be joined.
        run.thread = thread
        # Set before it starts, so that it waits for the next frame, or for a
        # new text, from the first.
        run.shown = text
        run.frame_due = run.started + self._interval
        # Where new threads inherit their starter's context, the spinner would
        # see the caller's request context and keep it alive while it spins.
        # Start it from an empty one everywhere.
        contextvars.Context().run(thread.start)
        run.hidden = True
        run.draw(text, _HIDE_CURSOR, first=True)

    def _abandon(self, run: _Run) -> None:
        """Undo a start() that failed part way; with the gate's lock held."""
        run.stopping = True
        run.wake.set()
        if run.gate.run is run:
            run.gate.run = None
        with _LOCK:
            _RUNNING.discard(self)
        if run.hidden:
            # The first frame's write raised or was interrupted: the cursor
            # may be hidden. _emit() swallows what this write raises, so the
            # original error is the one reported.
            _emit(run.stream, _ERASE_LINE + _SHOW_CURSOR)

    def _end(self, text: str | None, *, success: bool | None) -> None:
        if text is not None:
            text = _checked_text(text, "text")
        run = self._run
        try:
            # Seen before the gate's lock is taken: in a child made by fork(),
            # the parent's spinners have ended, and a thread of the parent may
            # have held that lock.
            if run is None or self not in _RUNNING:
                return
            with run.gate.lock:
                with _LOCK:
                    if self._run is not run or self not in _RUNNING:
                        return  # another thread ended it meanwhile
                run.stopping = True
                run.wake.set()
                final = ""
                if success is not None:
                    final = run.final_line(success, self._text if text is None else text)
                if run.animated:
                    _emit(run.stream, _ERASE_LINE + final + _SHOW_CURSOR)
                    run.gate.run = None
                elif final:
                    _write_above(run.stream, final, run.gate, own=True)
                # Only now: if this thread is interrupted before it got here,
                # the spinner is still registered and the exit hook ends it
                # again.
                with _LOCK:
                    _RUNNING.discard(self)
        finally:
            _join(run)

    def _spin(self, run: _Run) -> None:
        interval = self._interval
        gap = min(interval, _TEXT_GAP)
        while True:
            due = run.frame_due
            if run.shown != self._text:
                due = min(due, run.drawn_at + gap)
            run.wake.wait(due - _clock())
            with run.gate.lock:
                # stop() may have ended the run while this thread waited for
                # the lock: its line is erased, and must stay so.
                if run.stopping:
                    return
                run.wake.clear()
                now = _clock()
                if now >= run.frame_due:
                    run.index += 1
                    run.frame_due = now + interval
                elif run.shown == self._text or now < run.drawn_at + gap:
                    # Woken for a text already shown, or too soon to show it.
                    continue
                if not run.draw(self._text):
                    return


class _Run:
    """One run of a spinner, from start() to its end: where it writes, and how."""

    __slots__ = (
        "animated",
        "colour",
        "drawn_at",
        "encoding",
        "fd",
        "frame_due",
        "frames",
        "gate",
        "hidden",
        "index",
        "lines",
        "marks",
        "owner",
        "rendered_for",
        "shown",
        "started",
        "stopping",
        "stream",
        "thread",
        "wake",
    )

    def __init__(
        self,
        owner: Spinner,
        stream: _Stream,
        gate: _Gate,
        frames: tuple[str, ...] | None,
        *,
        colour: bool,
    ) -> None:
        self.owner = owner
        self.stream = stream
        self.gate = gate
        self.animated = False  # decided by Spinner._register()
        self.colour = colour
        self.encoding = encoding = _encoding_of(stream)
        fancy = encoding is None or _can_encode("".join((*_FRAMES, *_MARKS)), encoding)
        if frames is None or not (encoding is None or _can_encode("".join(frames), encoding)):
            frames = _FRAMES if fancy else _ASCII_FRAMES
        self.frames = frames
        self.marks = _MARKS if fancy else _ASCII_MARKS
        self.fd = _fileno(stream)
        self.started = self.drawn_at = _clock()
        self.frame_due = self.started  # of an animated run: set by Spinner._begin()
        self.index = 0
        self.shown = ""
        self.rendered_for: tuple[str, int] | None = None
        self.lines: list[str] = []
        # wake: set by stop() and by a new text; stopping: set by stop().
        self.wake = threading.Event()
        self.stopping = False
        self.hidden = False  # set just before the first frame hides the cursor
        self.thread: threading.Thread | None = None

    def draw(self, text: str, before: str = "", *, first: bool = False) -> bool:
        """Draw the current frame with ``text``; return False if the stream failed.

        ``first`` marks the run's first write, as for :func:`_emit`.
        """
        self.shown = text
        self.drawn_at = _clock()
        return _emit(self.stream, before + self.frame_line(text), first=first)

    def frame_line(self, text: str) -> str:
        columns = _columns(self.fd)
        if self.rendered_for != (text, columns):
            self.lines = self.render(text, columns)
            self.rendered_for = (text, columns)
        return self.lines[self.index % len(self.lines)]

    def render(self, text: str, columns: int) -> list[str]:
        text = self.printable(text)
        lines = []
        for frame in self.frames:
            # One column short of the width: a line that fills the last
            # column makes some terminals wrap, and "\r" then misses it.
            room = columns - 1 - width(frame) - 1
            shown = cut(text, room, self.marks[2])
            coloured = f"{_CYAN}{frame}{_RESET}" if self.colour else frame
            body = f"{coloured} {shown}" if shown else coloured
            lines.append(f"\r{body}{_ERASE_TO_END}")
        return lines

    def final_line(self, success: bool, text: str) -> str:
        mark = self.marks[0] if success else self.marks[1]
        if self.colour:
            mark = f"{_GREEN if success else _RED}{mark}{_RESET}"
        elapsed = _format_elapsed(_clock() - self.started)
        text = self.printable(text)
        return f"{mark} {text} ({elapsed})\n" if text else f"{mark} ({elapsed})\n"

    def printable(self, text: str) -> str:
        text = one_line(text)
        encoding = self.encoding
        if encoding is not None and not _can_encode(text, encoding):
            text = text.encode(encoding, "replace").decode(encoding)
        return text


class SpinnerHandler(_StreamHandler):
    """A :class:`logging.StreamHandler` whose records print above a running spinner.

    Use it in place of a ``StreamHandler``: it writes each record the same
    way, and when a :class:`Spinner` spins on the same terminal (the same
    stream, or another stream open on the same terminal device), it erases
    the spinner's line, writes the record whole and draws the spinner again,
    under the lock that all writes to that terminal take. Records logged
    from any thread never tear, nor interleave with a frame. Without a
    running spinner it is a plain ``StreamHandler``; a handler whose stream
    is on no spinner's terminal never waits for a spinner. An error of the
    handler's stream goes to :meth:`~logging.Handler.handleError`, as for a
    ``StreamHandler``; one of the spinner's stream, while the handler erases
    and draws the spinner, is the spinner's, which swallows it.

    Args:
        stream: Where to write; ``sys.stderr`` (when the handler is made) if
            ``None``, as for ``StreamHandler``.

    Example:
        Send the root logger's records to stderr, above any spinner there::

            logging.basicConfig(level=logging.INFO, handlers=[SpinnerHandler()])

    .. versionadded:: 0.1.0
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Write the formatted record and the terminator above any spinner."""
        try:
            _write_above(self.stream, self.format(record) + self.terminator)
        except RecursionError:  # as StreamHandler does: let it through
            raise
        except Exception:  # noqa: BLE001 (a handler reports its errors, never raises them)
            self.handleError(record)


def _gate_for(stream: _Stream) -> _Gate:
    """Return the gate of the terminal (or file) behind ``stream``, else of the stream."""
    key = _terminal_id(_fileno(stream)) or id(stream)
    with _LOCK:
        gate = _GATES.get(key)
        if gate is None:
            gate = _GATES[key] = _Gate()
    return gate


def _write_above(
    stream: _Stream,
    text: str,
    gate: _Gate | None = None,
    *,
    own: bool = False,
    first: bool = False,
) -> None:
    """Write ``text`` to ``stream`` above the spinner that animates on its terminal.

    ``own`` marks a spinner's own start or final line, written with
    :func:`_emit` like every write of a spinner's own, and ``first`` its
    start line. The spinner below is erased and drawn again the same way:
    whatever its stream raises stays with it.
    """
    if gate is None:
        gate = _gate_for(stream)
    with gate.lock:
        below = gate.run
        if below is not None:
            _emit(below.stream, _ERASE_LINE)
        try:
            if own:
                _emit(stream, text, first=first)
            else:
                stream.write(text)
                stream.flush()
        finally:
            if below is not None:
                below.draw(below.owner.text)


def _emit(stream: _Stream, text: str, *, first: bool = False) -> bool:
    """Write and flush a spinner's own output; return False if the stream failed.

    A spinner only shows how the work goes, so what its stream raises never
    reaches that work: not through the spinner's thread, nor through the
    end of a ``with`` block, where it would replace the block's own
    exception (and leave the spinner registered, its terminal taken). Only
    the ``first`` write of a run lets through an error that is not a closed
    or broken stream, so that :meth:`Spinner.start` reports a stream that
    can never take the spinner's text (one that takes bytes) before the
    work runs.
    """
    try:
        stream.write(text)
        stream.flush()
    # Closed, a broken pipe, an unencodable text (OSError, ValueError), or
    # anything a capture tool or a wrapper that colours text may raise.
    except Exception as error:
        if first and not isinstance(error, (OSError, ValueError)):
            raise
        return False
    return True


def _join(run: _Run | None) -> None:
    """Wait for the run's thread to end, if it has one that runs."""
    thread = None if run is None else run.thread
    # Not alive: ended, or not started yet by a start() that was interrupted,
    # which then finds the run stopped before it draws anything.
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join()


@functools.cache
def _register_exit_hook() -> None:
    # One hook for every spinner, registered on the first start.
    atexit.register(_end_all)


def _end_all() -> None:
    """At exit: end every spinner still running, so no terminal keeps a hidden cursor."""
    global _exiting  # noqa: PLW0603 (the one flag, for every spinner)
    with _LOCK:
        _exiting = True
        spinners = list(_RUNNING)
    for spinner in spinners:
        spinner.stop()


@after_fork_in_child
def _forget_after_fork() -> None:
    # The child has none of the parent's spinner threads, and a lock may have
    # been held by one of them when the parent forked. The parent's spinners
    # go on in the parent; in the child they have ended. New objects, not
    # cleared ones: a thread of the parent may have been changing them.
    global _LOCK, _RUNNING, _GATES  # noqa: PLW0603 (rebinding them in the child is the point)
    _LOCK = threading.RLock()
    _RUNNING = weakref.WeakSet()
    _GATES = weakref.WeakValueDictionary()


# -- checks ------------------------------------------------------------------------


def _checked_text(text: object, what: str) -> str:
    if isinstance(text, str):
        return text
    msg = (
        f"{what} must be a str, got {type(text).__name__} {text!r}. Format the value "
        f'first, for example f"Loading {{name}}".'
    )
    raise TypeError(msg)


def _checked_stream(stream: object) -> TextIO | None:
    if stream is None:
        return None
    if not callable(getattr(stream, "write", None)):
        msg = (
            f"stream must be a text stream with a write() method, such as sys.stdout or "
            f"an open file, or None for sys.stderr; got {type(stream).__name__} {stream!r}."
        )
        raise TypeError(msg)
    mode = getattr(stream, "mode", "")
    if isinstance(stream, (io.RawIOBase, io.BufferedIOBase)) or (
        isinstance(mode, str) and "b" in mode
    ):
        msg = (
            f"stream must be a text stream, but {type(stream).__name__} {stream!r} takes "
            f"bytes. Pass a text stream instead (sys.stderr, not sys.stderr.buffer; a file "
            f'opened with mode "w", not "wb"), or wrap this one: '
            f'io.TextIOWrapper(stream, encoding="utf-8", write_through=True).'
        )
        raise TypeError(msg)
    return stream  # type: ignore[return-value]


def _checked_enabled(enabled: object) -> bool | None:
    if enabled is None or isinstance(enabled, bool):
        return enabled
    msg = (
        f"enabled must be True (always animate), False (never) or None (only on an "
        f"interactive terminal); got {type(enabled).__name__} {enabled!r}."
    )
    raise TypeError(msg)


def _checked_frames(frames: object) -> tuple[str, ...] | None:
    if frames is None:
        return None
    expected = "frames must be a str (one frame per character) or a sequence of str"
    if not isinstance(frames, Iterable):
        raise TypeError(f"{expected}; got {type(frames).__name__} {frames!r}.")
    checked = tuple(frames)
    if not checked:
        msg = f"{expected}, and not empty: give at least one frame, or leave frames out."
        raise ValueError(msg)
    for frame in checked:
        if not isinstance(frame, str):
            raise TypeError(f"{expected}; got the frame {frame!r} ({type(frame).__name__}).")
        if not frame:
            msg = (
                f"each frame must show at least one character; got an empty one in "
                f"{checked!r}. Use a space for a frame that shows nothing."
            )
            raise ValueError(msg)
        if not frame.isprintable():
            msg = (
                f"each frame must print on one line, without line breaks, tabs or escape "
                f"codes (the spinner adds the colour); got the frame {frame!r}."
            )
            raise ValueError(msg)
    return checked


def _checked_interval(interval: object) -> float:
    if isinstance(interval, bool) or not isinstance(interval, numbers.Real):
        msg = (
            f"interval must be a real number of seconds, such as 0.1; got "
            f"{type(interval).__name__} {interval!r}."
        )
        raise TypeError(msg)
    # NaN fails the first comparison.
    if not interval <= threading.TIMEOUT_MAX or interval <= 0:
        msg = (
            f"interval must be a number of seconds above 0 and at most "
            f"threading.TIMEOUT_MAX, such as 0.1; got {interval!r}."
        )
        raise ValueError(msg)
    return float(interval)


# -- the stream --------------------------------------------------------------------


def _isatty(stream: _Stream) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # no isatty(), or closed
        return False


def _encoding_of(stream: _Stream) -> str | None:
    """Return the stream's encoding, or None where any str can be written (StringIO)."""
    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str):
        return None
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return None


def _can_encode(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def _fileno(stream: _Stream) -> int | None:
    try:
        fd: int = stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # no file (StringIO), or closed
        return None
    return fd


def _terminal_id(fd: int | None) -> tuple[int, int] | None:
    """Identify the file behind a descriptor, so two streams on one terminal match."""
    if fd is None:
        return None
    try:
        status = os.fstat(fd)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def _columns(fd: int | None) -> int:
    """Return the width of the terminal, read again for each frame (it may be resized)."""
    if fd is not None:
        try:
            columns = os.get_terminal_size(fd).columns
        except OSError:
            columns = 0
        if columns > 0:
            return columns
    # A terminal that reports no size (as a new pty does), or no terminal at
    # all (enabled=True): COLUMNS if set, as for shutil.get_terminal_size()
    # (not imported: it costs more than this whole module).
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    return columns if columns > 0 else 80


def _format_elapsed(seconds: float) -> str:
    if seconds < 59.95:  # what rounds to under a minute
        return f"{seconds:.1f}s"
    minutes, whole = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {whole:02d}s"
