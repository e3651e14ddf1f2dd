"""Carriers of the tests of the carrier seam, and tasks that report what they applied.

A carrier here carries one ContextVar of its own as the text map
``{"x-test-value": value}``. Each is reached by its name through
:func:`named`, which is how it pickles: by reference, so that a worker
process of a pool imports this module and gets the same carrier back.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

from contextual import get_request_id

#: What the carriers of this module carry.
value: contextvars.ContextVar[str | None] = contextvars.ContextVar("tests.carrier", default=None)

FIELD = "x-test-value"

_by_name: dict[str, TestCarrier] = {}
_impostors: dict[str, TestCarrier] = {}


def named(name: str) -> TestCarrier:
    """Return the carrier of this name, made on first use: one object per name and process."""
    carrier = _by_name.get(name)
    if carrier is None:
        carrier = _by_name[name] = TestCarrier(name)
    return carrier


def impostor(name: str) -> TestCarrier:
    """Return a second carrier of this name, which pickles by reference too."""
    carrier = _impostors.get(name)
    if carrier is None:
        carrier = _impostors[name] = TestCarrier(name, impostor=True)
    return carrier


class TestCarrier:
    """Carries :data:`value`; records what it was asked to apply and the order of exits."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, name: str, *, impostor: bool = False) -> None:
        self.name = name
        self._impostor = impostor
        self.fields = (FIELD,)
        #: What capture() returns instead of the ContextVar's text map, when set.
        self.text_map: dict[str, Any] | None = None
        self.events: list[str] = []

    def __repr__(self) -> str:
        return f"<TestCarrier {self.name!r}>"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (impostor if self._impostor else named, (self.name,))

    def capture(self) -> dict[str, str] | None:
        if self.text_map is not None:
            return self.text_map
        current = value.get()
        return None if current is None else {FIELD: current}

    @contextlib.contextmanager
    def applied(self, carried: Mapping[str, str], /) -> Iterator[None]:
        self.events.append(f"enter {self.name}")
        token = value.set(carried.get(FIELD))
        try:
            yield
        finally:
            value.reset(token)
            self.events.append(f"exit {self.name}")


def look() -> dict[str, Any]:
    """What a task sees: the carried value and the request ID."""
    return {"value": value.get(), "request_id": get_request_id()}
