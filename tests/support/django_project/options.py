"""Functions the tests name in ``settings.CONTEXTUAL`` by their dotted paths."""

from __future__ import annotations

import itertools
from typing import Any

_numbers = itertools.count(1)


def username(user: Any) -> str:
    """GET_USER: log the username rather than the primary key."""
    name: str = user.get_username()
    return name


def failing(user: Any) -> str:
    """GET_USER that raises."""
    msg = f"no name for {user.pk}"
    raise LookupError(msg)


async def awaited(user: Any) -> str:
    """GET_USER that can't be: nothing awaits it."""
    return str(user)


def starts_with_ok(request_id: str) -> bool:
    """VALIDATOR: keep the IDs that start with "ok-"."""
    return request_id.startswith("ok-")


def numbered() -> str:
    """GENERATOR: "gen-1", "gen-2"..."""
    return f"gen-{next(_numbers)}"
