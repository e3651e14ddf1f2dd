"""A stream that raises, for the spinner's tests and the child processes they start."""

from __future__ import annotations

import threading
from typing import TextIO


class Failing:
    """Pass writes on to ``stream`` until its ``method`` raises a RuntimeError.

    A capture tool, or a wrapper that colours or translates text, may raise
    anything from ``write()`` or ``flush()``, not only the OSError of a closed
    stream. The first ``after`` calls of ``method`` (``"write"`` or
    ``"flush"``) go through; each later one raises and sets ``failed``. The
    rest (``isatty()``, ``fileno()``, ``encoding``) is the stream's, so that
    over a terminal a spinner animates and shares the terminal's lock.
    """

    def __init__(self, stream: TextIO, *, method: str = "write", after: int = 0) -> None:
        self.stream = stream
        self.method = method
        self.after = after
        self.calls = 0
        self.failed = threading.Event()

    @property
    def encoding(self) -> str:
        return self.stream.encoding

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> int:
        self._count("write")
        return self.stream.write(text)

    def flush(self) -> None:
        self._count("flush")
        self.stream.flush()

    def _count(self, method: str) -> None:
        if method != self.method:
            return
        self.calls += 1
        if self.calls > self.after:
            self.failed.set()
            raise RuntimeError(f"the wrapper refuses {method}() call {self.calls}")
