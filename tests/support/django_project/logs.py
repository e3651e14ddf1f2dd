"""Where the test project's log lines go: a list the tests read."""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple


class Line(NamedTuple):
    """One formatted log line, split into the fields of the project's format."""

    request_id: str
    user: str
    logger: str
    message: str


_lines: list[Line] = []
_lock = threading.Lock()


class Lines(logging.Handler):
    """Keep each formatted line (``request_id|user_id|logger|message``) in memory."""

    def emit(self, record: logging.LogRecord) -> None:
        request_id, user, logger, message = self.format(record).split("|", 3)
        with _lock:
            _lines.append(Line(request_id, user, logger, message))


def taken() -> list[Line]:
    """Return the lines logged since the last call, and forget them."""
    with _lock:
        lines = _lines[:]
        _lines.clear()
    return lines
