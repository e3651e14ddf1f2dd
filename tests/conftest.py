from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from contextual import ContextStore

_counter = itertools.count()

BACKENDS = ["context", "thread"]

MakeStore = Callable[..., ContextStore]


@pytest.fixture
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """Create stores with names unique to the test, so tests never collide."""
    created: list[ContextStore] = []

    def make(backend: str = "context", **kwargs: Any) -> ContextStore:
        name = kwargs.pop("name", None) or f"test.{request.node.name}.{next(_counter)}"
        store = ContextStore(name, backend=backend, **kwargs)  # type: ignore[arg-type]
        created.append(store)
        return store

    yield make
    created.clear()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def store(make_store: MakeStore, backend: str) -> ContextStore:
    return make_store(backend)
