"""Shared by the middleware and server tests: log lines with the request they ran in."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from contextual import ContextFilter, get_current_user, get_request_id

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
    """Record every log line with the request ID and user that ContextFilter gave it.

    The filter runs in the thread and task that logged, as it does for
    users; its ``"-"`` default is recorded as ``None``, so that a line
    outside any request shows. A record the filter didn't reach, or one
    whose fields disagree with get_request_id() and get_current_user() in
    the emitting code, is recorded in ``disagreements``.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.lines: list[Line] = []
        self.disagreements: list[tuple[object, object, object, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        request_id = record.__dict__.get("request_id")
        user = record.__dict__.get("user_id")
        expected = (get_request_id() or "-", get_current_user() or "-")
        if (request_id, user) != expected:
            self.disagreements.append((request_id, user, *expected))
        self.lines.append(
            Line(
                record.name,
                record.levelno,
                record.getMessage(),
                None if request_id == "-" else request_id,
                None if user == "-" else user,
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
        assert recorder.disagreements == [], recorder.disagreements[:5]
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(recorder)
            logger.setLevel(level)


def shown_in_log(value: str) -> str:
    """How a refused value must appear in the warning: ascii(), cut at 64 chars."""
    return ascii(value[:64]) + ("..." if len(value) > 64 else "")
