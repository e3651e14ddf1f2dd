"""Spinner: a terminal spinner that stops at once and keeps CI logs clean.

A daemon thread draws the frames while the caller works. Between frames it
waits on a :class:`threading.Event`, not in a sleep, so ``stop()`` wakes it at
once. Every write to a spinner's stream (frames, the final line, lines and log
records printed above it) goes through one lock, so a line never tears and
never interleaves with a frame.
"""

from __future__ import annotations

import atexit
import codecs
import contextvars
import functools
import itertools
import logging
import os
import sys
import threading
import time
import unicodedata
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO, TypeVar

from ._decorate import AsyncToo, decorate

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

# Line breaks, tabs, escapes and the other C0 and C1 controls would move the
# cursor off the spinner's line or throw out its width: they print as spaces.
_CONTROLS: Final = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], " ")


class _Stream(Protocol):
    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class _Discard:
    """Where a spinner writes when ``sys.stderr`` is ``None`` (pythonw, some daemons)."""

    def write(self, text: str, /) -> int:
        return len(text)

    def flush(self) -> None:
        pass


# One lock for every write of every spinner and SpinnerHandler, and for every
# change to which spinners run. Reentrant, so that a stream whose write() logs
# through a SpinnerHandler doesn't deadlock its own thread.
_LOCK = threading.RLock()
# The spinners that run now, for the exit hook and for SpinnerHandler. Weak,
# so that the set never keeps a spinner alive: one that animates is held by
# its thread until it stops, and one that doesn't has no cursor to restore.
_RUNNING: weakref.WeakSet[Spinner] = weakref.WeakSet()


class Spinner(AsyncToo["Spinner"]):
    r"""Show a spinner while a block, a call or a stretch of work runs.

    A context manager (``with``, ``async with``), a decorator for functions
    and coroutine functions, and an object with :meth:`start` and
    :meth:`stop` for manual use. The ``with`` block (or the decorated call)
    ends with :meth:`ok` when it returns and with :meth:`fail` when it
    raises, ``KeyboardInterrupt`` included; the exception propagates.

    What it writes depends on the stream, looked up when the spinner starts:

    - On an interactive terminal (``isatty()``, and ``TERM`` is not
      ``dumb``), a thread redraws one line every ``interval`` seconds: a
      frame and the text, cut to the terminal's width. The cursor is hidden
      while it spins and always shown again: on :meth:`stop`, when the block
      raises, on ``KeyboardInterrupt``, and at interpreter exit for a spinner
      never stopped. Marks are coloured unless ``NO_COLOR`` is set.
    - Anywhere else (a pipe, a file, a CI log): no frames, no ``\r``, no
      escape codes and no thread, just one line with the text when it starts
      and one final line when it ends.

    The final line shows a mark, the text and the time since the start, such
    as ``✔ Loading (2.1s)`` (``OK Loading (2.1s)`` and ``FAIL ...`` where the
    stream's encoding has no ``✔``).

    Print with :meth:`write`, and log through a :class:`SpinnerHandler`,
    while it spins: each line appears above the spinner, whole. (A bare
    ``print()`` to the same terminal would land on the spinner's line.) Run
    one spinner per terminal at a time.

    What code elsewhere sees: the spinner's thread starts from an empty
    :mod:`contextvars` context, so it never sees, nor keeps alive, the
    request context or any other ContextVar of the code that started it. A
    spinner belongs to its process: in a child made by ``fork()``, a spinner
    that ran in the parent is stopped and writes nothing, so the parent's
    spinner goes on undisturbed.

    Starting a running spinner does nothing. Stopping one that is not
    running (never started, or already ended) does nothing, so :meth:`ok` or
    :meth:`fail` inside a ``with`` block decides the final line, and the end
    of the block adds none. A stopped spinner can start again, with a new
    start time. If the stream fails (closed, a broken pipe), the spinner
    stops writing to it instead of raising.

    Args:
        text: What the spinner says, on one line. Change it while it runs
            with the :attr:`text` attribute.
        frames: The animation: a str (each character a frame) or a sequence
            of str. By default braille dots, or ``-\|/`` where the stream's
            encoding can't show those.
        interval: Seconds between frames.
        stream: Where to write: a text stream. ``None`` for ``sys.stderr``,
            looked up at each start (so redirection and pytest's capture
            work); if that is ``None`` too, the spinner writes nothing.
        enabled: ``True`` animates even where the stream is no terminal,
            ``False`` never animates; ``None`` decides by the stream, as
            above.

    Raises:
        TypeError: ``text`` is not a str, a frame is not a str, ``interval``
            is not a number, ``stream`` has no ``write()``, or ``enabled``
            is not a bool or ``None``.
        ValueError: ``frames`` is empty or a frame doesn't print on one
            line, or ``interval`` is not a finite number above 0.

    Example:
        Outside a terminal, as in a CI log, a spinner writes two lines:

        >>> import sys
        >>> from contextual import Spinner
        >>> with Spinner("Loading", stream=sys.stdout):
        ...     pass  # the work
        Loading
        ✔ Loading (...s)

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_animate",
        "_colour",
        "_enabled",
        "_encoding",
        "_event",
        "_fd",
        "_frames",
        "_given_frames",
        "_index",
        "_interval",
        "_lines",
        "_marks",
        "_rendered_for",
        "_started",
        "_stream",
        "_stream_arg",
        "_terminal",
        "_text",
        "_thread",
    )

    def __init__(
        self,
        text: str = "",
        *,
        frames: str | Iterable[str] | None = None,
        interval: float = 0.1,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self._text = _checked_text(text, "text")
        self._given_frames = _checked_frames(frames)
        self._interval = _checked_interval(interval)
        self._stream_arg = _checked_stream(stream)
        self._enabled = _checked_enabled(enabled)
        # What one run uses; set by start().
        self._stream: _Stream = _Discard()
        self._animate = False
        self._colour = False
        self._encoding: str | None = None
        self._fd: int | None = None
        self._terminal: tuple[int, int] | None = None
        self._frames = _FRAMES
        self._marks = _MARKS
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._index = 0
        self._rendered_for: tuple[str, int] | None = None
        self._lines: list[str] = []

    def __repr__(self) -> str:
        return f"<Spinner {self._text!r} {'running' if self.running else 'stopped'}>"

    @property
    def text(self) -> str:
        """What the spinner says. Setting it while it spins redraws it at once.

        Outside a terminal only the start and final lines show the text, so
        a new text shows in the final line.
        """
        return self._text

    @text.setter
    def text(self, text: str) -> None:
        text = _checked_text(text, "text")
        with _LOCK:
            self._text = text
            if self._animate and self in _RUNNING:
                self._draw()

    @property
    def running(self) -> bool:
        """Whether the spinner has started and not yet ended."""
        with _LOCK:
            return self in _RUNNING

    def start(self) -> Self:
        """Start spinning; return the spinner. Does nothing if it runs already.

        Writes the first frame (or, outside a terminal, the start line)
        before it returns.
        """
        with _LOCK:
            if self in _RUNNING:
                return self
            stream = self._stream_arg if self._stream_arg is not None else sys.stderr
            self._stream = stream if stream is not None else _Discard()
            tty = _isatty(self._stream)
            if self._enabled is None:
                self._animate = tty and os.environ.get("TERM") != "dumb"
            else:
                self._animate = self._enabled
            # NO_COLOR counts when set and not empty (https://no-color.org).
            self._colour = self._animate and tty and not os.environ.get("NO_COLOR")
            self._encoding = _encoding_of(self._stream)
            fancy = self._encoding is None or _can_encode(
                "".join((*_FRAMES, *_MARKS)), self._encoding
            )
            self._frames = self._given_frames or (_FRAMES if fancy else _ASCII_FRAMES)
            self._marks = _MARKS if fancy else _ASCII_MARKS
            self._event = event = threading.Event()
            self._started = time.monotonic()
            _register_exit_hook()
            if not self._animate:
                self._thread = None
                _RUNNING.add(self)
                _emit(self._stream, self._printable(self._text) + "\n")
                return self
            self._fd = _fileno(self._stream)
            self._terminal = _terminal_id(self._fd)
            self._index = 0
            self._rendered_for = None
            thread = threading.Thread(
                target=self._spin, args=(event,), name="contextual-spinner", daemon=True
            )
            # Registered before the cursor is hidden: from here on, the exit
            # hook shows it again even if this thread is interrupted.
            _RUNNING.add(self)
            try:
                # Where new threads inherit their starter's context, the
                # spinner would see the caller's request context and keep it
                # alive while it spins. Start it from an empty one everywhere.
                contextvars.Context().run(thread.start)
            except BaseException:  # such as "can't start new thread"
                _RUNNING.discard(self)
                raise
            self._thread = thread
            _emit(self._stream, _HIDE_CURSOR + self._frame_line())
        return self

    def stop(self) -> None:
        """Stop spinning and erase the spinner's line; write no final line.

        Returns once the spinner's thread has ended, at once rather than
        after the current frame's interval. Does nothing if the spinner is
        not running.
        """
        self._end(None, success=None)

    def ok(self, text: str | None = None) -> None:
        """End with a success line: ``✔``, the text and the time taken.

        Does nothing if the spinner is not running.

        Args:
            text: The final line's text; the spinner's :attr:`text` if
                ``None``.
        """
        self._end(text, success=True)

    def fail(self, text: str | None = None) -> None:
        """End with a failure line: ``✖``, the text and the time taken.

        Does nothing if the spinner is not running.

        Args:
            text: The final line's text; the spinner's :attr:`text` if
                ``None``.
        """
        self._end(text, success=False)

    def write(self, line: str) -> None:
        """Print ``line`` and a newline above the spinner, never torn by a frame.

        Safe from any thread. A line that ends with a newline gets no second
        one. When the spinner is not running, this simply writes the line to
        the stream the spinner would use. Errors of the stream propagate, as
        they do from ``print()``.

        Args:
            line: The text to print; it may span several lines.
        """
        line = _checked_text(line, "line")
        if not line.endswith("\n"):
            line += "\n"
        with _LOCK:
            if self in _RUNNING:
                stream = self._stream
            else:
                current = self._stream_arg if self._stream_arg is not None else sys.stderr
                stream = current if current is not None else _Discard()
            _write_above(stream, line)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
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

    def _end(self, text: str | None, *, success: bool | None) -> None:
        if text is not None:
            text = _checked_text(text, "text")
        with _LOCK:
            if self not in _RUNNING:
                return
            self._event.set()
            thread = self._thread
            out = _ERASE_LINE if self._animate else ""
            if success is not None:
                out += self._final_line(success, self._text if text is None else text)
            if self._animate:
                out += _SHOW_CURSOR
            _emit(self._stream, out)
            # Only now: if this thread is interrupted before it got here, the
            # spinner is still registered and the exit hook ends it again.
            _RUNNING.discard(self)
        if thread is not None:
            thread.join()

    def _spin(self, event: threading.Event) -> None:
        interval = self._interval
        while not event.wait(interval):
            with _LOCK:
                # stop() may have ended the spinner while this thread waited
                # for the lock: its line is erased, and must stay so.
                if event.is_set():
                    return
                self._index += 1
                if not self._draw():
                    return

    def _draw(self) -> bool:
        return _emit(self._stream, self._frame_line())

    def _frame_line(self) -> str:
        columns = _columns(self._fd)
        if self._rendered_for != (self._text, columns):
            self._lines = self._render(columns)
            self._rendered_for = (self._text, columns)
        return self._lines[self._index % len(self._lines)]

    def _render(self, columns: int) -> list[str]:
        text = self._printable(self._text)
        lines = []
        for frame in self._frames:
            # One column short of the width: a line that fills the last
            # column makes some terminals wrap, and "\r" then misses it.
            room = columns - 1 - _width(frame) - 1
            shown = _cut(text, room, self._marks[2])
            coloured = f"{_CYAN}{frame}{_RESET}" if self._colour else frame
            body = f"{coloured} {shown}" if shown else coloured
            lines.append(f"\r{body}{_ERASE_TO_END}")
        return lines

    def _final_line(self, success: bool, text: str) -> str:
        mark = self._marks[0] if success else self._marks[1]
        if self._colour:
            mark = f"{_GREEN if success else _RED}{mark}{_RESET}"
        elapsed = _format_elapsed(time.monotonic() - self._started)
        text = self._printable(text)
        return f"{mark} {text} ({elapsed})\n" if text else f"{mark} ({elapsed})\n"

    def _printable(self, text: str) -> str:
        text = text.translate(_CONTROLS)
        encoding = self._encoding
        if encoding is not None and not _can_encode(text, encoding):
            text = text.encode(encoding, "replace").decode(encoding)
        return text

    def _shares_terminal_with(self, stream: _Stream) -> bool:
        return stream is self._stream or (
            self._terminal is not None and self._terminal == _terminal_id(_fileno(stream))
        )


class SpinnerHandler(_StreamHandler):
    """A :class:`logging.StreamHandler` whose records print above a running spinner.

    Use it in place of a ``StreamHandler``: it writes each record the same
    way, and when a :class:`Spinner` spins on the same terminal (the same
    stream, or another stream open on the same terminal device), it erases
    the spinner's line, writes the record whole and draws the spinner again,
    under the lock that all the spinner's writes take. Records logged from
    any thread never tear, nor interleave with a frame. Without a running
    spinner it is a plain ``StreamHandler``.

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


def _write_above(stream: _Stream, text: str) -> None:
    """Write ``text`` to ``stream`` above the spinners that spin on its terminal."""
    with _LOCK:
        below = [s for s in _RUNNING if s._animate and s._shares_terminal_with(stream)]  # noqa: SLF001
        for spinner in below:
            _emit(spinner._stream, _ERASE_LINE)  # noqa: SLF001
        try:
            stream.write(text)
            stream.flush()
        finally:
            for spinner in below:
                spinner._draw()  # noqa: SLF001


def _emit(stream: _Stream, text: str) -> bool:
    """Write and flush a spinner's own output; return False if the stream failed."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # closed, a broken pipe, an unencodable frame
        return False
    return True


@functools.cache
def _register_exit_hook() -> None:
    # One hook for every spinner, registered on the first start.
    atexit.register(_end_all)


def _end_all() -> None:
    """At exit: end every spinner still running, so no terminal keeps a hidden cursor."""
    with _LOCK:
        spinners = list(_RUNNING)
    for spinner in spinners:
        spinner.stop()


def _forget_after_fork() -> None:
    # The child has none of the parent's spinner threads, and the lock may
    # have been held by one of them when the parent forked. The parent's
    # spinners go on in the parent; in the child they have ended.
    global _LOCK  # noqa: PLW0603 (rebinding it in the child is the point)
    _LOCK = threading.RLock()
    _RUNNING.clear()


if sys.platform != "win32":  # pragma: no branch (Windows has no fork)
    os.register_at_fork(after_in_child=_forget_after_fork)


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
    if stream is None or callable(getattr(stream, "write", None)):
        return stream  # type: ignore[return-value]
    msg = (
        f"stream must be a text stream with a write() method, such as sys.stdout or an "
        f"open file, or None for sys.stderr; got {type(stream).__name__} {stream!r}."
    )
    raise TypeError(msg)


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
        if not frame.isprintable():
            msg = (
                f"each frame must print on one line, without line breaks, tabs or escape "
                f"codes (the spinner adds the colour); got the frame {frame!r}."
            )
            raise ValueError(msg)
    return checked


def _checked_interval(interval: object) -> float:
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        msg = (
            f"interval must be a number of seconds, such as 0.1; got "
            f"{type(interval).__name__} {interval!r}."
        )
        raise TypeError(msg)
    # NaN fails the comparison too.
    if not 0 < interval <= threading.TIMEOUT_MAX:
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


# -- text --------------------------------------------------------------------------


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def _width(text: str) -> int:
    """Return how many terminal columns ``text`` takes (wide East Asian characters: 2)."""
    return len(text) if text.isascii() else sum(map(_char_width, text))


def _cut(text: str, room: int, ellipsis: str) -> str:
    """Return ``text`` cut to ``room`` columns, ending with ``ellipsis`` if it was cut."""
    if _width(text) <= room:
        return text
    room -= _width(ellipsis)
    if room < 0:
        return ""
    # The longest start of the text that fits; a combining mark stays with
    # the character before it, since it takes no column.
    used = itertools.accumulate(map(_char_width, text))
    kept = sum(1 for _ in itertools.takewhile(lambda total: total <= room, used))
    return text[:kept] + ellipsis


def _format_elapsed(seconds: float) -> str:
    if seconds < 59.95:  # what rounds to under a minute
        return f"{seconds:.1f}s"
    minutes, whole = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {whole:02d}s"
