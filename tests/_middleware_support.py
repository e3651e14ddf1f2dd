"""Shared by the middleware and server tests: log lines with the request they ran in."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from contextual import get_current_user, get_request_id

#: What new_request_id() returns.
FRESH_ID = re.compile(r"[0-9a-f]{32}")
WARNINGS_LOGGER = "contextual.integrations"


@dataclass(frozen=True)
class Line:
    """One log record, and the request ID and user the emitting code saw."""

    logger: str
    level: int
    message: str
    request_id: str | None
    user: Any
    thread: int
    exc_info: Any


class ContextRecorder(logging.Handler):
    """Record every log line with get_request_id() and get_current_user().

    Read in emit(), so in the thread and task that logged: the logging
    filter that will do this for users is written elsewhere, and these tests
    must not depend on it.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[Line] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(
            Line(
                record.name,
                record.levelno,
                record.getMessage(),
                get_request_id(),
                get_current_user(),
                threading.get_ident(),
                record.exc_info,
            )
        )

    def of(self, logger: str, level: int | None = None) -> list[Line]:
        return [
            line
            for line in self.lines
            if line.logger == logger and (level is None or line.level == level)
        ]


@contextmanager
def recording(*names: str) -> Iterator[ContextRecorder]:
    """Attach a ContextRecorder at DEBUG level to the named loggers, for a block."""
    recorder = ContextRecorder()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(recorder)
        logger.setLevel(logging.DEBUG)
    try:
        yield recorder
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(recorder)
            logger.setLevel(level)


def shown_in_log(value: str) -> str:
    """How a refused value must appear in the warning: ascii(), cut at 64 chars."""
    return ascii(value[:64]) + ("..." if len(value) > 64 else "")
